"""`llb bench` end to end on a tiny configuration, the stage timer, and the engine's speed changes, each of
which must leave the results as they were (no timing is asserted: speed goals live in the benchmark)."""

import argparse
import json
import random
import sys

import cv2
import numpy as np
import pytest
import torch

from llb.bench.clip import BenchClip
from llb.commands.bench import add_bench_arguments, run_bench
from llb.config import TransductionConfig, get_config
from llb.induction import LearnerMemory, apply_filter
from llb.inference.crop import CropConfig
from llb.inference.memory import MemoryConfig
from llb.inference.session import InferenceConfig, Segmenter, Session, _argmax0
from llb.inference.timing import StageTimer
from llb.network import LLBNet
from llb.transduction import IncrementalMemoryEncoder, Transduction
from llb.video import export
from llb.video.export import ResultWriter
from llb.video.io import iter_frames

HEADLINE = {"fps", "ms_median", "ms_p90", "peak_rss_mb", "peak_gpu_mb", "stages"}


@pytest.fixture(scope="module")
def blackswan(data_dir):
    return data_dir / "davis2017-dev" / "JPEGImages" / "blackswan"


@pytest.fixture
def one_thread():
    """One CPU thread, restored afterwards: on a busy 2-core machine a second thread mostly waits for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="llb bench")
    add_bench_arguments(parser)
    return parser.parse_args(argv)


def test_options_take_several_variants_sizes_lengths_and_object_counts():
    args = _parse(["--variant", "llb", "--size", "64x48", "96x64", "--frames", "3", "5", "--objects", "1", "2"])
    assert args.variant == ["llb"] and args.sizes == [(48, 64), (64, 96)]
    assert args.frames == [3, 5] and args.objects == [1, 2]
    assert _parse([]).variant == ["llb", "joint"] and _parse(["--crop-size", "432x240"]).sizes == [(240, 432)]
    assert not _parse([]).sync_write and _parse(["--sync-write"]).sync_write


def test_bench_end_to_end_writes_json_table_and_plot(blackswan, tmp_path, capsys, one_thread, monkeypatch):
    monkeypatch.setattr("llb.checkpoint.LOCAL_DIRS", ())  # untrained networks: the table must say so
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--allow-untrained", "--clip", str(blackswan), "--size", "64x48", "--frames", "3", "6"]
    argv += ["--objects", "1", "2", "--warmup", "1", "--threads", "1", "--json", str(out), "--quiet"]
    assert run_bench(_parse(argv)) == 0
    table = capsys.readouterr().out
    assert "lite-llb" in table and "lite-joint" in table and "UNTRAINED" in table and "backbone" in table
    report = json.loads(out.read_text())
    assert set(report) == {"llb", "joint"}
    for entry in report.values():
        assert set(entry) >= HEADLINE and entry["frames"] == 6 and entry["trained"] is False
        assert entry["peak_rss_mb"] > 0 and entry["peak_gpu_mb"] == 0.0
        assert len(entry["runs"]) == 4  # 2 object counts x 2 lengths
        assert {(r["objects"], r["frames"]) for r in entry["runs"]} == {(1, 3), (1, 6), (2, 3), (2, 6)}
        for run in entry["runs"]:
            assert run["fps"] > 0 and run["ms_p90"] >= run["ms_median"] > 0
            assert all(ms >= 0 for ms in run["stages"].values())
            assert sum(ms for name, ms in run["stages"].items() if name != "other") <= run["ms_mean"] * 1.01 + 1
            assert run["stages"]["backbone"] > 0 and run["stages"]["encode"] > 0 and run["stages"]["decode"] > 0
        assert [len(s["ms"]) for s in entry["series"]] == [6, 6]
    plot = cv2.imread(str(tmp_path / "bench.png"))
    assert plot is not None and plot.shape[0] > 300 and plot.shape[1] >= 1000


def test_clip_loops_back_and_forth_and_adds_objects(blackswan):
    clip = BenchClip.open(blackswan)
    assert clip.mask.shape == (clip.height, clip.width) and len(clip.files) == 50
    for k in (1, 3, 5):
        ids = np.unique(clip.first_mask(k))
        assert list(ids) == list(range(k + 1))
    frames = list(clip.frames(100))
    assert len(frames) == 100
    assert np.array_equal(frames[50], frames[48]) and np.array_equal(frames[98], frames[0])  # 0..49, 48..1, 0..


H, W = 96, 128


def _frames(n):
    rng = np.random.default_rng(0)
    background = rng.integers(0, 120, (H, W, 3), dtype=np.uint8)
    for t in range(n):
        frame = background.copy()
        x = 20 + (t % 60)
        frame[30:60, x : x + 30] = (250, 240, 30)
        yield frame


def _labels():
    labels = np.zeros((H, W), np.uint8)
    labels[30:60, 20:50] = 1
    labels[70:90, 90:120] = 2
    return labels


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    cfg = InferenceConfig(  # float32 even on bf16 CPUs: tests here compare two computations to 1e-5
        crop=CropConfig(size=(64, 112)),
        init_iters=3,
        update_iters=2,
        memory=MemoryConfig(interval=2, size=4),
        autocast=False,
    )
    return Segmenter(LLBNet(get_config("lite", "llb")), cfg, device="cpu")


def _probs(segmenter, n=14, timer=None):
    session = segmenter.start(_frames(n), timer)
    session.add_mask(0, _labels())
    return np.stack([r.probs for r in session.propagate()])


def test_the_timer_records_every_frame_and_changes_nothing(segmenter, one_thread):
    timer = StageTimer("cpu")
    timed = _probs(segmenter, timer=timer)
    assert np.array_equal(timed, _probs(segmenter))
    assert len(timer.frames) == len(timed)
    for frame in timer.frames:
        assert frame.wall > 0 and all(t >= 0 for t in frame.stages.values())
        assert sum(frame.stages.values()) <= frame.wall * 1.01 + 1e-4
    stages = set().union(*(f.stages for f in timer.frames))
    assert {"decode", "crop", "backbone", "label_generator", "transduction", "learner", "decoder", "paste"} <= stages


def test_incremental_memory_encoding_matches_encoding_from_scratch():
    torch.manual_seed(0)
    rng = random.Random(0)
    trans = Transduction(TransductionConfig(key_dim=16), 24)
    encoder = IncrementalMemoryEncoder(trans)
    base = torch.randn(2, 24, 3, 5)
    memory: list[torch.Tensor] = []
    with torch.inference_mode():
        for step in range(40):
            feat = base + 0.3 * torch.randn_like(base)
            if len(memory) < 6:
                memory.append(feat)
            elif step % 2:  # the paper's policy: the oldest after the first leaves
                del memory[1]
                memory.append(feat)
            else:  # the weighted policy: any slot after the first is replaced
                memory[rng.randrange(1, 6)] = feat
            full = trans.encode_memory(torch.stack(memory))
            torch.testing.assert_close(encoder.update(memory), full, atol=1e-5, rtol=1e-5)
        assert len(encoder.frames) == 6


def test_session_results_equal_those_of_encoding_the_memory_from_scratch(segmenter, monkeypatch, one_thread):
    fast = _probs(segmenter)
    monkeypatch.setattr(
        IncrementalMemoryEncoder, "update", lambda self, feats: self.transduction.encode_memory(torch.stack(feats))
    )
    np.testing.assert_allclose(fast, _probs(segmenter), atol=1e-5)


def test_session_results_equal_those_of_the_learner_refitting_from_scratch(segmenter, monkeypatch, one_thread):
    """The carried fit (memory size 4 here, so frames leave the memory too) against FewShotLearner's steps."""
    fast = _probs(segmenter)

    def refit(learner, feat, label, weight, iters, tau, fitted, sample_weight=None):
        tau, _ = learner(LearnerMemory(feat, label, weight, sample_weight), iters, tau)
        return tau, apply_filter(feat, tau)

    monkeypatch.setattr("llb.inference.session.fit", refit)
    np.testing.assert_allclose(fast, _probs(segmenter), atol=1e-5)


def test_the_memory_read_kept_between_updates_gives_the_bits_of_reading_it_every_frame(monkeypatch, one_thread):
    """Under bf16 autocast the session keeps the memory's encoding and E1 tokens cast to bf16 from one memory
    update to the next (and updates them on the memory frame itself): bit for bit what autocast computes from
    the float32 encoding and the stacked E1 read at every frame."""
    monkeypatch.setattr("llb.inference.session.native_bf16", lambda device: True)
    torch.manual_seed(0)
    cfg = InferenceConfig(
        crop=CropConfig(size=(64, 112)), init_iters=3, update_iters=2, memory=MemoryConfig(interval=2, size=4)
    )
    seg = Segmenter(LLBNet(get_config("lite", "llb")), cfg, device="cpu")
    kept = _probs(seg)
    reads = []

    def read_every_frame(self, group):
        reads.append(group.memory.version)
        return group.encoder.update([e.transduction for e in group.memory.entries]), group.memory.stacked("e1")

    monkeypatch.setattr(Session, "_read_memory", read_every_frame)
    assert np.array_equal(kept, _probs(seg))
    assert len(reads) > len(kept)  # every frame read it, and so did every memory frame


def test_a_peer_that_is_not_installed_is_skipped_with_a_message(blackswan, capsys, one_thread, monkeypatch):
    monkeypatch.setattr("llb.checkpoint.LOCAL_DIRS", ())
    monkeypatch.setitem(sys.modules, "sam2", None)  # import sam2 raises ImportError
    argv = ["--device", "cpu", "--allow-untrained", "--clip", str(blackswan), "--size", "64x48", "--frames", "2"]
    argv += ["--variant", "joint", "--warmup", "0", "--threads", "1", "--quiet", "--peers", "sam2"]
    assert run_bench(_parse(argv)) == 0
    out = capsys.readouterr().out
    assert "peer sam2 skipped: sam2 is not importable" in out and "README" in out
    assert _parse([]).peers == [] and _parse(["--peers", "sam2"]).peers == ["sam2"]


def test_running_argmax_equals_argmax_ties_included():
    x = torch.rand(4, 30, 40)
    x[2, :5] = x[1, :5]  # ties go to the first index
    x[:, 10:12] = 0.5
    assert torch.equal(_argmax0(x).long(), x.argmax(0))


def test_bench_train_times_real_runs(data_dir, tmp_path, capsys):
    """`llb bench-train` runs each setup as real `llb train` processes (here two runs side by side) and reports
    their median s/step, the machine's clips/s and the clip sources' cost."""
    from llb.commands.bench_train import add_bench_train_arguments, run_bench_train

    parser = argparse.ArgumentParser(prog="llb bench-train")
    add_bench_train_arguments(parser)
    out = tmp_path / "train.json"
    argv = ["--setup", "bf16-2runs-1thread", "--size", "64x64", "--batch", "1", "--steps", "3", "--warmup", "1"]
    assert run_bench_train(parser.parse_args([*argv, "--workers", "0", "--json", str(out)])) == 0
    report = json.loads(out.read_text())
    (result,) = report["setups"].values()
    assert result["processes"] == 2 and result["steps_timed"] == 2 and result["sec_per_step"] > 0
    assert result["clips_per_s"] == pytest.approx(2 / result["sec_per_step"], rel=0.01)
    assert report["ms_per_clip"]["synthetic"] > 0 and report["ms_per_clip"]["video"] > 0
    assert "bf16-2runs-1thread" in capsys.readouterr().out


def _results(n: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """n frames (48, 64) with labels of two objects."""
    rng = np.random.default_rng(0)
    out = []
    for t in range(n):
        labels = np.zeros((48, 64), np.uint8)
        labels[10:30, t : t + 20], labels[35:45, 40:60] = 1, 2
        out.append((rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), labels, f"{t:05d}"))
    return out


def test_background_writing_gives_the_files_of_synchronous_writing(tmp_path):
    for background in (False, True):
        with ResultWriter(tmp_path / str(background), warning="TEST", background=background) as writer:
            for frame, labels, name in _results(6):
                writer.write(frame, labels, name)
                labels[:] = 0  # the caller may reuse its arrays once write returns
    sync, threaded = tmp_path / "False", tmp_path / "True"
    assert sorted(p.name for p in (threaded / "masks").iterdir()) == [f"{t:05d}.png" for t in range(6)]
    for t in range(6):
        assert (sync / "masks" / f"{t:05d}.png").read_bytes() == (threaded / "masks" / f"{t:05d}.png").read_bytes()
    frames = [list(iter_frames(d / "overlay.mp4")) for d in (sync, threaded)]
    assert len(frames[0]) == len(frames[1]) == 6
    assert all(np.array_equal(a, b) for a, b in zip(*frames, strict=True))


def test_a_background_writing_error_reaches_the_caller_and_drops_the_video(tmp_path, monkeypatch):
    save = export.save_palette_png

    def failing(path, labels):
        if path.stem == "00002":
            raise OSError("disk full")
        save(path, labels)

    monkeypatch.setattr(export, "save_palette_png", failing)
    with pytest.raises(OSError, match="disk full"), ResultWriter(tmp_path) as writer:
        for frame, labels, name in _results(8):
            writer.write(frame, labels, name)
    assert not (tmp_path / "overlay.mp4").exists()
    writer = ResultWriter(tmp_path / "late")
    for frame, labels, name in _results(3):  # the error comes after the last write: close raises it
        writer.write(frame, labels, name)
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert not (tmp_path / "late" / "overlay.mp4").exists()
