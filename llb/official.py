"""Importer for the official LLB and JOINT checkpoints (pytracking `.pth.tar`), without running pickled code.

`read_official_checkpoint` unpickles with an allow-list: tensor rebuild functions, storage types, dtypes,
`collections.OrderedDict` and plain containers. Every other class the file names (the pickled
`ltr.admin.model_constructor.NetConstructor`, the training settings and stats) becomes an inert placeholder that
swallows whatever state it is given; none of its code is imported or run.

`convert_state_dict` reads the configuration off the tensor shapes (LLB: ViTAE-6M label encoder on the
background-filtered frame and the AFM; JOINT: mask CNN and plain sum, D = 16 officially), renames every official
key to ours and accounts for every row: a tensor is either loaded or dropped with a named reason, and an unknown
key or a shape that our network does not have is an error. `import_official` writes the result as one of our
safetensors checkpoints.
"""

from __future__ import annotations

import collections
import pickle
import re
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import save_checkpoint
from .config import BackboneConfig, LabelConfig, ModelConfig, TransductionConfig
from .network import LLBNet

# Official keys that carry the configuration.
LABEL_D_KEY = "label_encoder.label_pred_tm.0.weight"
KEY_DIM_KEY = "transformer.encoder.self_attn.WK.weight"
ADAPTER_KEY = "target_model.feature_extractor.0.weight"
VITAE_FIRST_CONV = "label_encoder.label_backbone.layers.0.RC.PRM.convs.0.0.weight"
CNN_FIRST_CONV = "label_encoder.conv_block.0.weight"

SHARED_COPY = "transformer.decoder.self_attn."
SHARED_SOURCE = "transformer.encoder.self_attn."

DROP_RULES = (
    (r"^transformer\..*\.WV\.", "unused value projection (the official attention passes the values through)"),
    (r"^label_encoder\.label_backbone\.head\.", "unused classifier head of the ViTAE-6M"),
)

# (official prefix, our prefix); the first match wins.
PREFIX_RULES = (
    ("feature_extractor.", "backbone.net."),
    ("target_model.feature_extractor.0.", "learner_adapter."),
    ("target_model.filter_optimizer.residual_module.filter_reg", "learner.filter_reg"),
    ("transformer.feature_adjustor.0.", "transduction_adapter."),
    ("transformer.encoder.self_attn.WK.", "transduction.self_attn.key."),
    ("transformer.decoder.cross_attn.WK.", "transduction.cross_attn.key."),
    ("decoder.proj.", "decoder.proj."),
    ("decoder.project.conv1.", "decoder.project_conv1."),
    ("decoder.project.conv2.", "decoder.project_conv2."),
    ("label_encoder.label_backbone.", "label_generator.encoder."),
    ("label_encoder.prejector_tm.0.", "label_generator.induction_head.project.0."),
    ("label_encoder.prejector_tr.0.", "label_generator.transduction_head.project.0."),
    ("label_encoder.conv_block.0.", "label_generator.encoder.conv."),
    ("label_encoder.res1_tm.", "label_generator.induction_head.project.0."),
    ("label_encoder.res2_tm.", "label_generator.induction_head.project.1."),
    ("label_encoder.res1_tr.", "label_generator.transduction_head.project.0."),
    ("label_encoder.res2_tr.", "label_generator.transduction_head.project.1."),
    ("label_encoder.label_pred_tm.0.", "label_generator.induction_head.label.0."),
    ("label_encoder.label_pred_tr.0.", "label_generator.transduction_head.label.0."),
    ("label_encoder.samp_w_pred.", "label_generator.weight_head."),
)

DECODER_LEVEL = re.compile(r"^decoder\.(TSE|RRB1|RRB2|CAB)\.(layer[1-4])\.(.+)$")
DECODER_BLOCKS = {"TSE": "tse", "RRB1": "rrb1", "RRB2": "rrb2", "CAB": "cab"}
COMBINER = re.compile(r"^combiner\.(tm|tr)_([12])\.weight$")
COMBINER_GATES = {"tm": "gate_induction", "tr": "gate_transduction"}


class OfficialImportError(ValueError):
    """An official state dict that does not map onto our network."""


@dataclass
class ImportReport:
    """What the importer did: official -> our key of every loaded tensor, the reason for every dropped one,
    and the configuration facts read off the shapes."""

    config: ModelConfig
    loaded: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for a log or the command line: the facts, the counts and every dropped key by reason."""
        facts = ", ".join(f"{k}={v}" for k, v in self.facts.items())
        by_reason: dict[str, list[str]] = collections.defaultdict(list)
        for key, reason in self.dropped.items():
            by_reason[reason].append(key)
        lines = [f"{self.config.key}: {facts}", f"loaded {len(self.loaded)} tensors, dropped {len(self.dropped)}:"]
        for reason, keys in by_reason.items():
            lines.append(f"  {len(keys)} x {reason}:")
            lines += [f"    {key}" for key in keys]
        return "\n".join(lines)


def detect_config(official: dict[str, Tensor]) -> tuple[ModelConfig, dict[str, Any]]:
    """The configuration of an official state dict, from its tensor shapes, and the facts it rests on."""
    for key in (LABEL_D_KEY, KEY_DIM_KEY, ADAPTER_KEY):
        if key not in official:
            raise OfficialImportError(f"not an official LLB/JOINT state dict: {key} is missing")
    encoder = "transformer" if any(k.startswith("label_encoder.label_backbone.") for k in official) else "cnn"
    first_conv = VITAE_FIRST_CONV if encoder == "transformer" else CNN_FIRST_CONV
    if first_conv not in official:
        raise OfficialImportError(f"the {encoder} label encoder's first conv {first_conv} is missing")
    in_chans = official[first_conv].shape[1]
    if in_chans not in (1, 3):
        raise OfficialImportError(f"{first_conv} reads {in_chans} channels: expected 3 (image x mask) or 1 (mask)")
    label_input = "bff" if in_chans == 3 else "mask"
    fusion = "afm" if any(k.startswith("combiner.") for k in official) else "sum"
    label = official[LABEL_D_KEY]
    facts: dict[str, Any] = {
        "D": label.shape[0],
        "hidden": label.shape[1],
        "key_dim": official[KEY_DIM_KEY].shape[0],
        "feature_dim": official[ADAPTER_KEY].shape[0],
        "fusion": fusion,
        "label_encoder": encoder,
        "label_input": label_input,
    }
    if (fusion, encoder, label_input) == ("afm", "transformer", "bff"):
        variant = "llb"
    elif (fusion, encoder, label_input) == ("sum", "cnn", "mask"):
        variant = "joint"
    else:
        variant = f"ablation-{fusion}-{encoder}-{label_input}"
    cfg = ModelConfig(
        name="paper",
        variant=variant,
        backbone=BackboneConfig(pretrained=False),
        feature_dim=facts["feature_dim"],
        label=LabelConfig(input=label_input, encoder=encoder, dim=facts["D"], hidden=facts["hidden"], pretrained=False),
        transduction=TransductionConfig(key_dim=facts["key_dim"]),
        fusion=fusion,
    )
    facts["variant"] = variant
    return cfg, facts


def _reference_shapes(cfg: ModelConfig) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Shape and dtype of every entry of a freshly built network's state dict (built on the meta device)."""
    with torch.device("meta"):
        net = LLBNet(cfg)
    return {k: (v.shape, v.dtype) for k, v in net.state_dict().items()}


def _map_key(key: str) -> tuple[str, Callable[[Tensor], Tensor] | None] | None:
    """Our key for an official key, with a reshape where needed; None for a key no rule knows."""
    match = DECODER_LEVEL.match(key)
    if match:
        block, level, rest = match.groups()
        if block == "CAB":
            rest = rest.replace("convreluconv.", "mlp.", 1)
        return f"decoder.levels.{level}.{DECODER_BLOCKS[block]}.{rest}", None
    match = COMBINER.match(key)
    if match:
        branch, index = match.groups()
        return f"fusion.{COMBINER_GATES[branch]}.fc{index}.weight", lambda t: t.reshape(*t.shape, 1, 1)
    for prefix, ours in PREFIX_RULES:
        if key.startswith(prefix):
            return ours + key[len(prefix) :], None
    return None


def convert_state_dict(official: dict[str, Tensor]) -> tuple[ModelConfig, dict[str, Tensor], ImportReport]:
    """Official state dict -> (our config, our state dict, report). Every official entry is loaded or dropped
    with a reason; unknown keys, shape mismatches and keys our network lacks raise OfficialImportError."""
    cfg, facts = detect_config(official)
    report = ImportReport(config=cfg, facts=facts)
    reference = _reference_shapes(cfg)
    state: dict[str, Tensor] = {}
    unknown = []
    for key, value in official.items():
        if key.startswith(SHARED_COPY):
            source = SHARED_SOURCE + key[len(SHARED_COPY) :]
            if source not in official or not torch.equal(official[source], value):
                raise OfficialImportError(
                    f"{key} differs from {source}: the official self-attention is one shared module, stored twice"
                )
            report.dropped[key] = f"stored copy of the shared self-attention (equal to {SHARED_SOURCE}*)"
            continue
        reason = next((why for pattern, why in DROP_RULES if re.search(pattern, key)), None)
        if reason is not None:
            report.dropped[key] = reason
            continue
        mapped = _map_key(key)
        if mapped is None:
            unknown.append(key)
            continue
        ours, reshape = mapped
        if ours not in reference:
            raise OfficialImportError(f"{key} maps to {ours}, which the {cfg.key} network does not have")
        shape, dtype = reference[ours]
        tensor = reshape(value) if reshape is not None and value.dim() == 2 else value
        if tensor.shape != shape:
            raise OfficialImportError(
                f"shape mismatch for {key} -> {ours}: official {tuple(value.shape)}, ours {tuple(shape)}"
            )
        state[ours] = tensor.to(dtype)
        report.loaded[key] = ours
    if unknown:
        raise OfficialImportError(f"{len(unknown)} official keys that no rule knows: {unknown[:10]}")
    missing = [k for k in reference if k not in state]
    if missing:
        raise OfficialImportError(f"the official state dict lacks {len(missing)} of our tensors: {missing[:10]}")
    return cfg, state, report


class _Placeholder:
    """Stands in for any class outside the allow-list: accepts any arguments and state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        obj = super().__new__(cls)
        obj.__dict__["_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("_list", []).extend(values)


_TORCH_REBUILD = {
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
}
_PLAIN = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("torch", "Size"): torch.Size,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor rebuild functions, storage types, dtypes and plain containers; every
    other global becomes a `_Placeholder` subclass named after it, so no foreign code is imported or run."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in _TORCH_REBUILD:
            return getattr(torch._utils, name)
        if (module, name) in _PLAIN:
            return _PLAIN[(module, name)]
        value = vars(torch).get(name) if module == "torch" else None  # vars: no lazy submodule imports
        if isinstance(value, torch.dtype) or (isinstance(value, type) and name.endswith("Storage")):
            return value
        if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
            return getattr(torch.storage, name)
        return type(name, (_Placeholder,), {"__module__": f"placeholder:{module}"})


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


restricted_pickle = types.ModuleType("restricted_pickle", "pickle_module for torch.load: RestrictedUnpickler")
restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]


def _find_state_dict(obj: Any) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint: its `net`, `state_dict` or `model` entry, or the dict itself."""
    if not isinstance(obj, dict):
        raise OfficialImportError(f"the checkpoint holds a {type(obj).__name__}, not a dict")
    for key in ("net", "state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise OfficialImportError("no state dict (a dict of tensors under 'net', 'state_dict' or 'model') found")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_official_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a pytracking checkpoint (`.pth.tar`, zip or legacy format), read without running any
    pickled code; a `module.` prefix is stripped."""
    try:
        obj = torch.load(str(path), map_location="cpu", pickle_module=restricted_pickle, weights_only=False)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as err:
        raise OfficialImportError(f"cannot read {path} as a PyTorch checkpoint: {err}") from err
    return _find_state_dict(obj)


def import_official(path: str | Path, out: str | Path) -> ImportReport:
    """Convert the official checkpoint `path` into our checkpoint `out` (.safetensors); returns the report."""
    cfg, state, report = convert_state_dict(read_official_checkpoint(path))
    with torch.device("meta"):  # no random initialisation: every saved tensor comes from `state`
        model = LLBNet(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    info = {"source": "official", "file": Path(path).name, **report.facts}
    save_checkpoint(model, out, trained=True, info=info)
    return report
