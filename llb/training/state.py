"""Resume states of the training runs, written without pickle: a folder with `state.json` (format, step,
config, optimiser and RNG scalars) beside safetensors files, replaced atomically, so that a resumed run
continues bit for bit (llb.training.trainer and llb.training.clicks)."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


@contextlib.contextmanager
def replacing(folder: Path) -> Iterator[Path]:
    """A fresh `<folder>.tmp` to write a state into; when the block ends without error it replaces `folder`, so
    an interrupted save never leaves a half-written state where a resume would read it."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def read_state(folder: str | Path, fmt: str, what: str) -> dict[str, Any]:
    """state.json of a resume folder (its config under "config"), checked to be of format `fmt`."""
    path = Path(folder) / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a resume folder (no state.json); pass RUN/last")
    state = json.loads(path.read_text())
    if state.get("format") != fmt:
        raise ValueError(f"{path} is not {what} ({fmt})")
    return state


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The generators' states of Python, numpy and torch (CPU and CUDA)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def rng_to_tensors(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """rng_state() -> tensors for safetensors and JSON for the rest (no pickle)."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    tensors = {"torch": state["torch"], "numpy": torch.from_numpy(keys.astype(np.int64))}
    tensors.update({f"cuda.{i}": s for i, s in enumerate(state["cuda"])})
    version, internal, gauss = state["python"]
    meta = {
        "cuda": len(state["cuda"]),
        "numpy": [name, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    return tensors, meta


def rng_from_tensors(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of rng_to_tensors."""
    name, pos, has_gauss, cached = meta["numpy"]
    version, internal, gauss = meta["python"]
    return {
        "torch": tensors["torch"],
        "cuda": [tensors[f"cuda.{i}"] for i in range(meta["cuda"])],
        "numpy": (name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached),
        "python": (version, tuple(internal), gauss),
    }


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state_dict -> tensors `state.<param>.<key>` and JSON for the rest (no pickle)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of flatten_optimizer."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}
