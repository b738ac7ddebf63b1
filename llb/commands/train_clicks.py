"""`llb train-clicks`: the options of a click-model training run (llb.training.clicks); this module resolves
them into the run's config, calls the trainer and prints."""

from __future__ import annotations

import argparse
from pathlib import Path

from llb.interactive.click_checkpoint import KEY
from llb.training.clicks import ClickTrainer, cache_features, click_config
from llb.training.config import apply_overrides


def add_train_clicks_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 2000)")
    p.add_argument("--out", default=None, help="run folder (default runs/clicks)")
    p.add_argument("--resume", default=None, help="continue a run from its RUN/last folder")
    p.add_argument("--cache", default=None, help="feature cache folder (default runs/click-cache)")
    p.add_argument("--cache-only", action="store_true", help="build the feature cache and exit")
    p.add_argument("--cache-part", default="0/1", help="PART/PARTS: cache every PARTS-th image (parallel workers)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train_clicks(args: argparse.Namespace) -> int:
    """`llb train-clicks`: cache the features, then train (resuming where asked) and export."""
    cfg = click_config(args.resume)
    for name, value in (("steps", args.steps), ("out", args.out)):
        if value is not None:
            setattr(cfg, name, value)
    if args.cache:
        cfg.data.cache = args.cache
    apply_overrides(cfg, args.set)  # type: ignore[arg-type]
    if args.print_config:
        print(cfg.to_json())
        return 0
    if args.cache_only:
        part, parts = (int(v) for v in args.cache_part.split("/"))
        print(f"cached {cache_features(cfg, part, parts, args.quiet)} images in {cfg.data.cache}")
        return 0
    trainer = ClickTrainer(cfg)
    if args.resume:
        trainer.load_state(Path(args.resume))
    stats = trainer.fit(quiet=args.quiet)
    loss = f"loss {stats['loss']:.3f}" if stats else "no step left to run"
    print(f"step {trainer.step}: {loss}; exported {trainer.out / KEY}.safetensors")
    return 0
