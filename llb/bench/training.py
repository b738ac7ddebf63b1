"""`llb bench-train`: seconds per training step and clips per second of the ways to train on this machine.

Each setup is a real `llb train` run (in its own processes, from the shipped checkpoint as `--init`, the
campaign's stage, size and batch), `--steps` long; its speed is the median of log.csv's `sec_per_step` after the
first `warmup` steps. Setups that run two processes at once (two runs side by side, or torchrun's two ranks)
report the clips per second of the machine: both processes together. The clip source's own cost (ms to make one
clip, in this process) is measured too, to size the DataLoader workers. Pause other jobs for a quiet machine.
"""

from __future__ import annotations

import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..training.config import TrainConfig
from ..training.trainer import build_dataset
from .report import write_json


@dataclass(frozen=True)
class Setup:
    """One way to train: threads and precision of each process, processes side by side or under torchrun."""

    name: str
    threads: int
    amp: bool = True
    runs: int = 1  # independent runs started at once (each with `batch` clips a step)
    torchrun: int = 0  # ranks of one run under torchrun (each with batch / ranks clips a step)
    compile: bool = False


@dataclass(frozen=True)
class TrainPlan:
    """What every setup runs: the stage and variant, the training size (H, W), the clips a step of one run, the
    steps and how many of the first are left out of the median, DataLoader workers, the checkpoint to start from."""

    stage: str
    variant: str
    size: tuple[int, int]
    batch: int
    steps: int
    warmup: int
    workers: int
    init: str | None  # None: start from scratch

    @property
    def size_text(self) -> str:
        """The size as `llb train --size` takes it: WxH."""
        return f"{self.size[1]}x{self.size[0]}"


SETUPS = {
    s.name: s
    for s in (
        Setup("fp32-2threads", 2, amp=False),
        Setup("bf16-2threads", 2),
        Setup("bf16-1thread", 1),
        Setup("bf16-2runs-1thread", 1, runs=2),
        Setup("bf16-torchrun-2x1thread", 1, torchrun=2),
        Setup("bf16-2threads-compile", 2, compile=True),
    )
}


def _command(setup: Setup, plan: TrainPlan, out: Path) -> list[str]:
    """The `llb train` command line of one process of `setup`."""
    batch = plan.batch // setup.torchrun if setup.torchrun else plan.batch
    train = ["train", "--stage", plan.stage, "--variant", plan.variant, "--size", plan.size_text]
    train += ["--batch", str(batch), "--steps", str(plan.steps), "--log-every", "1", "--save-every", "0"]
    train += ["--workers", str(plan.workers)]
    train += ["--threads", str(setup.threads), "--device", "cpu", "--quiet", "--out", str(out)]
    train += ["--set", "optim.warmup_steps=1", "--set", "freeze_bn=false", "--set", f"compile={setup.compile}"]
    if plan.init:
        train += ["--init", plan.init]
    if not setup.amp:
        train.append("--no-amp")
    llb = ["-m", "llb", *train]
    if setup.torchrun:
        ranks = str(setup.torchrun)
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", ranks, *llb]
    return [sys.executable, *llb]


def _median_step(log: Path, warmup: int) -> tuple[float, int]:
    with log.open(newline="") as f:
        rows = [float(r["sec_per_step"]) for r in csv.DictReader(f)][warmup:]
    if not rows:
        raise ValueError(f"{log}: no step after the {warmup} warm-up steps; raise --steps")
    return float(np.median(rows)), len(rows)


def run_setup(setup: Setup, plan: TrainPlan, work: Path) -> dict[str, object]:
    """Run one setup to its end; its median s/step and the machine's clips per second."""
    outs = [work / f"{setup.name}-{i}" for i in range(setup.runs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(setup.threads)}
    tick = time.perf_counter()
    procs = [
        subprocess.Popen(_command(setup, plan, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for out in outs
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"setup {setup.name} failed: {err.decode(errors='replace').strip()[-2000:]}")
    wall = time.perf_counter() - tick
    medians = [_median_step(out / "log.csv", plan.warmup) for out in outs]
    sec = float(np.mean([m for m, _ in medians]))
    return {
        "sec_per_step": round(sec, 3),
        "clips_per_s": round(setup.runs * plan.batch / sec, 3),
        "steps_timed": medians[0][1],
        "processes": max(setup.runs, setup.torchrun, 1),
        "threads_per_process": setup.threads,
        "bf16": setup.amp,
        "compile": setup.compile,
        "wall_s": round(wall, 1),
    }


def clip_cost(size: tuple[int, int], clips: int = 16) -> dict[str, float]:
    """ms to make one clip of each stage's source in this process (decode, warp, augment)."""
    cost = {}
    for stage in ("synthetic", "video"):
        cfg = TrainConfig(stage=stage)
        cfg.data.set_size(size)
        dataset = build_dataset(cfg)
        tick = time.perf_counter()
        for n in range(clips):
            dataset[n]
        cost[stage] = round(1000 * (time.perf_counter() - tick) / clips, 1)
    return cost


def bench_train(
    plan: TrainPlan, setups: Sequence[str], json_path: str | Path, log: Callable[[str], None] = print
) -> dict[str, object]:
    """Time each named setup in turn; the report (machine, plan, clip cost, per-setup figures) is rewritten to
    `json_path` after every setup, so an interrupted run keeps what it measured, and each result is logged."""
    report: dict[str, object] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "stage": plan.stage,
        "variant": plan.variant,
        "size": plan.size_text,
        "batch": plan.batch,
        "steps": plan.steps,
        "warmup": plan.warmup,
        "workers": plan.workers,
        "ms_per_clip": clip_cost(plan.size),
    }
    timed: dict[str, object] = {}
    report["setups"] = timed
    work = Path(tempfile.mkdtemp(prefix="llb-bench-train-"))
    try:
        for name in setups:
            result = run_setup(SETUPS[name], plan, work)
            timed[name] = result
            log(f"{name:26s} {result['sec_per_step']:6.2f} s/step  {result['clips_per_s']:5.2f} clips/s")
            write_json(report, json_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report
