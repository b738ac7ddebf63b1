"""`llb check-official`: the options of a parity check (llb.parity) and its table, every stage's error in
data-flow order, with a PASS or FAIL verdict."""

from __future__ import annotations

import argparse
from pathlib import Path

from llb.parity import TOL, check_official, format_rows


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `llb check-official`."""
    parser.add_argument("--fixture", required=True, type=Path, help="parity fixture (.npz) of the official network")
    parser.add_argument(
        "--make-weights", type=Path, default=None, help="the fixture's weight rule (default: make_weights.py beside it)"
    )
    parser.add_argument(
        "--tsv",
        type=Path,
        default=None,
        help="layout table of the official state dict (default: llb_state_dict.tsv or joint_state_dict.tsv beside "
        "the fixture, after its variant)",
    )


def run_check(args: argparse.Namespace) -> int:
    """`llb check-official`: print every stage's error in data-flow order; 0 when all are within TOL, else 1."""
    result = check_official(args.fixture, args.make_weights, args.tsv)
    print(format_rows(result.rows))
    failed = [row for row in result.rows if not row.passed]
    timing = f"network pass {result.run_seconds:.1f} s, total {result.total_seconds:.1f} s"
    if failed:
        first = failed[0]
        print(
            f"FAIL: {len(failed)} of {len(result.rows)} arrays beyond {TOL:g}; first failure in data-flow order: "
            f"{first.name} ({first.note or f'{first.error:.3g}'}) [{timing}]"
        )
        return 1
    print(f"PASS: all {len(result.rows)} arrays within {TOL:g} [{timing}]")
    return 0
