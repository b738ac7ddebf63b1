"""`llb bench-train`: seconds per training step and clips per second of the ways to train on this machine.

Each setup is a real `llb train` run (in its own processes, from the shipped checkpoint as `--init`, the
campaign's stage, size and batch), `--steps` long; its speed is the median of log.csv's `sec_per_step` after the
first `warmup` steps. Setups that run two processes at once (two runs side by side, or torchrun's two ranks)
report the clips per second of the machine: both processes together. The clip source's own cost (ms to make one
clip, in this process) is measured too, to size the DataLoader workers. Pause other jobs for a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..options import parse_size, training_size
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


def _command(setup: Setup, args: argparse.Namespace, out: Path) -> list[str]:
    batch = args.batch // setup.torchrun if setup.torchrun else args.batch
    train = ["train", "--stage", args.stage, "--variant", args.variant, "--size", args.size, "--batch", str(batch)]
    train += ["--steps", str(args.steps), "--log-every", "1", "--save-every", "0", "--workers", str(args.workers)]
    train += ["--threads", str(setup.threads), "--device", "cpu", "--quiet", "--out", str(out)]
    train += ["--set", "optim.warmup_steps=1", "--set", "freeze_bn=false", "--set", f"compile={setup.compile}"]
    if args.init:
        train += ["--init", args.init]
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


def run_setup(setup: Setup, args: argparse.Namespace, work: Path) -> dict[str, object]:
    """Run one setup to its end; its median s/step and the machine's clips per second."""
    outs = [work / f"{setup.name}-{i}" for i in range(setup.runs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(setup.threads)}
    tick = time.perf_counter()
    procs = [
        subprocess.Popen(_command(setup, args, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for out in outs
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"setup {setup.name} failed: {err.decode(errors='replace').strip()[-2000:]}")
    wall = time.perf_counter() - tick
    medians = [_median_step(out / "log.csv", args.warmup) for out in outs]
    sec = float(np.mean([m for m, _ in medians]))
    return {
        "sec_per_step": round(sec, 3),
        "clips_per_s": round(setup.runs * args.batch / sec, 3),
        "steps_timed": medians[0][1],
        "processes": max(setup.runs, setup.torchrun, 1),
        "threads_per_process": setup.threads,
        "bf16": setup.amp,
        "compile": setup.compile,
        "wall_s": round(wall, 1),
    }


def clip_cost(args: argparse.Namespace, clips: int = 16) -> dict[str, float]:
    """ms to make one clip of each stage's source in this process (decode, warp, augment)."""
    cost = {}
    for stage in ("synthetic", "video"):
        cfg = TrainConfig(stage=stage)
        cfg.data.set_size(parse_size(args.size))
        dataset = build_dataset(cfg)
        tick = time.perf_counter()
        for n in range(clips):
            dataset[n]
        cost[stage] = round(1000 * (time.perf_counter() - tick) / clips, 1)
    return cost


def _size_text(text: str) -> str:
    """A training size `WxH` checked as `llb train` checks it, kept as text for the runs' command lines."""
    training_size(text)
    return text


def add_bench_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--setup", action="append", choices=sorted(SETUPS), help="setups to time (repeatable; default all)")
    p.add_argument("--stage", choices=("synthetic", "video"), default="synthetic")
    p.add_argument("--variant", choices=("llb", "joint"), default="llb")
    p.add_argument("--init", default=None, help="checkpoint to start from (default: checkpoints/lite-VARIANT)")
    p.add_argument("--size", type=_size_text, default="224x128", help="training size WxH (the CPU campaign's)")
    p.add_argument("--batch", type=int, default=4, help="clips per step of one run")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per process")
    p.add_argument("--json", required=True, help="write the results here")


def run_bench_train(args: argparse.Namespace) -> int:
    args.init = args.init or f"checkpoints/lite-{args.variant}.safetensors"
    report: dict[str, object] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "stage": args.stage,
        "variant": args.variant,
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "ms_per_clip": clip_cost(args),
        "setups": {},
    }
    work = Path(tempfile.mkdtemp(prefix="llb-bench-train-"))
    try:
        for name in args.setup or list(SETUPS):
            result = run_setup(SETUPS[name], args, work)
            report["setups"][name] = result
            print(f"{name:26s} {result['sec_per_step']:6.2f} s/step  {result['clips_per_s']:5.2f} clips/s", flush=True)
            write_json(report, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.json}")
    return 0
