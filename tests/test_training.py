"""Training: the losses against hand-computed values, overfitting a fixed batch, bit-exact resume, the export,
configs, the command line, both stages on the shared data, and two processes under torchrun. Tiny sizes (64x96),
the lite network without ImageNet weights, CPU.

Run as a script, this file is each torchrun process of `test_two_processes_under_torchrun` (see `rank_main`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import default_collate

from llb.checkpoint import load_model, read_checkpoint
from llb.cli import main as llb_main
from llb.commands.train import add_train_arguments, run_train
from llb.data import ClipDataset
from llb.fusion import AdaptiveFusion
from llb.training import (
    LossConfig,
    TrainConfig,
    Trainer,
    apply_overrides,
    cosine_similarity_loss,
    lovasz_hinge,
    lovasz_sigmoid,
    stage_config,
)
from llb.training import trainer as trainer_module
from llb.training.distributed import Distributed
from llb.training.monitor import RunMonitor, plot_curves
from llb.training.trainer import clip_batches, lr_factor, param_groups
from llb.training.validation import make_validator, validation_sets

SIZE = (64, 96)


class BlobClips(ClipDataset):
    """Random clips without files: a noisy background and an ellipse that drifts, the target."""

    def __init__(self, seed: int = 0, size: tuple[int, int] = SIZE) -> None:
        super().__init__(seed)
        self.size = size

    def make_clip(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.size
        yy, xx = np.mgrid[:h, :w]
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        vx, vy = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h
        colour = rng.integers(128, 256, 3)
        images, masks = [], []
        for t in range(4):
            image = rng.integers(0, 100, (h, w, 3)).astype(np.uint8)
            mask = ((xx - cx - vx * t) / (0.15 * w)) ** 2 + ((yy - cy - vy * t) / (0.16 * h)) ** 2 <= 1
            image[mask] = colour
            images.append(image)
            masks.append(mask.astype(np.uint8))
        return np.stack(images), np.stack(masks)


def tiny_config(tmp_path: Path, **changes: object) -> TrainConfig:
    cfg = TrainConfig(model="lite", variant="llb", pretrained=False, steps=4, batch=1, device="cpu")
    cfg.out = str(tmp_path / "run")
    cfg.data.set_size(SIZE)
    cfg.data.workers = 0
    cfg.optim.warmup_steps = 2
    cfg.save_every, cfg.log_every = 0, 1
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def test_lovasz_hinge_hand_computed() -> None:
    # labels (1, 0, 1), logits (1, 0.5, -1): hinge errors 1 - x (2y - 1) = (0, 1.5, 2); sorted descending the
    # labels read (1, 0, 1): Jaccard 1 - I/U = (1/2, 2/3, 1), increments (1/2, 1/6, 1/3).
    logits = torch.tensor([[1.0, 0.5, -1.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    assert float(lovasz_hinge(logits, labels)) == pytest.approx(2 * 0.5 + 1.5 / 6 + 0 / 3, abs=1e-6)
    # the official loss: errors |y - sigmoid(x)| sort in the same order here
    s = [1 / (1 + math.exp(-v)) for v in (1.0, 0.5, -1.0)]
    expected = (1 - s[2]) * 0.5 + s[1] / 6 + (1 - s[0]) / 3
    assert float(lovasz_sigmoid(logits, labels)) == pytest.approx(expected, abs=1e-6)


def test_lovasz_is_jaccard_loss_on_hard_predictions() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(3, 1, 8, 8, generator=gen) > 0.5).float()
    pred = (torch.rand(3, 1, 8, 8, generator=gen) > 0.5).float()
    logits = (pred * 2 - 1) * 50  # sigmoid is 0 or 1
    inter = (pred * labels).flatten(1).sum(1)
    union = ((pred + labels) > 0).float().flatten(1).sum(1)
    assert float(lovasz_sigmoid(logits, labels)) == pytest.approx(float((1 - inter / union).mean()), abs=1e-5)
    assert float(lovasz_hinge(labels * 4 - 2, labels)) == 0.0  # margins >= 1 everywhere: no loss


def test_lovasz_over_the_batch() -> None:
    gen = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(2, 3, 1, 5, 6, generator=gen), (torch.rand(2, 3, 1, 5, 6, generator=gen) > 0.6)
    whole = lovasz_sigmoid(logits.reshape(1, 1, -1), labels.reshape(1, 1, -1).float())
    assert float(lovasz_sigmoid(logits, labels.float(), per_image=False)) == pytest.approx(float(whole))
    cfg = LossConfig()
    assert (cfg.segmentation, cfg.per_image, cfg.seg_weight, cfg.cosine_weight) == ("lovasz_sigmoid", False, 100, 1)


def test_cosine_similarity_loss() -> None:
    e = torch.rand(2, 3, 4, 5, 5)
    assert float(cosine_similarity_loss(e, 2 * e)) == pytest.approx(1.0, abs=1e-6)
    a = torch.zeros(1, 1, 2, 2, 2)
    b = torch.zeros(1, 1, 2, 2, 2)
    a[:, :, 0], b[:, :, 1] = 1, 1
    assert float(cosine_similarity_loss(a, b)) == pytest.approx(0.0, abs=1e-6)


def test_param_groups_and_schedule(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, steps=100)
    cfg.optim.decay_at = (0.5,)
    trainer = Trainer(cfg, dataset=BlobClips())
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {
        "lr_adapters": 2e-5,
        "lr_label_generator": 1e-4,
        "lr_filter_reg": 5e-5,
        "lr_transduction": 2e-5,
        "lr_fusion": 1e-4,
        "lr_decoder": 1e-4,
    }
    assert not any(p.requires_grad for p in trainer.model.backbone.parameters())
    cfg.optim.lr_backbone = 2e-5
    groups = {g["name"]: g["params"] for g in param_groups(trainer.model, cfg)}
    assert (
        0 < sum(p.numel() for p in groups["lr_backbone"]) < sum(p.numel() for p in trainer.model.backbone.parameters())
    )
    assert [lr_factor(s, cfg) for s in (0, 1, 49, 50, 99)] == pytest.approx([0.5, 1.0, 1.0, 0.2, 0.2])
    trainer.set_train_mode()
    bns = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and trainer.model.decoder.training


def test_overfits_a_fixed_batch(tmp_path: Path) -> None:
    # Batch norms train here: with all of them frozen (the official setting) a randomly initialised decoder
    # starts with logits near 1e-3 and takes tens of steps to leave the p = 0.5 plateau of the Lovasz loss.
    cfg = tiny_config(tmp_path, steps=100, freeze_bn=False)
    cfg.optim.warmup_steps, cfg.optim.decay_at = 0, ()
    data = BlobClips(seed=0)
    batch = torch.utils.data.default_collate([data[0]])
    trainer = Trainer(cfg, dataset=data)
    stats = [trainer.train_step(batch) for _ in range(12)]
    losses = [s["loss"] for s in stats]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.93 * losses[0], losses
    assert stats[-1]["iou"] > 0.8


def test_resume_is_bit_exact_and_export_reloads(tmp_path: Path) -> None:
    straight = Trainer(tiny_config(tmp_path / "a"), dataset=BlobClips(seed=5))
    straight.fit(quiet=True)

    first = Trainer(tiny_config(tmp_path / "b"), dataset=BlobClips(seed=5))
    first.fit(quiet=True, stop_at=2)
    assert not list((tmp_path / "b" / "run").glob("*.safetensors*"))  # paused: no export yet
    resumed = Trainer(tiny_config(tmp_path / "b"), dataset=BlobClips(seed=5))
    resumed.load_state(tmp_path / "b" / "run" / "last")
    assert resumed.step == 2
    resumed.fit(quiet=True)

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "b" / "run" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3", "4"]

    run = tmp_path / "a" / "run"
    opt = load_file(str(run / "last" / "optimizer.safetensors"))
    assert opt and all(k.startswith("state.") for k in opt)
    shards = sorted(run.glob("lite-llb-synthetic-*.safetensors"))
    assert len(shards) >= 2
    assert all(p.stat().st_size <= 16 * 2**20 for p in shards)
    model = load_model(run / "lite-llb-synthetic.safetensors")
    assert model.trained
    index = json.loads((run / "lite-llb-synthetic.safetensors.index.json").read_text())
    info = json.loads(index["metadata"]["info"])
    assert info["steps"] == 4 and info["stage"] == "synthetic"
    exported = model.state_dict()
    assert all(torch.equal(exported[k], a[k]) for k in a)


def test_config_round_trip_and_overrides() -> None:
    cfg = stage_config("video")
    apply_overrides(cfg, ["optim.lr_decoder=5e-5", "data.clip.max_gap=7", "init=none", "optim.decay_at=0.5,0.9"])
    assert cfg.optim.lr_decoder == 5e-5 and cfg.data.clip.max_gap == 7 and cfg.init is None
    assert cfg.optim.decay_at == (0.5, 0.9)
    again = TrainConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    with pytest.raises(ValueError, match="no field"):
        apply_overrides(cfg, ["optim.lr_nothing=1"])


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--stage", "video", "--size", "96x64", "--steps", "7", "--set", "loss.seg_weight=50", "--print-config")
    assert run_train(args) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["stage"] == "video" and cfg["steps"] == 7 and cfg["loss"]["seg_weight"] == 50
    assert cfg["data"]["clip"]["size"] == [64, 96] and cfg["data"]["synthetic"]["size"] == [64, 96]


def test_trains_an_ablation_row_of_the_paper() -> None:
    cfg = TrainConfig(variant="llb-3", pretrained=False)  # BFF + JOINT's CNN + AFM (paper Table 3)
    model, lineage = trainer_module.build_model(cfg)
    assert lineage is None
    assert (model.cfg.key, model.cfg.label.input, model.cfg.label.encoder) == ("lite-llb-3", "bff", "cnn")
    assert isinstance(model.fusion, AdaptiveFusion)
    assert parse("--variant", "llb-2").variant == "llb-2"
    with pytest.raises(SystemExit):
        parse("--variant", "llb-9")


def test_refuses_the_validation_split(tmp_path: Path) -> None:
    args = parse("--stage", "video", "--video-root", str(tmp_path / "davis2017-dev"), "--preview-data", "x.png")
    with pytest.raises(ValueError, match="validation split"):
        run_train(args)


def test_validation_callback(tmp_path: Path) -> None:
    pytest.importorskip("llb.evaluation.davis")
    root = tmp_path / "val"
    for sub in ("JPEGImages", "Annotations"):
        (root / sub / "seq").mkdir(parents=True)
    for t in range(4):
        labels = np.zeros((48, 64), np.uint8)
        labels[10:30, 10 + 3 * t : 30 + 3 * t] = 1
        image = np.where(labels[..., None] > 0, 220, 60).astype(np.uint8).repeat(3, axis=2)
        Image.fromarray(image).save(root / "JPEGImages" / "seq" / f"{t:05d}.jpg")
        ann = Image.fromarray(labels, mode="P")
        ann.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
        ann.save(root / "Annotations" / "seq" / f"{t:05d}.png")
    validator = make_validator(validation_sets([root]), tmp_path / "pred", SIZE)
    trainer = Trainer(tiny_config(tmp_path), dataset=BlobClips(), validators=[validator])
    before = torch.get_rng_state()
    results = trainer.validate()
    scores = {k: v for k, v in results.items() if k.startswith("val_")}
    assert set(scores) == {"val_J&F", "val_J", "val_F", "val_val_J&F", "val_val_J", "val_val_F"}
    assert all(0 <= v <= 100 for v in scores.values()) and scores["val_J&F"] == scores["val_val_J&F"]
    gates = {k: v for k, v in results.items() if k.startswith("gate_")}
    assert len(gates) == 12 and all(0 <= v <= 1 for v in gates.values())  # the tiny config's fusion is the AFM
    per_sequence = json.loads((tmp_path / "pred" / "sequences-0.json").read_text())
    assert per_sequence["val/seq"]["J&F"] == scores["val_J&F"]
    assert torch.equal(torch.get_rng_state(), before) and trainer.model.decoder.training
    monitor = RunMonitor(tmp_path, 0, 4, 2, quiet=True)
    monitor.training(1, {"loss": 50.0, "iou": 0.5, "sec_per_step": 0.5})
    assert monitor.draw() is None  # no log.csv row yet: nothing to draw
    monitor.training(2, {"loss": 49.0, "iou": 0.5, "sec_per_step": 0.5})
    monitor.validation(2, results)
    assert monitor.draw() == tmp_path / "curves.png"
    monitor.close()
    assert (tmp_path / "val.csv").read_text().startswith("step,val_J&F")
    assert (tmp_path / "curves.png").stat().st_size > 0 and list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_two_stages_on_the_shared_data(data_dir: Path, tmp_path: Path) -> None:
    """`llb train --stage synthetic` on the shared stills, its export as --init of `--stage video`."""
    common = ["--size", "64x64", "--batch", "1", "--steps", "2", "--workers", "0", "--device", "cpu", "--quiet"]
    common += ["--threads", "1", "--set", "pretrained=false", "--set", "optim.warmup_steps=1"]
    first, second = tmp_path / "synthetic", tmp_path / "video"
    assert llb_main(["train", "--stage", "synthetic", *common, "--out", str(first)]) == 0
    export = first / "lite-llb-synthetic.safetensors"
    video = ["train", "--stage", "video", *common, "--seed", "1", "--init", str(export), "--out", str(second)]
    assert llb_main(video) == 0
    _, start, _ = read_checkpoint(export)
    _, end, meta = read_checkpoint(second / "lite-llb-video.safetensors")
    info = json.loads(meta["info"])
    assert info["stage"] == "video" and info["init"] == str(export) and info["data"] == ["davis2016-train-240p"]
    assert info["init_info"]["stage"] == "synthetic" and info["init_info"]["steps"] == 2  # the lineage
    frozen = [k for k in start if k.startswith("backbone.")]
    assert frozen and all(torch.equal(start[k], end[k]) for k in frozen)  # seed 1 would draw other weights
    assert not all(torch.equal(start[k], end[k]) for k in start)
    assert llb_main(["train", "--out", str(second), "--plot-curves", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0 and plot_curves(second) == second / "curves.png"


def test_clip_batches_share_the_stream() -> None:
    assert clip_batches(3, 5, 2, Distributed()) == [range(6, 8), range(8, 10)]  # one process: as before
    ranks = [clip_batches(1, 3, 2, Distributed(rank, 3)) for rank in range(3)]
    assert [list(r[0]) for r in ranks] == [[6, 7], [8, 9], [10, 11]]
    assert sorted(i for r in ranks for b in r for i in b) == list(range(6, 18))


def digests(state: dict[str, torch.Tensor]) -> dict[str, str]:
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest() for k, v in state.items()}


class RecordingClips(BlobClips):
    """BlobClips that keep the numbers of the clips they were asked for."""

    def __init__(self, seed: int, size: tuple[int, int]) -> None:
        super().__init__(seed, size)
        self.seen: list[int] = []

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        self.seen.append(int(index))
        return super().__getitem__(index)


class RecordingTrainer(Trainer):
    """Trainer of a torchrun test process: after `fit` it writes RUN/rank<r>.json with the clips its process
    trained on and digests of its weights before and after."""

    def fit(self, quiet: bool = False, stop_at: int | None = None) -> dict[str, float]:
        before = digests(self.model.state_dict())
        stats = super().fit(quiet, stop_at)
        assert isinstance(self.dataset, RecordingClips)
        record = {"clips": self.dataset.seen, "before": before, "after": digests(self.model.state_dict())}
        (self.out / f"rank{self.place.rank}.json").write_text(json.dumps(record))
        return stats


def rank_main(argv: list[str]) -> int:
    """One torchrun process: `llb train ARGV` on RecordingClips, with RecordingTrainer."""
    trainer_module.build_dataset = lambda cfg: RecordingClips(cfg.seed, cfg.data.size)
    trainer_module.Trainer = RecordingTrainer
    return llb_main(["train", *argv])


def torchrun(*argv: str) -> subprocess.CompletedProcess[str]:
    """This file as two torchrun processes on a free port (--standalone)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_processes_under_torchrun(tmp_path: Path) -> None:
    """`llb train` in two gloo processes: different clips, the same weights, one writer; then a resume."""
    run = tmp_path / "run"
    args = ["--size", "64x64", "--batch", "1", "--workers", "0", "--device", "cpu", "--threads", "1"]
    args += ["--log-every", "1", "--save-every", "0", "--set", "pretrained=false", "--set", "optim.warmup_steps=1"]
    res = torchrun(*args, "--steps", "2", "--out", str(run))
    # one bar (rank 0's) with steps done, elapsed<ETA, speed and loss; one summary line
    assert re.search(r"2/2 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(s/step|step/s), loss=[\d.]+", res.stderr), res.stderr
    assert res.stderr.count("0/2 [") == 1 and res.stdout.count("step 2 (2 processes): loss") == 1
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["clips"] for r in ranks] == [[0, 2], [1, 3]]  # each step, rank r takes clip 2 x step + r
    assert ranks[0]["before"] == ranks[1]["before"] != ranks[0]["after"] == ranks[1]["after"]
    _, saved, _ = read_checkpoint(run / "last" / "model.safetensors")
    assert digests(saved) == ranks[0]["after"]
    _, exported, meta = read_checkpoint(run / "lite-llb-synthetic.safetensors")
    assert digests(exported) == ranks[0]["after"] and json.loads(meta["info"])["processes"] == 2
    assert [r.split(",")[0] for r in (run / "log.csv").read_text().splitlines()] == ["step", "1", "2"]
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1 and (run / "curves.png").is_file()

    torchrun(*args, "--steps", "3", "--resume", str(run / "last"), "--quiet")
    assert [json.loads((run / f"rank{r}.json").read_text())["clips"] for r in (0, 1)] == [[4], [5]]  # stream goes on
    assert [r.split(",")[0] for r in (run / "log.csv").read_text().splitlines()] == ["step", "1", "2", "3"]
    assert json.loads((run / "last" / "state.json").read_text())["step"] == 3


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1:]))


def test_bf16_autocast_keeps_the_learner_in_float32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU that computes bf16 natively, a training step runs under bf16 autocast; the few-shot learner's
    target model stays float32 as at inference."""
    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: True)
    trainer = Trainer(tiny_config(tmp_path), dataset=BlobClips())
    with trainer.autocast():
        assert torch.is_autocast_enabled("cpu")
        feat = torch.randn(1, 1, trainer.model.cfg.feature_dim, 4, 6, dtype=torch.bfloat16)
        d = trainer.model.cfg.label.dim
        label = [torch.randn(1, 1, d, 4, 6, dtype=torch.bfloat16)]
        tau = trainer.model._learn(feat, label, [torch.ones_like(label[0])], 2)
    assert tau.dtype == torch.float32 and torch.isfinite(tau).all()
    stats = trainer.train_step(default_collate([BlobClips()[i] for i in range(2)]))
    assert math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])
    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: False)
    assert not torch.is_autocast_enabled("cpu")
    with trainer.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_stop_request_pauses_with_a_saved_state(tmp_path: Path) -> None:
    """What SIGTERM sets: the run stops after the current step, saves RUN/last and exports nothing."""
    trainer = Trainer(tiny_config(tmp_path), dataset=BlobClips())
    trainer.stop_requested = True
    trainer.fit(quiet=True)
    run = tmp_path / "run"
    assert trainer.step == 1 and json.loads((run / "last" / "state.json").read_text())["step"] == 1
    assert not list(run.glob("*.safetensors*"))


def test_holdout_validation_set(tmp_path: Path) -> None:
    root = tmp_path / "train"
    for name in ("one", "two"):
        for sub in ("JPEGImages", "Annotations"):
            (root / sub / name).mkdir(parents=True)
    (sets,) = validation_sets([], holdout=["two"], holdout_roots=[root])
    assert sets.name == "holdout" and [s.name for s in sets.sequences] == ["two"]
    with pytest.raises(ValueError, match=r"held-out sequence.*three"):
        validation_sets([], holdout=["three"], holdout_roots=[root])
