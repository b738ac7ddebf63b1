"""What the UI shows, as plain values: the working frame with masks and clicks, the object legend, the
editor's value, brush strokes decoded into masks, and tables for the plots."""

from __future__ import annotations

import html
from typing import Any

import cv2
import numpy as np
import pandas as pd

from llb.video.masks import overlay

from .project import Project, colour
from .results import RunResult, disagreement, gate_means

ADD_COLOUR = "#22c55e"  # the brush that adds to the current object
ERASE_COLOUR = "#ef4444"  # the brush that erases from it


def working_view(project: Project) -> np.ndarray | None:
    """The active frame with every object's mask and the current object's clicks (green +, red -)."""
    if project.clip is None:
        return None
    frame = project.clip.frame(project.active)
    out = overlay(frame, project.labels(project.active))
    radius = max(3, round(min(frame.shape[:2]) / 80))
    for click in project.clicks(project.active):
        fill = (34, 197, 94) if click.positive else (239, 68, 68)
        cv2.circle(out, (click.x, click.y), radius + 1, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, (click.x, click.y), radius, fill, -1, cv2.LINE_AA)
    return out


def editor_value(project: Project) -> dict[str, Any] | None:
    """The brush canvas: the working view as background, no strokes yet."""
    view = working_view(project)
    return None if view is None else {"background": view, "layers": [], "composite": view}


def legend(project: Project) -> str:
    """HTML list of the objects in their colours, the current one marked."""
    if not project.objects:
        return "<p>No object yet: click the frame (a first object is created) or press <b>Add object</b>.</p>"
    items = []
    for object_id, name in sorted(project.objects.items()):
        mark = " &#9664; current" if object_id == project.current else ""
        swatch = f'<span style="display:inline-block;width:1em;height:1em;background:{colour(object_id)}"></span>'
        items.append(f"<li>{swatch} {object_id}: {html.escape(name)}{mark}</li>")  # names are text, not markup
    return f'<ul style="list-style:none;padding-left:0">{"".join(items)}</ul>'


def strokes(editor: dict[str, Any] | None, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Brush strokes of the editor as (add, erase) masks; None when nothing was painted."""
    layers = [np.asarray(layer) for layer in (editor or {}).get("layers") or [] if layer is not None]
    layers = [layer for layer in layers if layer.ndim == 3 and layer.shape[2] == 4 and layer.shape[:2] == shape]
    if not layers:
        return None
    add, erase = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    for layer in layers:
        painted = layer[..., 3] > 0
        greenish = layer[..., 1].astype(int) > layer[..., 0].astype(int)
        add |= painted & greenish
        erase |= painted & ~greenish
    return (add, erase) if (add | erase).any() else None


def disagreement_table(a: RunResult, b: RunResult) -> pd.DataFrame:
    return pd.DataFrame(disagreement(a, b), columns=["frame", "disagreement"])


def gate_table(result: RunResult | None) -> pd.DataFrame:
    rows = gate_means(result) if result is not None else []
    return pd.DataFrame(rows, columns=["frame", "branch", "gate"])


def colour_scale(width: int, height: int = 34) -> np.ndarray:
    """A (height, width, 3) RGB bar of the gate maps' colours (viridis) from 0 (left) to 1 (right), labelled
    0, 0.5 and 1: the key that goes under the heat maps."""
    ramp = np.linspace(0, 255, max(width - 20, 2)).astype(np.uint8)[None]
    bar = cv2.applyColorMap(np.repeat(ramp, height // 2, axis=0), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    out = np.full((height, width, 3), 255, np.uint8)
    out[: height // 2, 10 : 10 + bar.shape[1]] = bar
    for value in (0.0, 0.5, 1.0):
        x = 10 + round(value * (bar.shape[1] - 1))
        text = f"{value:g}"
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        x = min(max(0, x - tw // 2), width - tw)
        cv2.putText(out, text, (x, height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return out
