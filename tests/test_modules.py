"""Transduction attention, fusion gates, soft aggregation: each checked against its definition."""

import torch

from llb.config import TransductionConfig
from llb.fusion import AdaptiveFusion, SumFusion
from llb.inference.aggregate import soft_aggregate
from llb.transduction import Transduction, instance_norm, to_tokens


def _naive_attention(q, k, v, scale):
    """softmax(scale * cos(q, k)) v, written out."""
    qn = q / q.norm(dim=-1, keepdim=True)
    kn = k / k.norm(dim=-1, keepdim=True)
    return torch.softmax(scale * qn @ kn.transpose(-1, -2), dim=-1) @ v


def _naive_instance_norm(x, eps):
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = x.var(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def test_transduction_matches_a_naive_implementation():
    torch.manual_seed(0)
    n, b, c, d, h, w = 3, 2, 16, 4, 3, 5
    model = Transduction(TransductionConfig(key_dim=8, scale=30.0), c).double()
    mem = torch.randn(n, b, c, h, w, dtype=torch.float64)
    cur = torch.randn(b, c, h, w, dtype=torch.float64)
    e1 = torch.randn(n, b, d, h, w, dtype=torch.float64)
    with torch.no_grad():
        ours = model(cur, model.encode_memory(mem), e1)

        def proj(attn, x):
            return attn.key(x)

        def block(x_frames):  # x_frames (F, B, C, h, w)
            tokens = to_tokens(x_frames)
            att = _naive_attention(proj(model.self_attn, tokens), proj(model.self_attn, tokens), tokens, 30.0)
            y = (tokens + att).reshape(b, x_frames.shape[0], h, w, c).permute(0, 1, 4, 2, 3)
            y = _naive_instance_norm(y, 1e-5)
            return y.permute(0, 1, 3, 4, 2).reshape(b, -1, c)

        m_sa, x_sa = block(mem), block(cur[None])
        values = to_tokens(e1)
        ref = _naive_attention(proj(model.cross_attn, x_sa), proj(model.cross_attn, m_sa), values, 30.0)
        ref = ref.reshape(b, h, w, d).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, ref)


def test_instance_norm_is_per_frame_and_channel():
    x = torch.randn(2, 3 * 10, 4, dtype=torch.float64) * 5 + 3
    y = instance_norm(x, frames=3, eps=0.0).reshape(2, 3, 10, 4)
    torch.testing.assert_close(y.mean(2), torch.zeros(2, 3, 4, dtype=torch.float64))
    torch.testing.assert_close(y.var(2, unbiased=False), torch.ones(2, 3, 4, dtype=torch.float64))


def test_gates_lie_in_zero_one_and_sum_fusion_is_afm_with_unit_gates():
    torch.manual_seed(0)
    afm = AdaptiveFusion(8)
    e1, e2 = torch.randn(2, 8, 4, 5) * 10, torch.randn(2, 8, 4, 5) * 10
    g1, g2 = afm.gates(e1, e2)
    assert ((g1 > 0) & (g1 < 1)).all() and ((g2 > 0) & (g2 < 1)).all()
    torch.testing.assert_close(afm(e1, e2), g1 * e1 + g2 * e2)
    afm.gates = lambda a, b: (torch.ones_like(a), torch.ones_like(b))
    torch.testing.assert_close(AdaptiveFusion.forward(afm, e1, e2), SumFusion()(e1, e2))
    s1, s2 = SumFusion().gates(e1, e2)
    assert (s1 == 1).all() and (s2 == 1).all()


def test_afm_gates_each_branch_with_its_own_gate():
    afm = AdaptiveFusion(4)
    with torch.no_grad():
        for gate, value in ((afm.gate_transduction, 40.0), (afm.gate_induction, -40.0)):
            gate.fc1.weight.copy_(torch.eye(4)[:, :, None, None])
            gate.fc2.weight.copy_(value * torch.eye(4)[:, :, None, None])
    e1, e2 = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 5.0)
    torch.testing.assert_close(afm(e1, e2), e1, atol=1e-4, rtol=0)  # E2*'s gate closed, E1*'s open


def test_soft_aggregation_gives_a_distribution():
    torch.manual_seed(0)
    probs = torch.rand(3, 6, 7)
    merged = soft_aggregate(probs)
    assert merged.shape == (4, 6, 7)
    assert (merged >= 0).all()
    torch.testing.assert_close(merged.sum(0), torch.ones(6, 7))
    # the object with the highest probability keeps the pixel; background wins where all are low
    strong = torch.tensor([0.9, 0.2, 0.1])[:, None, None].expand(3, 1, 1)
    assert soft_aggregate(strong).argmax(0).item() == 1
    weak = torch.full((3, 1, 1), 0.05)
    assert soft_aggregate(weak).argmax(0).item() == 0


def test_soft_aggregation_of_one_object_keeps_the_decision():
    p = torch.linspace(0.01, 0.99, 50)[None, None]
    merged = soft_aggregate(p)
    assert torch.equal(merged.argmax(0)[0] == 1, p[0, 0] > 0.5)
