"""`llb bench-clicks`: how long a click takes, for each click backend, on real frames.

A click backend does some work once per frame (`prepare`: the click model's backbone features and u2netp's
saliency) and then some per click (the model's head, or the fallback's local GrabCut). The benchmark clicks each
frame with the standard protocol (`llb.evaluation.clicks.run_protocol`, 10 clicks) and reports, per backend, the
ms per click (mean, median, p90, max: what a person waits after each click) and the ms per frame. The default
frames are the DAVIS 2017 dev first frames at 480p, the size the issue's goal (150 ms per click on 2 cores) names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..evaluation.clicks import MAX_CLICKS, ClickMethod, Sample, run_protocol


def bench_clicks(
    methods: dict[str, ClickMethod], samples: Sequence[Sample], max_clicks: int = MAX_CLICKS
) -> dict[str, dict]:
    """Per backend: ms per click (mean, median, p90, max), ms per frame (mean) and the counts behind them."""
    report: dict[str, dict] = {}
    for name, method in methods.items():
        clicks: list[float] = []
        frames: list[float] = []
        for sample in samples:
            result = run_protocol(method, sample, max_clicks)
            clicks += result.ms_per_click
            frames.append(result.ms_prepare)
        times = np.array(clicks)
        report[name] = {
            "backend": method.name,
            "ms_per_click_mean": round(float(times.mean()), 1),
            "ms_per_click_median": round(float(np.median(times)), 1),
            "ms_per_click_p90": round(float(np.percentile(times, 90)), 1),
            "ms_per_click_max": round(float(times.max()), 1),
            "ms_per_frame": round(float(np.mean(frames)), 1),
            "clicks": len(clicks),
            "frames": len(frames),
        }
    return report


def format_clicks_table(report: dict[str, dict]) -> str:
    """A markdown table of `bench_clicks`'s report, a row per backend (a `meta` entry is skipped)."""
    rows = [
        "| backend | ms/click mean | median | p90 | max | ms/frame (once) | clicks |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report.items():
        if name == "meta":
            continue
        rows.append(
            f"| {name} ({r['backend']}) | {r['ms_per_click_mean']:.0f} | {r['ms_per_click_median']:.0f} | "
            f"{r['ms_per_click_p90']:.0f} | {r['ms_per_click_max']:.0f} | {r['ms_per_frame']:.0f} | {r['clicks']} |"
        )
    return "\n".join(rows)
