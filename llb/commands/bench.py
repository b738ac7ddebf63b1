"""`llb bench`: the options of a benchmark run, a run of the engine (llb.bench) for every variant x size x
object count, and the table, JSON, plot and profiles it prints and writes."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from llb.bench import PROFILE_FRAMES, measure_profiled
from llb.bench.clip import BenchClip, default_clip
from llb.bench.measure import Run, measure
from llb.bench.peers import PEERS, PeerUnavailable, run_peer
from llb.bench.report import build_report, draw_plot, format_table, run_label, write_json
from llb.config import VARIANTS
from llb.inference.session import resolve_device

from .options import add_model_args, build_segmenter, parse_size


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The model options of every command, with `--variant` and `--size` taking several values."""
    model = parser.add_argument_group("model", conflict_handler="resolve")  # a later option replaces an earlier
    add_model_args(model)  # type: ignore[arg-type]  # a group takes add_argument like a parser
    # several variants and sizes in one run, in place of the single-valued --variant and --crop-size
    model.add_argument(
        "--variant", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="variants to compare (default: both)"
    )
    model.add_argument(
        "--size",
        "--crop-size",
        dest="sizes",
        metavar="WxH",
        nargs="+",
        type=parse_size,
        default=None,
        help="processing sizes WxH (default: 832x480 on GPU, 432x240 on CPU)",
    )
    parser.add_argument("--clip", default=None, help="frame folder or video file (default: DAVIS 2017 blackswan)")
    parser.add_argument(
        "--mask", default=None, help="first-frame mask PNG (default: the DAVIS annotation or an ellipse)"
    )
    parser.add_argument(
        "--frames", type=int, nargs="+", default=[100], help="lengths to report; one run of the longest (default 100)"
    )
    parser.add_argument("--objects", type=int, nargs="+", default=[1], help="objects tracked, one run each (default 1)")
    parser.add_argument("--warmup", type=int, default=5, help="first frames left out of latency figures (default 5)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (and on CUDA the decoder)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the figures here as JSON")
    parser.add_argument("--plot", default=None, help="PNG of time and memory against length (default: beside --json)")
    parser.add_argument(
        "--profile",
        default=None,
        help=f"write torch.profiler tables of {PROFILE_FRAMES} frames after the warm-up of every run here (the "
        "profiler slows those runs down)",
    )
    parser.add_argument(
        "--sync-write",
        action="store_true",
        help="write the PNGs and the overlay video in the loop, not on the writer's background thread (the "
        "'encode' stage then holds their whole cost)",
    )
    parser.add_argument(
        "--peers",
        nargs="+",
        choices=PEERS,
        default=[],
        help="also time these engines on the same frames (one object, random weights; skipped with a message "
        "where not installed)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_bench(args: argparse.Namespace) -> int:
    """Run every variant x size x object count, print the table, write the JSON and the plot."""
    if min(args.frames) < 1 or min(args.objects) < 1 or args.warmup < 0:
        raise ValueError("--frames and --objects must be at least 1 and --warmup at least 0")
    if args.checkpoint and len(args.variant) > 1:
        raise ValueError("a --checkpoint holds one network: give the one --variant it holds")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    clip = BenchClip.open(args.clip or default_clip(), args.mask)
    sizes = args.sizes or [parse_size("832x480" if device.type == "cuda" else "432x240")]
    length = max(args.frames)
    runs: list[Run] = []
    profiles: list[str] = []
    for variant in args.variant:
        for size in sizes:
            seg = build_segmenter(argparse.Namespace(**{**vars(args), "variant": variant, "crop_size": size}))
            if args.compile:
                seg.compile()
            for objects in args.objects:
                if args.profile:
                    run, table = measure_profiled(
                        seg, clip, length, objects, variant, args.warmup, not args.quiet, args.sync_write
                    )
                    profiles.append(f"== {run_label(run)}: {PROFILE_FRAMES} frames after {args.warmup}\n{table}")
                else:
                    run = measure(
                        seg, clip, length, objects, variant, progress=not args.quiet, sync_write=args.sync_write
                    )
                runs.append(run)
            del seg
    meta = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "clip": str(clip.path),
        "clip_size": f"{clip.width}x{clip.height}",
        "schedule": args.schedule,
        "warmup": args.warmup,
        "compile": args.compile,
        "sync_write": args.sync_write,
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    peers = _peers(args, clip, length)
    if peers:
        meta["peers"] = peers
    report = build_report(runs, args.frames, args.warmup, meta)
    print(f"llb bench on {device} ({meta['threads']} CPU threads), clip {clip.path} ({meta['clip_size']}) looped")
    if not all(run.trained for run in runs):
        print("UNTRAINED weights: an untrained network does the same work as a trained one, so speed is the same")
    print(format_table(report))
    for peer in peers:
        print(
            f"peer {peer['peer']}: median {peer['ms_median']} ms/frame, p90 {peer['ms_p90']}, {peer['fps']} fps "
            f"({peer['frames']} frames, propagation only)"
        )
    plot = args.plot or (f"{args.json.removesuffix('.json')}.png" if args.json else None)
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if plot:
        draw_plot(runs, plot)
        print(f"wrote {plot}")
    if args.profile:
        Path(args.profile).parent.mkdir(parents=True, exist_ok=True)
        Path(args.profile).write_text("\n\n".join(profiles) + "\n")
        print(f"wrote {args.profile}")
    return 0


def _peers(args: argparse.Namespace, clip: BenchClip, length: int) -> list[dict[str, object]]:
    """The figures of every peer asked for that is installed; a message for each one that is not."""
    results = []
    for name in args.peers:
        try:
            results.append(run_peer(name, clip, length, args.warmup, bf16=not args.fp32))
        except PeerUnavailable as err:
            print(f"peer {name} skipped: {err}")
    return results
