"""Parity with the official LLB and JOINT networks, stage by stage, and the official-checkpoint importer.

The fixture (../shared/official, README.md there) holds the official networks' intermediate tensors on 1 train
+ N test DAVIS frames, computed with rule-built weights. `llb check-official` (llb.parity) writes those weights
as an official checkpoint, imports it, runs the fixture through our network and compares every stored array in
data-flow order with the README's rule max|ours - ref| <= 1e-4 max|ref|. It runs once per fixture here; the
stage tests below reuse the network and tensors it produced.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import types
from collections.abc import Callable, Mapping
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from llb import parity
from llb.checkpoint import load_model, read_checkpoint
from llb.commands import check_official as check_command
from llb.commands.import_official import add_import_arguments, run_import
from llb.config import paper_config
from llb.decoder import LEVELS
from llb.induction import LearnerMemory
from llb.official import OfficialImportError, convert_state_dict, read_official_checkpoint
from llb.parity import N_TRAIN, CheckResult, Row, capture, cat, compare, filter_reg, learner_iters

VARIANTS = ("llb", "joint")


@dataclass
class Checked:
    """`llb check-official` on one fixture: exit status, printed text, and what the check produced."""

    code: int
    output: str
    result: CheckResult


def parse(add_arguments: Callable[[argparse.ArgumentParser], None], argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def check_via_cli(fixture: Path) -> Checked:
    """run_check as the CLI calls it; a spy on check_official keeps the network and tensors of that run."""
    results: list[CheckResult] = []
    check = parity.check_official

    def spy(*args: object, **kwargs: object) -> CheckResult:
        results.append(check(*args, **kwargs))
        return results[-1]

    with pytest.MonkeyPatch.context() as patch, redirect_stdout(io.StringIO()) as out:
        patch.setattr(check_command, "check_official", spy)
        code = check_command.run_check(parse(check_command.add_check_arguments, ["--fixture", str(fixture)]))
    print(out.getvalue())
    return Checked(code, out.getvalue(), results[0])


@pytest.fixture(scope="module")
def checks(official_dir: Path) -> Callable[[str], Checked]:
    """The check of each official fixture, run at most once per module."""
    done: dict[str, Checked] = {}

    def get(variant: str) -> Checked:
        if variant not in done:
            done[variant] = check_via_cli(official_dir / f"fixture_{variant}.npz")
        return done[variant]

    return get


@pytest.fixture(scope="module", params=VARIANTS)
def checked(request: pytest.FixtureRequest, checks: Callable[[str], Checked]) -> Checked:
    return checks(request.param)


def assert_within(rows: list[Row]) -> None:
    """Pass when all rows are within TOL; otherwise name the first failure in data-flow order."""
    print("\n" + parity.format_rows(rows))
    failed = [row.name for row in rows if not row.passed]
    assert not failed, f"first failure {failed[0]} (all failures: {failed})"


def stored(fx: Mapping[str, np.ndarray], name: str, rows: slice) -> Tensor:
    """Stored rows of a full (unsliced) array as a float32 tensor with the sequence axis: (n, 1, ...)."""
    return torch.from_numpy(np.ascontiguousarray(fx[name][rows]))[:, None]


# --- the whole chain: llb check-official ------------------------------------------------------------------------


def test_check_official_passes_and_prints_every_stage(checked: Checked) -> None:
    fx = checked.result.fixture.arrays
    names = parity.flow_order(parity.output_names(fx))
    expected = [n + s for n in names for s in ("", *parity.STATS) if n + s in fx]
    assert set(expected) == {n for n in fx if n not in parity.INPUTS}, "every stored array is compared"
    assert [row.name for row in checked.result.rows] == expected
    assert checked.code == 0, checked.output
    for name in expected:
        assert re.search(rf"^{name} +\d\.\d\de[-+]\d\d  PASS$", checked.output, re.MULTILINE), name
    assert "1 train + 2 test frames of 448x256" in checked.output
    assert "seed base 1000: sha256" in checked.output and "matches the fixture" in checked.output
    assert f"PASS: all {len(expected)} arrays within 0.0001" in checked.output


def test_forward_mirrors_the_official_call(checked: Checked) -> None:
    """LLBNet.forward is the official training call: (segm_pred, enc_tm, enc_tr) from the same inputs."""
    fx, model, trace = checked.result.fixture.arrays, checked.result.model, checked.result.trace
    rgb = torch.from_numpy(fx["frames_rgb"]).permute(0, 3, 1, 2).float()
    assert torch.equal(model.normalize(rgb), trace.images[:, 0])
    with torch.no_grad():
        out = model(trace.images[:N_TRAIN], trace.masks[:N_TRAIN], trace.images[N_TRAIN:], *learner_iters(fx))
    ours = {
        "segm_pred": out.logits[:, 0, 0].double().numpy(),
        "enc_tm": out.e2[:, 0].double().numpy(),
        "enc_tr": out.e1[:, 0].double().numpy(),
    }
    assert_within(compare(fx, ours, list(ours)))


# --- stages fed with stored upstream tensors (README "Using it", step 5) --------------------------------------


def test_fusion_alone(checked: Checked) -> None:
    fx, model = checked.result.fixture.arrays, checked.result.model
    with torch.no_grad():
        e_tar = model.fusion(torch.from_numpy(fx["E1_star"]), torch.from_numpy(fx["E2_star"]))
    assert_within(compare(fx, {"E_tar": e_tar.double().numpy()}, ["E_tar"]))


def test_learner_alone(checked: Checked) -> None:
    fx, model, trace = checked.result.fixture.arrays, checked.result.model, checked.result.trace
    memory = LearnerMemory(
        trace.learner[:N_TRAIN], stored(fx, "enc_tm", slice(N_TRAIN)), stored(fx, "sample_weight", slice(N_TRAIN))
    )
    iters = learner_iters(fx)[0]
    with torch.no_grad():
        tau, losses = model.learner(memory, iters, track_loss=True)
        with filter_reg(model, float(fx["lam_value"][0])):
            lam_tau, lam_losses = model.learner(memory, iters, track_loss=True)
    ours = {
        "tau0": tau[0].double().numpy(),
        "loss_init": torch.stack(losses).double().numpy(),
        "lam_tau0": lam_tau[0].double().numpy(),
        "lam_loss_init": torch.stack(lam_losses).double().numpy(),
    }
    assert_within(compare(fx, ours, list(ours)))


def test_transduction_alone(checked: Checked) -> None:
    fx, trace = checked.result.fixture.arrays, checked.result.trace
    transduction, e1_star = checked.result.model.transduction, []
    with torch.no_grad():
        for t in range(N_TRAIN, trace.images.shape[0]):
            keys = transduction.encode_memory(trace.transduction[:t])
            e1_star.append(transduction(trace.transduction[t], keys, stored(fx, "enc_tr", slice(t))))
    assert_within(compare(fx, {"E1_star": cat(e1_star)}, ["E1_star"]))


def test_decoder_alone(checked: Checked) -> None:
    fx, model, trace = checked.result.fixture.arrays, checked.result.model, checked.result.trace
    size = (trace.images.shape[-2], trace.images.shape[-1])
    with capture(model.decoder.levels) as seen, torch.no_grad():
        logits = [
            model.decoder(
                stored(fx, "E_tar", slice(i, i + 1))[0],
                {n: x[N_TRAIN + i][None] for n, x in trace.layers.items()},
                size,
            )
            for i in range(trace.images.shape[0] - N_TRAIN)
        ]
    ours = {f"dec_{name}": cat(seen[name]) for name in LEVELS} | {"segm_pred": cat([x[:, 0] for x in logits])}
    assert_within(compare(fx, ours, list(ours)))


def test_label_encoder_on_the_stored_predictions(checked: Checked) -> None:
    fx, model, trace = checked.result.fixture.arrays, checked.result.model, checked.result.trace
    probs = torch.sigmoid(torch.from_numpy(fx["segm_pred"]))[:, None, None]  # (N, 1, 1, H, W)
    with torch.no_grad():
        encs = [model.encode_label(trace.images[N_TRAIN + i], p) for i, p in enumerate(probs)]
    ours = {
        "enc_tm": cat([e.e2 for e in encs]),
        "enc_tr": cat([e.e1 for e in encs]),
        "sample_weight": cat([e.weight for e in encs]),
    }
    rows = {name: fx[name][N_TRAIN:] for name in ours}
    assert_within(compare(rows, ours, list(ours)))


# --- the fixture's shape and variant come from its arrays ------------------------------------------------------


def frames(count: int, height: int, width: int) -> dict[str, np.ndarray]:
    return {
        "frames_rgb": np.zeros((count, height, width, 3), np.uint8),
        "masks": np.zeros((count, height, width), np.uint8),
    }


def test_frame_layout_reads_count_and_size() -> None:
    assert parity.frame_layout(frames(5, 192, 320)) == parity.FrameLayout(1, 4, 192, 320)
    assert parity.frame_layout(frames(2, 256, 448)) == parity.FrameLayout(1, 1, 256, 448)
    bad = [
        frames(1, 192, 320),  # no test frame
        frames(3, 200, 320),  # not a multiple of 16
        {**frames(3, 192, 320), "masks": np.zeros((2, 192, 320), np.uint8)},
        {**frames(3, 192, 320), "frames_rgb": np.zeros((3, 192, 320), np.uint8)},
    ]
    for arrays in bad:
        with pytest.raises(ValueError):
            parity.frame_layout(arrays)


def test_fixture_variant_from_meta_or_arrays() -> None:
    assert parity.fixture_variant({}, {"which": "joint"}) == "joint"
    assert parity.fixture_variant({"dlgm_feat": np.zeros(1)}, {}) == "llb"
    assert parity.fixture_variant({}, {}) == "joint"
    with pytest.raises(ValueError, match="stm"):
        parity.fixture_variant({}, {"which": "stm"})


# --- a self-made fixture: other frame size, 3 test frames -------------------------------------------------------

SIZE = (128, 192)  # H, W of the self-made fixture: multiples of 32, another aspect ratio than 448x256
ORDER = [0, 1, 2, 1]  # the train frame, then 3 test frames
SEED_BASE = 1234  # written into meta_json; the stand-in weight builder accepts only this one

STANDIN = '''"""Stand-in for make_weights.py: the rule-built weights, saved by the test (building takes seconds)."""
from safetensors.torch import load_file


def build_state_dict(tsv_path, seed_base=1000):
    assert seed_base == {seed_base}, "the seed base was not read from meta_json"
    return load_file({weights!r})


def digest(state):
    return {digest!r}
'''


def fixture_like(reference: Mapping[str, np.ndarray], ours: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our full arrays stored with the reference fixture's conventions: its arrays (the numbered ones for every
    frame), bb_* for test frame 0 only, its channel steps, and its statistics over all rows."""
    out = {}
    for name, full in ours.items():
        family = re.sub(r"^(tau|tr_mem_sa_)\d+$", r"\g<1>0", name)
        if family not in reference:  # dlgm_feat of a JOINT fixture
            continue
        ref = reference[family]
        kept = full[:1] if name.startswith("bb_") else full
        if kept.ndim == 4 and ref.shape[1] != kept.shape[1]:
            kept = kept[:, :: kept.shape[1] // ref.shape[1]]
        out[name] = kept.astype(np.float32)
        out |= {name + s: stat(full).astype(np.float32) for s, stat in parity.STATS.items() if family + s in reference}
    return out


@pytest.fixture(scope="module")
def self_made(checks: Callable[[str], Checked], official_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixture folder made by our own driver: JOINT on 1 train + 3 test frames of 192x128, with a stand-in
    make_weights.py beside it and the real layout table."""
    result = checks("joint").result
    fx = result.fixture.arrays
    h, w = SIZE
    arrays = {
        "frames_rgb": np.stack([cv2.resize(fx["frames_rgb"][i], (w, h), interpolation=cv2.INTER_AREA) for i in ORDER]),
        "masks": np.stack([cv2.resize(fx["masks"][i], (w, h), interpolation=cv2.INTER_NEAREST) for i in ORDER]),
        "loss_init": fx["loss_init"],  # read for its length: the number of learner steps
        "loss_refine": fx["loss_refine"],
        "lam_value": fx["lam_value"],
    }
    ours = parity.run_data_flow(result.model, arrays).arrays
    arrays |= fixture_like(fx, ours)
    steps = {n: ours[n].shape[1] // a.shape[1] for n, a in arrays.items() if n in ours and a.ndim == 4}
    meta = {
        "which": "joint",
        "seed_base": SEED_BASE,
        "weights_sha256": result.fixture.meta["weights_sha256"],
        "slices": {n: f"channels ::{k}" if k > 1 else "all" for n, k in steps.items()},
    }
    folder = tmp_path_factory.mktemp("self_made")
    np.savez(folder / "fixture_joint.npz", **arrays, meta_json=np.array(json.dumps(meta)))
    save_file(result.official, str(folder / "weights.safetensors"))
    source = STANDIN.format(
        seed_base=SEED_BASE, weights=str(folder / "weights.safetensors"), digest=meta["weights_sha256"]
    )
    (folder / "make_weights.py").write_text(source)
    (folder / "joint_state_dict.tsv").symlink_to(official_dir / "joint_state_dict.tsv")
    return folder


def rewrite(folder: Path, name: str, change: Callable[[dict[str, np.ndarray]], None]) -> Path:
    """A copy of the self-made fixture, changed in place by `change`."""
    with np.load(folder / "fixture_joint.npz") as z:
        arrays = {key: z[key] for key in z.files}
    change(arrays)
    np.savez(folder / name, **arrays)
    return folder / name


def test_check_official_reads_frames_and_size_from_the_fixture(self_made: Path) -> None:
    checked = check_via_cli(self_made / "fixture_joint.npz")
    assert checked.code == 0, checked.output
    assert "1 train + 3 test frames of 192x128" in checked.output and f"seed base {SEED_BASE}" in checked.output
    names = [row.name for row in checked.result.rows]
    assert {"tr_mem_sa_2", "tau2", "tau2__norm"} <= set(names) and "dlgm_feat" not in names
    assert checked.result.trace.arrays["segm_pred"].shape == (3, *SIZE)


def test_check_official_fails_on_a_perturbed_stage(self_made: Path) -> None:
    def perturb(arrays: dict[str, np.ndarray]) -> None:
        arrays["E1_star"] = arrays["E1_star"] * np.float32(1.01)
        meta = json.loads(str(arrays["meta_json"]))
        del meta["which"]  # the variant then comes from the arrays: no dlgm_feat, JOINT
        arrays["meta_json"] = np.array(json.dumps(meta))

    checked = check_via_cli(rewrite(self_made, "fixture_perturbed.npz", perturb))
    assert checked.code == 1
    assert [row.name for row in checked.result.rows if not row.passed] == ["E1_star"]
    assert re.search(r"^E1_star +9\.\d\de-03  FAIL$", checked.output, re.MULTILINE), checked.output
    assert "first failure in data-flow order: E1_star" in checked.output


def test_check_official_refuses_weights_of_another_digest(self_made: Path) -> None:
    def other_digest(arrays: dict[str, np.ndarray]) -> None:
        meta = json.loads(str(arrays["meta_json"])) | {"weights_sha256": "0" * 64}
        arrays["meta_json"] = np.array(json.dumps(meta))

    with pytest.raises(ValueError, match="sha256"):
        parity.check_official(rewrite(self_made, "fixture_digest.npz", other_digest), log=lambda _: None)


# --- the importer --------------------------------------------------------------------------------------------


def test_importer_accounts_for_every_tsv_row(checked: Checked, official_dir: Path) -> None:
    result, variant = checked.result, checked.result.fixture.variant
    make_weights = parity.load_make_weights(official_dir / "make_weights.py")
    tsv_keys = [row[0] for row in make_weights.read_tsv(str(official_dir / f"{variant}_state_dict.tsv"))]
    report = result.report
    assert set(report.loaded).isdisjoint(report.dropped)
    assert set(report.loaded) | set(report.dropped) == set(tsv_keys)
    assert all(report.dropped.values())
    assert all(not re.search(r"\.WV\.|\.head\.|^transformer\.decoder\.self_attn\.", k) for k in report.loaded)
    assert sorted(report.loaded.values()) == sorted(result.model.state_dict())
    assert report.facts["D"] == result.fixture.meta["D"] and report.config.variant == variant
    expected = paper_config(variant)
    expected.backbone.pretrained = expected.label.pretrained = False
    assert report.config == expected
    summary = report.summary()
    assert f"loaded {len(report.loaded)} tensors, dropped {len(report.dropped)}" in summary
    assert all(key in summary for key in report.dropped)


def test_tampered_shared_self_attention_raises(checked: Checked) -> None:
    official = checked.result.official
    key = "transformer.decoder.self_attn.WK.weight"
    state = dict(official) | {key: official[key] + 1e-3}
    with pytest.raises(OfficialImportError, match=re.escape(key)):
        convert_state_dict(state)


def test_wrong_shape_names_key_and_both_shapes(checked: Checked) -> None:
    key = "decoder.project.conv1.weight"
    state = dict(checked.result.official) | {key: torch.zeros(32, 64, 1, 1)}
    with pytest.raises(OfficialImportError) as err:
        convert_state_dict(state)
    for part in (key, "decoder.project_conv1.weight", "(32, 64, 1, 1)", "(32, 64, 3, 3)"):
        assert part in str(err.value)


def test_unknown_key_raises(checked: Checked) -> None:
    state = dict(checked.result.official) | {"decoder.extra.weight": torch.zeros(1)}
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


def test_import_official_command(ltr: None, checked: Checked, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`llb import-official` on a pytracking-layout file: no pickled code runs, the report and the output path
    are printed, and the checkpoint loads as `--config paper` with the tensors the check ran."""
    result = checked.result
    save_official(result.official, tmp_path / "official.pth.tar")
    out = tmp_path / "imported.safetensors"
    assert run_import(parse(add_import_arguments, [str(tmp_path / "official.pth.tar"), "--out", str(out)])) == 0
    printed = capsys.readouterr().out
    assert EXECUTED == []
    for part in (f"loaded {len(result.report.loaded)} tensors", *result.report.dropped, f"wrote {out}"):
        assert part in printed
    assert f"--config paper --checkpoint {out}" in printed
    _, state, meta = read_checkpoint(out)
    assert json.loads(meta["info"])["source"] == "official" and meta["trained"] == "true"
    reference = result.model.state_dict()
    assert state.keys() == reference.keys() and all(torch.equal(v, reference[k]) for k, v in state.items())
    assert load_model(out, config="paper").cfg.variant == result.fixture.variant


def test_import_official_wants_a_safetensors_output() -> None:
    with pytest.raises(SystemExit):
        parse(add_import_arguments, ["official.pth.tar", "--out", "model.pth"])
