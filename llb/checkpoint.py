"""Checkpoints: safetensors files holding the network's tensors with its config, and where to find them.

A checkpoint is `NAME.safetensors`, or shards `NAME-00001-of-0000K.safetensors` with `NAME.safetensors.index.json`
(the Hugging Face layout), each carrying the metadata `format`, `config` (JSON of ModelConfig) and `trained`.
Nothing is unpickled. Named checkpoints (`lite-llb`, ...) resolve from a local folder, then the Hugging Face
cache, then the Hub, and fail fast with a clear message offline.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import DEFAULT_CONFIG, DEFAULT_VARIANT, ModelConfig, get_config
from .network import LLBNet
from .settings import from_env

FORMAT = "llb-checkpoint/1"
UNTRAINED = "UNTRAINED NETWORK - NOT A RESULT"  # the stamp on every output of a network without trained weights
OMITTED_BACKBONE = "backbone."  # key prefix of a pretrained backbone left out of a compact checkpoint
LOCAL_DIRS = (from_env().checkpoints,)  # the repo's checkpoints/ (the working directory's when installed)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or of another network than asked for."""


def _index_path(path: Path) -> Path:
    return path.with_name(path.name + ".index.json")


def save_checkpoint(
    model: LLBNet,
    path: str | Path,
    *,
    trained: bool = True,
    info: dict | None = None,
    max_shard_bytes: int | None = None,
    half: bool = False,
    omit_pretrained: bool = False,
) -> list[Path]:
    """Write `model` (tensors + config) to `path` (.safetensors); with `max_shard_bytes`, as shards plus an
    index when it does not fit in one. `half` stores floating tensors as float16; `omit_pretrained` leaves out
    a frozen backbone whose weights ship in a package (the loader takes them from there). Returns the files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    omit = omit_pretrained and cfg.backbone.frozen and cfg.backbone.pretrained and cfg.backbone.name != "resnet50"
    meta = {
        "format": FORMAT,
        "config": cfg.to_json(),
        "trained": "true" if trained else "false",
        "info": json.dumps(info or {}, sort_keys=True),
        "omitted": OMITTED_BACKBONE if omit else "",
    }
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
        if not (omit and k.startswith(OMITTED_BACKBONE))
    }
    return write_tensors(state, path, meta, max_shard_bytes)


def write_tensors(
    state: dict[str, torch.Tensor], path: Path, meta: dict[str, str], max_shard_bytes: int | None
) -> list[Path]:
    """`state` as one safetensors file, or as parts of at most `max_shard_bytes` plus an index (the Hugging Face
    layout: `<stem>-0000i-of-0000n.safetensors` and `<name>.index.json`); every part carries `meta`."""
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
    index = {"metadata": meta, "weight_map": weight_map}
    _index_path(path).write_text(json.dumps(index, indent=1, sort_keys=True))
    return [*files, _index_path(path)]


def read_tensors(path: str | Path, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, or of the parts its index names; CheckpointError (naming
    `what`) when it is missing or unreadable. The index's own path (`NAME.safetensors.index.json`) names the same
    checkpoint as `NAME.safetensors`."""
    path = Path(path)
    if path.name.endswith(".safetensors.index.json"):
        path = path.with_name(path.name.removesuffix(".index.json"))
    index = _index_path(path)
    if path.is_file():
        files = [path]
    elif index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [path.with_name(name) for name in sorted(set(weight_map.values()))]
    else:
        raise CheckpointError(f"{what} {path} does not exist: pass the path of a .safetensors {what}")
    state: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
                state.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open has no __iter__)
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:
            raise CheckpointError(f"cannot read {what} {file}: {err}. Is it a .safetensors file?") from err
    return state, meta


def _split(state: dict[str, torch.Tensor], max_bytes: int | None) -> Iterable[dict[str, torch.Tensor]]:
    shard: dict[str, torch.Tensor] = {}
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_bytes and shard and size + nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[key] = tensor
        size += nbytes
    yield shard


def read_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Config, tensors and metadata of a checkpoint file (or of the shards its index names)."""
    state, meta = read_tensors(path)
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(
            f"{path} is a safetensors file but not an LLB checkpoint (no '{FORMAT}' metadata); "
            "convert an official checkpoint with `llb import-official`"
        )
    return ModelConfig.from_json(meta["config"]), state, meta


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connect to the Hub, so that an offline machine fails in seconds rather than after retries."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def resolve_checkpoint(key: str) -> Path:
    """Find the trained checkpoint named `key` (e.g. `lite-llb`): $LLB_CHECKPOINT_DIR, the repo's
    checkpoints/, the Hugging Face cache, then the Hub (skipped when HF_HUB_OFFLINE is set)."""
    filename = f"{key}.safetensors"
    env = from_env()
    dirs = [env.checkpoint_dir] if env.checkpoint_dir else []
    for folder in [*dirs, *LOCAL_DIRS]:
        if (folder / filename).is_file() or _index_path(folder / filename).is_file():
            return folder / filename
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(env.hub_repo, filename, local_files_only=True))
    except (LocalEntryNotFoundError, OSError):
        pass
    if env.hub_offline:
        hub = "the Hub (skipped: HF_HUB_OFFLINE is set)"
    elif not _hub_reachable():
        hub = "the Hub (unreachable: no network)"
    else:
        try:
            return Path(hf_hub_download(env.hub_repo, filename))
        except Exception as err:  # any Hub failure means: not available here
            hub = f"the Hub ({env.hub_repo}: {type(err).__name__})"
    looked = ", ".join(str(d) for d in [*dirs, *LOCAL_DIRS])
    raise CheckpointError(
        f"no trained checkpoint '{filename}' found (looked in {looked}, the Hugging Face cache and {hub}). "
        "Pass --checkpoint FILE.safetensors (from `llb train` or `llb import-official`), "
        "or put the file in one of those folders / set LLB_CHECKPOINT_DIR."
    )


def load_model(
    checkpoint: str | Path | None = None,
    *,
    config: str | None = None,
    variant: str | None = None,
    device: str | torch.device = "cpu",
    allow_untrained: bool = False,
) -> LLBNet:
    """A network ready for inference (eval mode, on `device`).

    With `checkpoint` (a path), its config is used and must agree with `config`/`variant` where those are
    given. Without one, the trained default `config-variant` (default lite-llb) is resolved; if none is found
    and `allow_untrained`, an untrained network is built and flagged (`model.trained` is False).
    """
    want = get_config(config or DEFAULT_CONFIG, variant or DEFAULT_VARIANT)
    if checkpoint is None:
        try:
            checkpoint = resolve_checkpoint(want.key)
        except CheckpointError:
            if not allow_untrained:
                raise
            return LLBNet(want).eval().to(device)
    cfg, state, meta = read_checkpoint(checkpoint)
    for asked, have, what in ((config, cfg.name, "configuration"), (variant, cfg.variant, "variant")):
        if asked is not None and asked != have:
            raise CheckpointError(
                f"{checkpoint} holds a {cfg.key} network, but the {what} '{asked}' was asked for: "
                f"pass --config {cfg.name} --variant {cfg.variant}, or a checkpoint of {want.key}"
            )
    omitted = meta.get("omitted", "")
    cfg.backbone.pretrained = omitted == OMITTED_BACKBONE  # otherwise every tensor comes from the checkpoint
    cfg.label.pretrained = False
    model = LLBNet(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)  # copies convert float16 to float32
    missing = [k for k in missing if not (omitted and k.startswith(omitted))]
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint} does not fit the {cfg.key} network: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.trained = meta.get("trained") == "true"
    if not model.trained and not allow_untrained:
        raise CheckpointError(f"{checkpoint} is marked untrained; pass a trained checkpoint")
    return model.eval().to(device)
