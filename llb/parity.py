"""Parity with the official LLB and JOINT networks on a fixture of their intermediate tensors.

A fixture (shared/official/README.md) is an `.npz` of inputs (1 train + N test frames, the train mask) and the
tensors the official network computed from them with rule-built weights (`make_weights.py` beside it). The check
builds those weights, writes them as an official checkpoint, imports that file with `import_official` and loads
the result like any checkpoint, runs the fixture's frames through our network step by step ("Data flow" in the
README), and compares every stored array in data-flow order: a stage passes when
max|ours - ref| <= 1e-4 max|ref|. `llb check-official` (llb/commands/check_official.py) prints the table.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import load_model
from .decoder import LEVELS
from .induction import LearnerMemory
from .network import FrameFeatures, LLBNet, SegmentOutput
from .official import ImportReport, import_official

TOL = 1e-4  # README "Using it from a re-implementation", step 4
N_TRAIN = 1  # README "Data flow": one train frame, then the N test frames
STRIDE = 16  # learner and transformer features: H/16 x W/16
MEAN_BGR = np.array((102.9801, 115.9465, 122.7717), np.float32)
INPUTS = ("frames_rgb", "masks", "meta_json", "lam_value")  # fixture entries that are inputs, not outputs
STATS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "__chabs": lambda x: np.abs(x).mean(axis=(2, 3)),  # per frame and channel
    "__pixrms": lambda x: np.sqrt((x**2).mean(axis=1)),  # per frame and position
    "__norm": lambda x: np.sqrt((x**2).sum(axis=(2, 3))),  # per filter row and input channel, over K x K
}


# --- the fixture -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameLayout:
    """Frames of a fixture: `n_train` train frames (the first), then `n_test` test frames, each height x width."""

    n_train: int
    n_test: int
    height: int
    width: int


def frame_layout(arrays: Mapping[str, np.ndarray]) -> FrameLayout:
    """The frame count and size, read from `frames_rgb` (F, H, W, 3) and `masks` (F, H, W)."""
    frames, masks = arrays["frames_rgb"], arrays["masks"]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames_rgb has shape {frames.shape}: expected (frames, H, W, 3)")
    if masks.shape != frames.shape[:3]:
        raise ValueError(f"masks {masks.shape} do not match frames_rgb {frames.shape}: expected (frames, H, W)")
    count, height, width = masks.shape
    if count <= N_TRAIN:
        raise ValueError(f"the fixture has {count} frame(s): expected {N_TRAIN} train frame and at least 1 test frame")
    if height % STRIDE or width % STRIDE:
        raise ValueError(f"frames of {width}x{height}: width and height must be multiples of {STRIDE}")
    return FrameLayout(N_TRAIN, count - N_TRAIN, height, width)


def fixture_variant(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> str:
    """`llb` or `joint`: meta_json's `which`, else LLB when the DLGM output `dlgm_feat` is stored."""
    which = meta.get("which")
    if which is not None:
        if which not in ("llb", "joint"):
            raise ValueError(f"meta_json names the network '{which}': expected 'llb' or 'joint'")
        return which
    return "llb" if "dlgm_feat" in arrays else "joint"


@dataclass
class Fixture:
    """One fixture file: its arrays, meta_json (parsed), variant and frame layout."""

    path: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    variant: str
    layout: FrameLayout

    @property
    def seed_base(self) -> int:
        """The weight rule's seed base: meta_json's `seed_base`, 1000 where it is absent."""
        return int(self.meta.get("seed_base", 1000))


def load_fixture(path: str | Path) -> Fixture:
    """Read a fixture `.npz` (no pickle)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {key: z[key] for key in z.files}
    meta = json.loads(str(arrays["meta_json"])) if "meta_json" in arrays else {}
    return Fixture(path, arrays, meta, fixture_variant(arrays, meta), frame_layout(arrays))


def learner_iters(arrays: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """Steps of the initial fit and of each refinement: one fewer than the losses stored for them."""
    refine = len(arrays["loss_refine"]) - 1 if "loss_refine" in arrays else 0
    return len(arrays["loss_init"]) - 1, refine


def preprocess(arrays: Mapping[str, np.ndarray]) -> tuple[Tensor, Tensor]:
    """README "Inputs": BGR float32 minus the Caffe mean; frames first, one sequence.
    -> images (F, 1, 3, H, W), masks (F, 1, 1, H, W)."""
    bgr = arrays["frames_rgb"][..., ::-1].astype(np.float32) - MEAN_BGR
    images = torch.from_numpy(np.ascontiguousarray(bgr)).permute(0, 3, 1, 2)[:, None]
    masks = torch.from_numpy(arrays["masks"].astype(np.float32))[:, None, None]
    return images, masks


# --- our network through the official data flow ------------------------------------------------------------


@dataclass
class Trace:
    """Our network on a fixture: inputs, per-frame features and every tensor named like the fixture's."""

    images: Tensor  # (F, 1, 3, H, W) preprocessed, train frame first
    masks: Tensor  # (F, 1, 1, H, W)
    layers: dict[str, Tensor]  # layer1..4, (F, C, h, w)
    learner: Tensor  # (F, 1, C, h, w)
    transduction: Tensor  # (F, 1, C, h, w)
    arrays: dict[str, np.ndarray]  # full (unsliced) float64 tensors


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


def cat(tensors: list[Tensor]) -> np.ndarray:
    """Concatenate along the first axis, as float64 numpy."""
    return torch.cat(tensors).double().numpy()


def run_data_flow(model: LLBNet, arrays: Mapping[str, np.ndarray]) -> Trace:
    """README "Data flow" with our pieces, on the fixture's 1 train + N test frames (eval, float32, CPU)."""
    layout = frame_layout(arrays)
    images, masks = preprocess(arrays)
    size = (layout.height, layout.width)
    init_iters, update_iters = learner_iters(arrays)
    ours: dict[str, np.ndarray] = {}
    hooked = {**model.decoder.levels, "encoder": model.label_generator.encoder}  # encoder: `dlgm_feat` (LLB)
    with capture(hooked) as seen, torch.no_grad():
        # 1-2. Backbone and adapters: the train frame, then the test frames as one batch (as the official did).
        parts = [model.extract(images[:N_TRAIN, 0]), model.extract(images[N_TRAIN:, 0])]
        layers = {name: torch.cat([p.layers[name] for p in parts]) for name in LEVELS}
        learner = torch.cat([p.learner for p in parts])[:, None]
        trans = torch.cat([p.transduction for p in parts])[:, None]
        h, w = learner.shape[-2:]
        # 3. Label encoder on the train frame.
        enc = model.encode_label(images[:N_TRAIN, 0], masks[:N_TRAIN, 0])
        e1, e2, weights = [enc.e1], [enc.e2], [enc.weight]
        # 4. tau0: steepest descent from zero on the memory {train frame}; also with lambda = lam_value.
        memory = LearnerMemory(learner[:N_TRAIN], enc.e2[:, None], enc.weight[:, None])
        tau, losses = model.learner(memory, init_iters, track_loss=True)
        ours["tau0"], ours["loss_init"] = tau[0].double().numpy(), torch.stack(losses).double().numpy()
        if "lam_value" in arrays:
            with filter_reg(model, float(arrays["lam_value"][0])):
                lam_tau, lam_losses = model.learner(memory, init_iters, track_loss=True)
            ours["lam_tau0"] = lam_tau[0].double().numpy()
            ours["lam_loss_init"] = torch.stack(lam_losses).double().numpy()
        outs: list[SegmentOutput] = []
        query_sa = []
        for i in range(layout.n_test):
            t = N_TRAIN + i  # 5. the memory holds frames 0 .. t-1
            # 6-9. E2*, transformer (memory M, query X_sa, E1*), fusion and decoder on test frame i.
            ours[f"tr_mem_sa_{i}"] = cat([token_frames(model.transduction.self_attention_block(trans[:t]), t, h, w)])
            query_sa.append(token_frames(model.transduction.self_attention_block(trans[t][None]), 1, h, w))
            frame = FrameFeatures({name: x[t : t + 1] for name, x in layers.items()}, learner[t], trans[t])
            keys = model.transduction.encode_memory(trans[:t])
            out = model.segment(frame, tau, keys, torch.cat(e1)[:, None], size)
            outs.append(out)
            # 10. Label encoder on the prediction; frame i joins the memory.
            enc = model.encode_label(images[t], torch.sigmoid(out.logits))
            e1.append(enc.e1)
            e2.append(enc.e2)
            weights.append(enc.weight)
            # 11. Refine tau on the grown memory before the next test frame.
            if i < layout.n_test - 1:
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
    return Trace(images, masks, layers, learner, trans, ours)


# --- comparison ------------------------------------------------------------------------------------------------


def output_names(arrays: Mapping[str, np.ndarray]) -> set[str]:
    """The fixture's compared arrays: everything but the inputs and the statistics of sliced arrays."""
    return {n for n in arrays if n not in INPUTS and not any(n.endswith(s) for s in STATS)}


def flow_order(names: set[str]) -> list[str]:
    """Output arrays in README data-flow order (step 4 of "Using it"); an unknown name raises ValueError."""

    def numbered(prefix: str) -> list[str]:
        found = [n for n in names if re.fullmatch(rf"{prefix}\d+", n)]
        return sorted(found, key=lambda n: int(n[len(prefix) :]))

    mem, taus = numbered("tr_mem_sa_"), numbered("tau")
    order = [f"bb_{name}" for name in reversed(LEVELS)]
    order += ["tm_feat", "tr_feat", "dlgm_feat", "enc_tm", "enc_tr", "sample_weight", *taus[:1], "loss_init"]
    order += ["lam_tau0", "lam_loss_init", "E2_star", *mem[:1], "tr_query_sa", "E1_star", "E_tar"]
    order += [f"dec_{name}" for name in LEVELS] + ["segm_pred", *taus[1:2], "loss_refine", *mem[1:], *taus[2:]]
    unknown = names - set(order)
    if unknown:
        raise ValueError(f"fixture arrays without a place in the data flow: {sorted(unknown)}")
    return [n for n in order if n in names]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """The fixture's metric: max|ours - ref| / max|ref|."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def sliced(full: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Our full array cut like a stored one: its first rows and, for a 4-D array, every k-th channel,
    k = full / stored channels."""
    out = full[: shape[0]]
    if out.ndim == len(shape) == 4 and out.shape[1] != shape[1] and out.shape[1] % shape[1] == 0:
        out = out[:, :: out.shape[1] // shape[1]]
    return out


@dataclass(frozen=True)
class Row:
    """One compared array: max|ours - ref| / max|ref|, whether it is within TOL, and why not where no number."""

    name: str
    error: float
    passed: bool
    note: str = ""


def _row(name: str, ours: np.ndarray | None, ref: np.ndarray) -> Row:
    if ours is None:
        return Row(name, float("inf"), False, "not computed by our run")
    if ours.shape != ref.shape:
        return Row(name, float("inf"), False, f"shape: ours {ours.shape}, fixture {ref.shape}")
    err = rel_err(ours, ref)
    return Row(name, err, err <= TOL)


def compare(ref: Mapping[str, np.ndarray], ours: Mapping[str, np.ndarray], names: list[str] | None = None) -> list[Row]:
    """One row per array in `names` (default: every output of `ref`, in data-flow order), each followed by the
    rows of its stored statistics; our full arrays are sliced like the stored ones."""
    rows = []
    for name in flow_order(output_names(ref)) if names is None else names:
        full = ours.get(name)
        ref_full = ref[name].astype(np.float64)
        rows.append(_row(name, None if full is None else sliced(full, ref_full.shape), ref_full))
        for suffix, stat in STATS.items():
            if name + suffix in ref:
                ref_stat = ref[name + suffix].astype(np.float64)
                value = None if full is None else stat(full[: ref_stat.shape[0]])
                rows.append(_row(name + suffix, value, ref_stat))
    return rows


def format_rows(rows: list[Row]) -> str:
    """A table: array, max|ours - ref| / max|ref|, PASS or FAIL."""
    lines = [f"{'array (data-flow order)':26s} max|ours-ref|/max|ref|  (PASS <= {TOL:g})"]
    for row in rows:
        note = f"  ({row.note})" if row.note else ""
        lines.append(f"{row.name:26s} {row.error:9.2e}  {'PASS' if row.passed else 'FAIL'}{note}")
    return "\n".join(lines)


# --- the check: rule-built weights -> official checkpoint -> import -> run -> compare ---------------------------


def load_make_weights(path: str | Path) -> types.ModuleType:
    """The fixture's `make_weights.py`, imported from its path without touching sys.path or sys.modules."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the fixture's make_weights.py with --make-weights")
    spec = importlib.util.spec_from_file_location("make_weights", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attr in ("build_state_dict", "digest"):
        if not callable(getattr(module, attr, None)):
            raise ValueError(f"{path} has no function {attr}(): is it the fixture's make_weights.py?")
    return module


def write_official_checkpoint(state: Mapping[str, Tensor], path: str | Path) -> None:
    """A pytracking-style checkpoint file, as the official training writes it (without its pickled objects)."""
    torch.save({"net": dict(state), "constructor": None, "epoch": 0}, path)


@dataclass
class CheckResult:
    """Everything a check produced: the official state dict, the import report, the loaded network, its trace,
    the rows (data-flow order) and the seconds of the network pass and of the whole check."""

    fixture: Fixture
    official: dict[str, Tensor]
    report: ImportReport
    model: LLBNet
    trace: Trace
    rows: list[Row]
    run_seconds: float
    total_seconds: float


def check_official(
    fixture: str | Path,
    make_weights: str | Path | None = None,
    tsv: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> CheckResult:
    """Build the fixture's weights (`make_weights` and `tsv` default to the files beside the fixture), check
    their digest, write them as an official checkpoint, import and load it, run the fixture and compare.
    Progress goes to `log`. Raises ValueError for a digest that does not match the fixture's."""
    start = time.perf_counter()
    fx = load_fixture(fixture)
    layout = fx.layout
    make_weights = Path(make_weights) if make_weights else fx.path.with_name("make_weights.py")
    tsv = Path(tsv) if tsv else fx.path.with_name(f"{fx.variant}_state_dict.tsv")
    log(
        f"fixture  {fx.path}: {fx.variant}, {layout.n_train} train + {layout.n_test} test frames "
        f"of {layout.width}x{layout.height}"
    )
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv} does not exist: pass the layout table of the official state dict with --tsv")
    builder = load_make_weights(make_weights)
    official = builder.build_state_dict(str(tsv), fx.seed_base)
    digest = builder.digest(official)
    expected = fx.meta.get("weights_sha256")
    if expected is not None and digest != expected:
        raise ValueError(
            f"the weights from {make_weights.name} + {tsv.name} (seed base {fx.seed_base}) have sha256 {digest}, "
            f"but the fixture was computed with {expected}: pass the fixture's --make-weights and --tsv"
        )
    status = "matches the fixture" if expected else "(the fixture names no digest)"
    log(f"weights  {make_weights.name} + {tsv.name}, seed base {fx.seed_base}: sha256 {digest[:16]}... {status}")
    with tempfile.TemporaryDirectory(prefix="llb-check-official-") as tmp:
        source = Path(tmp) / f"{fx.variant}_official.pth.tar"
        write_official_checkpoint(official, source)
        report = import_official(source, Path(tmp) / f"paper-{fx.variant}.safetensors")
        model = load_model(Path(tmp) / f"paper-{fx.variant}.safetensors", config="paper", variant=fx.variant)
    log("import   " + report.summary().replace("\n", "\n         "))
    run_start = time.perf_counter()
    trace = run_data_flow(model, fx.arrays)
    run_seconds = time.perf_counter() - run_start
    rows = compare(fx.arrays, trace.arrays)
    return CheckResult(fx, official, report, model, trace, rows, run_seconds, time.perf_counter() - start)
