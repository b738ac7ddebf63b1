"""`llb bench-train`: the options of a training-speed benchmark; llb.bench.training runs the setups, this
module prints each result as it comes and where the JSON went."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace

from llb.bench.training import SETUPS, TrainPlan, bench_train

from .options import training_size


def add_bench_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--setup", action="append", choices=sorted(SETUPS), help="setups to time (repeatable; default all)")
    p.add_argument("--stage", choices=("synthetic", "video"), default="synthetic")
    p.add_argument("--variant", choices=("llb", "joint"), default="llb")
    p.add_argument("--init", default=None, help="checkpoint to start from (default: checkpoints/lite-VARIANT)")
    p.add_argument("--size", type=training_size, default="224x128", help="training size WxH (the CPU campaign's)")
    p.add_argument("--batch", type=int, default=4, help="clips per step of one run")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per process")
    p.add_argument("--json", required=True, help="write the results here")


def run_bench_train(args: argparse.Namespace) -> int:
    """`llb bench-train`: every setup asked for (default all), one after the other."""
    plan = TrainPlan(**{f.name: getattr(args, f.name) for f in fields(TrainPlan)})  # the options of its fields
    plan = replace(plan, init=plan.init or f"checkpoints/lite-{plan.variant}.safetensors")
    bench_train(plan, args.setup or list(SETUPS), args.json, log=lambda line: print(line, flush=True))
    print(f"wrote {args.json}")
    return 0
