"""Parity with the official LLB and JOINT networks, stage by stage, and the official-checkpoint importer.

The fixture (../shared/official, README.md there) holds the official networks' intermediate tensors on 1 train
+ N test DAVIS frames, computed with rule-built weights. Those weights go through our importer, load strictly
into LLBNet, and every stored array is compared in data-flow order with the README's rule
max|ours - ref| <= 1e-4 max|ref|.
"""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from llb.checkpoint import load_model, read_checkpoint
from llb.config import paper_config
from llb.decoder import LEVELS
from llb.induction import LearnerMemory
from llb.network import FrameFeatures, LLBNet, SequenceOutput
from llb.official import (
    ImportReport,
    OfficialImportError,
    convert_state_dict,
    import_official,
    read_official_checkpoint,
)

TOL = 1e-4  # README "Using it from a re-implementation", step 4
N_TRAIN = 1  # README "Data flow": one train frame, then the N test frames
MEAN_BGR = np.array((102.9801, 115.9465, 122.7717), np.float32)
SETTINGS = ("frames_rgb", "masks", "meta_json", "lam_value")  # fixture entries that are inputs, not outputs
STATS = {
    "__chabs": lambda x: np.abs(x).mean(axis=(2, 3)),  # per frame and channel
    "__pixrms": lambda x: np.sqrt((x**2).mean(axis=1)),  # per frame and position
    "__norm": lambda x: np.sqrt((x**2).sum(axis=(2, 3))),  # per filter row and input channel, over K x K
}


@dataclass
class Official:
    """One fixture: its arrays, meta, TSV rows and the rule-built official state dict."""

    variant: str
    fx: dict[str, np.ndarray]
    meta: dict
    tsv_keys: list[str]
    state: dict[str, Tensor]


@dataclass
class Run:
    """Our network on the fixture: inputs, per-frame features and every tensor named like the fixture's."""

    model: LLBNet
    report: ImportReport
    images: Tensor  # (F, 1, 3, H, W) preprocessed, train frame first
    masks: Tensor  # (F, 1, 1, H, W)
    layers: dict[str, Tensor]  # layer1..4, (F, C, h, w)
    learner: Tensor  # (F, 1, C, h, w)
    transduction: Tensor  # (F, 1, C, h, w)
    ours: dict[str, np.ndarray]  # full float64 tensors


@pytest.fixture(scope="module", params=["llb", "joint"])
def official(request: pytest.FixtureRequest, official_dir: Path) -> Official:
    import make_weights

    variant = request.param
    with np.load(official_dir / f"fixture_{variant}.npz") as z:
        fx = {key: z[key] for key in z.files}
    meta = json.loads(str(fx["meta_json"]))
    assert meta["which"] == variant
    tsv = str(official_dir / f"{variant}_state_dict.tsv")
    state = make_weights.build_state_dict(tsv, meta.get("seed_base", make_weights.SEED_BASE))
    assert make_weights.digest(state) == meta["weights_sha256"]
    return Official(variant, fx, meta, [row[0] for row in make_weights.read_tsv(tsv)], state)


@pytest.fixture(scope="module")
def run(official: Official) -> Run:
    cfg, state, report = convert_state_dict(official.state)
    model = LLBNet(cfg)
    model.load_state_dict(state, strict=True)
    return drive(model.eval(), report, official.fx)


def preprocess(fx: dict[str, np.ndarray]) -> tuple[Tensor, Tensor]:
    """README "Inputs": BGR float32 minus the Caffe mean; frames first, one sequence. -> images, masks."""
    bgr = fx["frames_rgb"][..., ::-1].astype(np.float32) - MEAN_BGR
    images = torch.from_numpy(np.ascontiguousarray(bgr)).permute(0, 3, 1, 2)[:, None]
    masks = torch.from_numpy(fx["masks"].astype(np.float32))[:, None, None]
    return images, masks


@contextmanager
def capture(modules: Mapping[str, nn.Module]) -> Iterator[dict[str, list[Tensor]]]:
    """Collect the output of every call of each module."""
    outputs: dict[str, list[Tensor]] = {name: [] for name in modules}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: outputs[name].append(out.clone()))
        for name, module in modules.items()
    ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def filter_reg(model: LLBNet, value: float) -> Iterator[None]:
    """Run the learner with lambda = `value` (the fixture's extra `lam_*` run)."""
    saved = model.learner.filter_reg.detach().clone()
    with torch.no_grad():
        model.learner.filter_reg.fill_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            model.learner.filter_reg.copy_(saved)


def token_frames(tokens: Tensor, frames: int, h: int, w: int) -> Tensor:
    """Tokens of one sequence (1, frames*h*w, C) -> (frames, C, h, w)."""
    return tokens[0].reshape(frames, h, w, -1).permute(0, 3, 1, 2)


def learner_iters(fx: dict[str, np.ndarray]) -> tuple[int, int]:
    """Steps of the initial fit and of each refinement: one fewer than the losses stored for them."""
    return len(fx["loss_init"]) - 1, len(fx["loss_refine"]) - 1


def cat(tensors: list[Tensor]) -> np.ndarray:
    return torch.cat(tensors).double().numpy()


def drive(model: LLBNet, report: ImportReport, fx: dict[str, np.ndarray]) -> Run:
    """README "Data flow" with our pieces: 1 train + N test frames, collecting every fixture tensor."""
    images, masks = preprocess(fx)
    n_frames = images.shape[0]
    size = (images.shape[-2], images.shape[-1])
    init_iters, update_iters = learner_iters(fx)
    ours: dict[str, np.ndarray] = {}
    hooked = {**model.decoder.levels, "encoder": model.label_generator.encoder}  # encoder: `dlgm_feat` (LLB)
    with capture(hooked) as seen, torch.no_grad():
        parts = [model.extract(images[:N_TRAIN, 0]), model.extract(images[N_TRAIN:, 0])]  # as the official did
        layers = {name: torch.cat([p.layers[name] for p in parts]) for name in LEVELS}
        learner = torch.cat([p.learner for p in parts])[:, None]
        trans = torch.cat([p.transduction for p in parts])[:, None]
        h, w = learner.shape[-2:]
        enc = model.encode_label(images[:N_TRAIN, 0], masks[:N_TRAIN, 0])
        e1, e2, weights = [enc.e1], [enc.e2], [enc.weight]
        memory = LearnerMemory(learner[:N_TRAIN], enc.e2[:, None], enc.weight[:, None])
        tau, losses = model.learner(memory, init_iters, track_loss=True)
        ours["tau0"], ours["loss_init"] = tau[0].double().numpy(), torch.stack(losses).double().numpy()
        with filter_reg(model, float(fx["lam_value"][0])):
            lam_tau, lam_losses = model.learner(memory, init_iters, track_loss=True)
        ours["lam_tau0"], ours["lam_loss_init"] = lam_tau[0].double().numpy(), torch.stack(lam_losses).double().numpy()
        outs, query_sa = [], []
        for i in range(n_frames - N_TRAIN):
            t = N_TRAIN + i
            ours[f"tr_mem_sa_{i}"] = cat([token_frames(model.transduction.self_attention_block(trans[:t]), t, h, w)])
            query_sa.append(token_frames(model.transduction.self_attention_block(trans[t][None]), 1, h, w))
            frame = FrameFeatures({name: x[t : t + 1] for name, x in layers.items()}, learner[t], trans[t])
            keys = model.transduction.encode_memory(trans[:t])
            out = model.segment(frame, tau, keys, torch.cat(e1)[:, None], size)
            outs.append(out)
            enc = model.encode_label(images[t], torch.sigmoid(out.logits))
            e1.append(enc.e1)
            e2.append(enc.e2)
            weights.append(enc.weight)
            if t < n_frames - 1:
                memory = LearnerMemory(learner[: t + 1], torch.cat(e2)[:, None], torch.cat(weights)[:, None])
                tau, losses = model.learner(memory, update_iters, tau, track_loss=True)
                ours[f"tau{i + 1}"] = tau[0].double().numpy()
                if i == 0:
                    ours["loss_refine"] = torch.stack(losses).double().numpy()
    ours |= {f"bb_{name}": x[N_TRAIN:].double().numpy() for name, x in layers.items()}
    ours |= {f"dec_{name}": cat(seen[name]) for name in LEVELS}
    ours |= {
        "tm_feat": learner[:, 0].double().numpy(),
        "tr_feat": trans[:, 0].double().numpy(),
        "dlgm_feat": cat(seen["encoder"]),
        "enc_tm": cat(e2),
        "enc_tr": cat(e1),
        "sample_weight": cat(weights),
        "tr_query_sa": cat(query_sa),
        "E2_star": cat([o.e2_star for o in outs]),
        "E1_star": cat([o.e1_star for o in outs]),
        "E_tar": cat([o.e_tar for o in outs]),
        "segm_pred": cat([o.logits[:, 0] for o in outs]),
    }
    return Run(model, report, images, masks, layers, learner, trans, ours)


def flow_order(names: set[str]) -> list[str]:
    """The fixture's output arrays in README data-flow order (stage 4 of "Using it")."""

    def numbered(prefix: str) -> list[str]:
        found = [n for n in names if re.fullmatch(rf"{prefix}\d+", n)]
        return sorted(found, key=lambda n: int(n[len(prefix) :]))

    mem, taus = numbered("tr_mem_sa_"), numbered("tau")
    order = [f"bb_{name}" for name in reversed(LEVELS)]
    order += ["tm_feat", "tr_feat", "dlgm_feat", "enc_tm", "enc_tr", "sample_weight", *taus[:1], "loss_init"]
    order += ["lam_tau0", "lam_loss_init", "E2_star", *mem[:1], "tr_query_sa", "E1_star", "E_tar"]
    order += [f"dec_{name}" for name in LEVELS] + ["segm_pred", *taus[1:2], "loss_refine", *mem[1:], *taus[2:]]
    return [n for n in order if n in names]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """The fixture's metric: max|ours - ref| / max|ref|."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def sliced(full: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Our full array cut like a stored one: its first rows and every k-th channel, k = full / stored channels."""
    out = full[: shape[0]]
    if out.ndim > 1 and out.shape[1] != shape[1]:
        out = out[:, :: out.shape[1] // shape[1]]
    return out


def errors(fx: dict[str, np.ndarray], ours: Mapping[str, np.ndarray], names: list[str]) -> dict[str, float]:
    """Relative error of each array and of its stored statistics, in the order given."""
    result = {}
    for name in names:
        ref = fx[name].astype(np.float64)
        result[name] = rel_err(sliced(ours[name], ref.shape), ref)
        for suffix, stat in STATS.items():
            if name + suffix in fx:
                ref_stat = fx[name + suffix].astype(np.float64)
                result[name + suffix] = rel_err(stat(ours[name][: ref_stat.shape[0]]), ref_stat)
    return result


def assert_within(errs: dict[str, float]) -> None:
    """Pass when all are within TOL; otherwise name the first failure in data-flow order."""
    print("\n" + "\n".join(f"{name:24s} {err:.2e}" for name, err in errs.items()))
    failed = [name for name, err in errs.items() if not err <= TOL]
    assert not failed, f"first failure {failed[0]}: {errs[failed[0]]:.3g} > {TOL} (all failures: {failed})"


def stored(fx: dict[str, np.ndarray], name: str, rows: slice) -> Tensor:
    """Stored rows of a full (unsliced) array as a float32 tensor with the sequence axis: (n, 1, ...)."""
    return torch.from_numpy(np.ascontiguousarray(fx[name][rows]))[:, None]


# --- the whole chain ---------------------------------------------------------------------------------------


def test_every_array_in_data_flow_order(official: Official, run: Run) -> None:
    fx = official.fx
    outputs = {n for n in fx if n not in SETTINGS and not any(n.endswith(s) for s in STATS)}
    order = flow_order(outputs)
    assert set(order) == outputs, f"fixture arrays without a place in the data flow: {outputs - set(order)}"
    assert_within(errors(fx, run.ours, order))


@pytest.fixture(scope="module")
def forward_out(official: Official, run: Run) -> SequenceOutput:
    """LLBNet.forward on the fixture's inputs, with the fixture's numbers of learner steps."""
    with torch.no_grad():
        return run.model(run.images[:N_TRAIN], run.masks[:N_TRAIN], run.images[N_TRAIN:], *learner_iters(official.fx))


def test_forward_mirrors_the_official_call(official: Official, run: Run, forward_out: SequenceOutput) -> None:
    """LLBNet.forward is the official training call: (segm_pred, enc_tm, enc_tr) from the same inputs."""
    fx = official.fx
    rgb = torch.from_numpy(fx["frames_rgb"]).permute(0, 3, 1, 2).float()
    assert torch.equal(run.model.normalize(rgb), run.images[:, 0])
    ours = {
        "segm_pred": forward_out.logits[:, 0, 0].double().numpy(),
        "enc_tm": forward_out.e2[:, 0].double().numpy(),
        "enc_tr": forward_out.e1[:, 0].double().numpy(),
    }
    assert_within(errors(fx, ours, list(ours)))


# --- stages fed with stored upstream tensors (README "Using it", step 5) --------------------------------------


def test_fusion_alone(official: Official, run: Run) -> None:
    fx = official.fx
    with torch.no_grad():
        e_tar = run.model.fusion(torch.from_numpy(fx["E1_star"]), torch.from_numpy(fx["E2_star"]))
    assert_within(errors(fx, {"E_tar": e_tar.double().numpy()}, ["E_tar"]))


def test_learner_alone(official: Official, run: Run) -> None:
    fx = official.fx
    memory = LearnerMemory(
        run.learner[:N_TRAIN], stored(fx, "enc_tm", slice(N_TRAIN)), stored(fx, "sample_weight", slice(N_TRAIN))
    )
    iters = learner_iters(fx)[0]
    with torch.no_grad():
        tau, losses = run.model.learner(memory, iters, track_loss=True)
        with filter_reg(run.model, float(fx["lam_value"][0])):
            lam_tau, lam_losses = run.model.learner(memory, iters, track_loss=True)
    ours = {
        "tau0": tau[0].double().numpy(),
        "loss_init": torch.stack(losses).double().numpy(),
        "lam_tau0": lam_tau[0].double().numpy(),
        "lam_loss_init": torch.stack(lam_losses).double().numpy(),
    }
    assert_within(errors(fx, ours, list(ours)))


def test_transduction_alone(official: Official, run: Run) -> None:
    fx = official.fx
    trans, e1_star = run.model.transduction, []
    with torch.no_grad():
        for t in range(N_TRAIN, run.images.shape[0]):
            keys = trans.encode_memory(run.transduction[:t])
            e1_star.append(trans(run.transduction[t], keys, stored(fx, "enc_tr", slice(t))))
    assert_within(errors(fx, {"E1_star": cat(e1_star)}, ["E1_star"]))


def test_decoder_alone(official: Official, run: Run) -> None:
    fx = official.fx
    size = (run.images.shape[-2], run.images.shape[-1])
    with capture(run.model.decoder.levels) as seen, torch.no_grad():
        logits = [
            run.model.decoder(
                stored(fx, "E_tar", slice(i, i + 1))[0], {n: x[N_TRAIN + i][None] for n, x in run.layers.items()}, size
            )
            for i in range(run.images.shape[0] - N_TRAIN)
        ]
    ours = {f"dec_{name}": cat(seen[name]) for name in LEVELS} | {"segm_pred": cat([x[:, 0] for x in logits])}
    assert_within(errors(fx, ours, list(ours)))


def test_label_encoder_on_the_stored_predictions(official: Official, run: Run) -> None:
    fx = official.fx
    probs = torch.sigmoid(torch.from_numpy(fx["segm_pred"]))[:, None, None]  # (N, 1, 1, H, W)
    with torch.no_grad():
        encs = [run.model.encode_label(run.images[N_TRAIN + i], p) for i, p in enumerate(probs)]
    ours = {
        "enc_tm": cat([e.e2 for e in encs]),
        "enc_tr": cat([e.e1 for e in encs]),
        "sample_weight": cat([e.weight for e in encs]),
    }
    rows = {name: fx[name][N_TRAIN:] for name in ours}
    assert_within(errors(rows, ours, list(ours)))


# --- the importer --------------------------------------------------------------------------------------------


def test_importer_accounts_for_every_tsv_row(official: Official, run: Run) -> None:
    report = run.report
    assert set(report.loaded).isdisjoint(report.dropped)
    assert set(report.loaded) | set(report.dropped) == set(official.tsv_keys)
    assert all(report.dropped.values())
    assert all(not re.search(r"\.WV\.|\.head\.|^transformer\.decoder\.self_attn\.", k) for k in report.loaded)
    assert sorted(report.loaded.values()) == sorted(run.model.state_dict())
    assert report.facts["D"] == official.meta["D"] and report.config.variant == official.variant
    expected = paper_config(official.variant)
    expected.backbone.pretrained = expected.label.pretrained = False
    assert report.config == expected
    assert f"loaded {len(report.loaded)} tensors, dropped {len(report.dropped)}" in report.summary()


def test_tampered_shared_self_attention_raises(official: Official) -> None:
    key = "transformer.decoder.self_attn.WK.weight"
    state = dict(official.state) | {key: official.state[key] + 1e-3}
    with pytest.raises(OfficialImportError, match=re.escape(key)):
        convert_state_dict(state)


def test_wrong_shape_names_key_and_both_shapes(official: Official) -> None:
    key = "decoder.project.conv1.weight"
    state = dict(official.state) | {key: torch.zeros(32, 64, 1, 1)}
    with pytest.raises(OfficialImportError) as err:
        convert_state_dict(state)
    for part in (key, "decoder.project_conv1.weight", "(32, 64, 1, 1)", "(32, 64, 3, 3)"):
        assert part in str(err.value)


def test_unknown_key_raises(official: Official) -> None:
    state = dict(official.state) | {"decoder.extra.weight": torch.zeros(1)}
    with pytest.raises(OfficialImportError, match=re.escape("decoder.extra.weight")):
        convert_state_dict(state)


EXECUTED: list[str] = []  # what unpickling the objects below would run


def _record(tag: str) -> str:
    EXECUTED.append(tag)
    return tag


class NetConstructor:
    """Stands in for ltr.admin.model_constructor.NetConstructor; unpickling it with plain pickle runs code."""

    __module__ = "ltr.admin.model_constructor"

    def __init__(self) -> None:
        self.fun_name = "steepest_descent_resnet50"
        self.kwds = {"num_filters": 32}

    def __setstate__(self, state: dict) -> None:
        _record("setstate")
        self.__dict__.update(state)


class Payload:
    """An object whose unpickling calls a function."""

    def __reduce__(self) -> tuple:
        return _record, ("reduce",)


@pytest.fixture
def ltr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make NetConstructor importable under its official module path, as when pytracking is installed."""
    for name in ("ltr", "ltr.admin", "ltr.admin.model_constructor"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["ltr.admin.model_constructor"].NetConstructor = NetConstructor  # type: ignore[attr-defined]
    EXECUTED.clear()


def save_official(state: dict[str, Tensor], path: Path, zip_format: bool = True) -> None:
    """A checkpoint laid out like pytracking's `save_checkpoint`."""
    checkpoint = {
        "epoch": 90,
        "actor_type": "SegActor",
        "net_type": "JOINTNet",
        "net": state,
        "net_info": None,
        "constructor": NetConstructor(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": {0, 1}}]},
        "stats": {"train": Payload()},
        "settings": None,
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_restricted_unpickler_runs_no_pickled_code(ltr: None, tmp_path: Path, zip_format: bool) -> None:
    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "a.num_batches_tracked": torch.tensor(3)}
    path = tmp_path / "JOINTNet_ep0090.pth.tar"
    save_official(state, path, zip_format)
    torch.load(path, weights_only=False)  # the control: plain unpickling runs both
    assert sorted(EXECUTED) == ["reduce", "setstate"]
    EXECUTED.clear()
    loaded = read_official_checkpoint(path)
    assert EXECUTED == []
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize("wrap", ["state_dict", "model", None])
def test_state_dict_location_and_module_prefix(tmp_path: Path, wrap: str | None) -> None:
    state = {"module.a.weight": torch.ones(2)}
    torch.save({wrap: state, "epoch": 1} if wrap else state, tmp_path / "x.pth")
    assert list(read_official_checkpoint(tmp_path / "x.pth")) == ["a.weight"]


def test_checkpoint_without_state_dict_raises(tmp_path: Path) -> None:
    torch.save({"epoch": 1}, tmp_path / "x.pth")
    with pytest.raises(OfficialImportError, match="no state dict"):
        read_official_checkpoint(tmp_path / "x.pth")


def test_import_official_round_trip(
    ltr: None, official: Official, run: Run, forward_out: SequenceOutput, tmp_path: Path
) -> None:
    """Official-format file -> import_official -> load_model gives the same network and logits."""
    save_official(official.state, tmp_path / "official.pth.tar")
    out = tmp_path / f"paper-{official.variant}.safetensors"
    report = import_official(tmp_path / "official.pth.tar", out)
    assert EXECUTED == [] and report.loaded == run.report.loaded
    _, _, meta = read_checkpoint(out)
    assert json.loads(meta["info"])["source"] == "official"
    model = load_model(out, config="paper", variant=official.variant)
    assert model.trained
    reference = run.model.state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in model.state_dict().items())
    with torch.no_grad():
        out = model(run.images[:N_TRAIN], run.masks[:N_TRAIN], run.images[N_TRAIN:], *learner_iters(official.fx))
    assert torch.equal(out.logits, forward_out.logits)
