"""`llb train`: the options of a training run (llb.training.trainer); this module resolves them into the run's
config, calls the trainer and prints."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from llb.config import ABLATIONS, CONFIGS
from llb.data import preview_grid
from llb.inference.session import resolve_device
from llb.training import trainer as training
from llb.training.config import STAGES, TrainConfig, apply_overrides, stage_config
from llb.training.distributed import Distributed, process_group
from llb.training.monitor import plot_curves
from llb.training.trainer import build_dataset, resumed_config

from .options import training_size


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `llb train`. Options left out keep the stage preset's value (or the resumed run's)."""
    p.add_argument(
        "--stage", choices=STAGES, default=None, help="synthetic (still images) or video (default synthetic)"
    )
    p.add_argument("--config", choices=sorted(CONFIGS), default=None, help="network configuration (default lite)")
    p.add_argument(
        "--variant",
        choices=ABLATIONS,
        default=None,
        help="llb, the JOINT-style baseline joint, or an ablation row of the paper (llb-1 .. llb-4; default llb)",
    )
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps (paper: 50K synthetic, 90K video)")
    p.add_argument(
        "--batch", type=int, default=None, help="clips per step and process (default 4; paper 32 over all processes)"
    )
    p.add_argument(
        "--size", type=training_size, default=None, help="training crop WxH, multiples of 16 (default 432x240)"
    )
    p.add_argument("--frames", type=int, default=None, help="frames per clip Q (default 4)")
    p.add_argument("--max-gap", type=int, default=None, help="the clip's frames lie within this many frames")
    p.add_argument("--out", default=None, help="run folder: config.json, logs, tb/, curves.png, last/, the export")
    p.add_argument("--resume", default=None, help="continue a run from its RUN/last folder")
    p.add_argument("--init", default=None, help="start from a checkpoint (e.g. the synthetic stage's export)")
    p.add_argument("--video-root", action="append", default=None, help="DAVIS/YouTube-VOS root (repeatable)")
    p.add_argument("--static-root", action="append", default=None, help="still-image set for synthetic clips")
    p.add_argument(
        "--val-root",
        action="append",
        default=None,
        help="DAVIS-format root validated on as one set (repeatable); the held-out training sequences are a set too",
    )
    p.add_argument(
        "--val-size", type=training_size, default=None, help="validation processing size WxH (engine default)"
    )
    p.add_argument("--val-every", type=int, default=None, help="steps between validations (0: none)")
    p.add_argument("--val-max-frames", type=int, default=None, help="validate on each sequence's first frames")
    p.add_argument("--save-every", type=int, default=None, help="steps between resume states (default 500)")
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="pause at this step: save RUN/last and exit (SIGTERM pauses after the current step too)",
    )
    p.add_argument("--log-every", type=int, default=None, help="steps between log.csv rows (default 10)")
    p.add_argument("--seed", type=int, default=None, help="seed of the weights and of the clip stream")
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default 2)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the network (default: all cores)")
    p.add_argument("--no-amp", action="store_true", help="float32 throughout (no bf16 autocast)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. optim.lr_decoder=5e-5 (repeatable)",
    )
    p.add_argument(
        "--preview-data",
        metavar="OUT.png",
        default=None,
        help="write a grid of training clips with their masks and exit",
    )
    p.add_argument("--preview-clips", type=int, default=8, help="clips in the preview grid")
    p.add_argument(
        "--plot-curves",
        metavar="OUT.png",
        default=None,
        help="draw the loss and validation curves of the run folder (--out, or --resume's run) and exit",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the stage preset (or the resumed run's), then the given options, then --set."""
    if args.resume:
        cfg = resumed_config(args.resume)
        if args.stage and args.stage != cfg.stage:
            raise ValueError(f"--resume {args.resume} is a {cfg.stage} run; use --init to start a new stage")
    else:
        cfg = stage_config(args.stage or "synthetic")
    simple = {
        "config": "model",
        "variant": "variant",
        "steps": "steps",
        "batch": "batch",
        "out": "out",
        "init": "init",
        "seed": "seed",
        "device": "device",
        "threads": "threads",
        "val_every": "val_every",
        "val_max_frames": "val_max_frames",
        "save_every": "save_every",
        "log_every": "log_every",
    }
    for arg, name in simple.items():
        value = getattr(args, arg)
        if value is not None:
            setattr(cfg, name, value)
    if args.size is not None:
        cfg.data.set_size(args.size)
    if args.frames is not None:
        cfg.data.set_frames(args.frames)
    if args.max_gap is not None:
        cfg.data.clip.max_gap = args.max_gap
    if args.video_root:
        cfg.data.video_roots = tuple(args.video_root)
    if args.static_root:
        cfg.data.static_roots = tuple(args.static_root)
    if args.workers is not None:
        cfg.data.workers = args.workers
    if args.val_root:
        cfg.val_roots = tuple(args.val_root)
    if args.val_size is not None:
        cfg.val_size = args.val_size
    if args.no_amp:
        cfg.amp = False
    apply_overrides(cfg, args.set)
    if args.resume and args.out is None:
        cfg.out = str(Path(args.resume).parent)
    return cfg


def run_train(args: argparse.Namespace) -> int:
    """`llb train`: preview the data, print the config, draw a run's curves, or train (resuming where asked),
    in one process or in each of the processes torchrun started."""
    cfg = config_from_args(args)
    if args.print_config:
        print(cfg.to_json())
        return 0
    if args.preview_data:
        dataset = build_dataset(cfg)
        preview_grid([dataset[i] for i in range(args.preview_clips)], args.preview_data)
        print(f"wrote {args.preview_clips} {cfg.stage} clips to {args.preview_data}")
        return 0
    if args.plot_curves:
        print(f"wrote the curves of {cfg.out} to {plot_curves(cfg.out, args.plot_curves)}")
        return 0
    with process_group(resolve_device(cfg.device)) as place:
        return train(cfg, args, place)


def train(cfg: TrainConfig, args: argparse.Namespace, place: Distributed) -> int:
    """Train in this process (rank 0 validates and reports)."""
    trainer = training.open_run(cfg, place, args.resume)
    if trainer.step >= cfg.steps:
        if place.is_main:
            print(f"llb train: the run is already at step {trainer.step} of {cfg.steps}; raise --steps to go on")
        return 0
    if not place.enabled:
        signal.signal(signal.SIGTERM, lambda *_: setattr(trainer, "stop_requested", True))
    stats = trainer.fit(quiet=args.quiet, stop_at=args.stop_at)
    if place.is_main:
        processes = f" ({place.world} processes)" if place.enabled else ""
        print(f"step {trainer.step}{processes}: loss {stats.get('loss', float('nan')):.3f}; run folder {trainer.out}")
    return 0
