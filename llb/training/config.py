"""Training configs: dataclasses saved with every checkpoint, the two stages' presets, and command-line overrides.

Stage `synthetic` is the paper's first stage (synthetic videos from still images: here ECSSD, DUTS-TR and COCO
images, with frames of the training videos as extra backgrounds); stage `video` the second (real videos: here
the DAVIS 2016 train sequences; DAVIS 2017 train and YouTube-VOS roots plug in the same way). Any field can be
overridden as `dotted.name=value` (`optim.lr_decoder=5e-5`, `data.clip.max_gap=50`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llb.config import DEFAULT_CONFIG, DEFAULT_VARIANT
from llb.data.sampler import ClipConfig
from llb.data.synthetic import SyntheticConfig
from llb.settings import from_env

from .loss import LossConfig

STAGES = ("synthetic", "video")
MIB = 1 << 20
# Training sequences of the DAVIS 2016 train set held out of every run's clips (and synthetic backgrounds) and
# validated on instead: every 7th of the 30 by name, from the 4th.
HOLDOUT = ("breakdance-flare", "flamingo", "mallard-water", "scooter-gray")


def shared_data_dir() -> Path:
    """The project's shared data: $LLB_DATA, else $LLB_SHARED/data (../shared/data beside the repository)."""
    return from_env().data


@dataclass
class OptimConfig:
    """Adam with the official per-module learning rates, linear warm-up and step decay.

    A learning rate of 0 freezes that part. `lr_backbone` > 0 fine-tunes the backbone after its first
    stage (the official stage 2 trains ResNet layer2-4 at 2e-5); its batch norms stay frozen.
    """

    lr_decoder: float = 1e-4
    lr_label_generator: float = 1e-4
    lr_fusion: float = 1e-4
    lr_transduction: float = 2e-5
    lr_adapters: float = 2e-5
    lr_filter_reg: float = 5e-5
    lr_backbone: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 200
    decay_at: tuple[float, ...] = (0.6, 0.85)  # fractions of `steps` where the rates are multiplied by decay
    decay: float = 0.2
    grad_clip: float = 100.0  # max global gradient norm (about 20 at the start of training); 0: off


@dataclass
class DataConfig:
    """Where clips come from. Empty root lists mean the shared data (`shared_data_dir`)."""

    video_roots: tuple[str, ...] = ()
    static_roots: tuple[str, ...] = ()
    video_backgrounds: bool = True  # synthetic stage: also paste onto frames of the video roots
    synthetic_fraction: float = 0.0  # video stage: share of synthetic clips mixed in
    holdout: tuple[str, ...] = HOLDOUT  # sequences of the video roots never trained on (validated on)
    workers: int = 2
    clip: ClipConfig = field(default_factory=ClipConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    @property
    def size(self) -> tuple[int, int]:
        """Training size (H, W) of both sources."""
        return self.clip.size

    def set_size(self, size: tuple[int, int]) -> None:
        self.clip.size = self.synthetic.size = tuple(size)

    def set_frames(self, num_frames: int) -> None:
        self.clip.num_frames = self.synthetic.num_frames = num_frames


@dataclass
class TrainConfig:
    """One training run. `model`/`variant` name the network (llb.config.get_config)."""

    stage: str = "synthetic"
    model: str = DEFAULT_CONFIG
    variant: str = DEFAULT_VARIANT
    pretrained: bool = True  # ImageNet weights of the backbone and label encoder where they exist
    init: str | None = None  # start from this checkpoint (e.g. the synthetic stage's export)
    steps: int = 50_000
    batch: int = 4
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # CPU threads of the network (None: torch's default, one per core)
    amp: bool = True  # bf16 autocast where the device computes bf16 natively (recent GPUs, AMX/AVX512-BF16 CPUs)
    freeze_bn: bool = True  # every batch norm keeps its running statistics (official)
    compile: bool = False  # torch.compile the backbone and the decoder in place (llb bench-train measures it)
    num_init_iter: int | None = None  # learner steps on frame 0 (None: the model's, 5)
    num_update_iter: int | None = None  # learner steps per later frame (None: the model's, 2)
    out: str = "runs/train"
    log_every: int = 10
    save_every: int = 500
    val_every: int = 0  # steps between validations (0: none)
    val_roots: tuple[str, ...] = ()  # DAVIS-format roots scored as sets (e.g. davis2017-dev, extra-val)
    val_holdout: bool = True  # also score data.holdout (the held-out training sequences) as the set `holdout`
    val_at_start: bool = True  # a fresh run validates its starting network first (step 0)
    val_size: tuple[int, int] | None = None  # processing size (H, W) of validation (None: the engine's default)
    val_max_frames: int | None = None  # track and score only the first frames of each validation sequence
    export_shard_mib: int = 16
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config; unknown keys are ignored so that older runs keep loading."""
        return _from_dict(cls, data)


def stage_config(stage: str) -> TrainConfig:
    """Preset of a stage: `synthetic` (50K steps in the paper) or `video` (90K steps in the paper)."""
    if stage == "synthetic":
        return TrainConfig(stage="synthetic", steps=50_000)
    if stage == "video":
        return TrainConfig(stage="video", steps=90_000, out="runs/video")
    raise ValueError(f"unknown stage {stage!r}: choose {' or '.join(STAGES)}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _parse(text: str, hint: Any, current: Any) -> Any:
    """A command-line string as a value of the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", ""):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"{text!r} is not a boolean (true/false)")
        return text.lower() in ("1", "true", "yes")
    if origin is tuple:
        parts = [p for p in text.split(",") if p.strip()]
        elem = args[0] if args else str
        return tuple(_parse(p.strip(), elem, None) for p in parts)
    if hint in (int, float, str):
        return hint(text)
    return json.loads(text) if current is not None and not isinstance(current, str) else text


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Set fields from `dotted.name=value` strings (in place); returns `cfg`."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not NAME=VALUE, e.g. optim.lr_decoder=5e-5")
        name, text = item.split("=", 1)
        *path, last = name.strip().split(".")
        obj = cfg
        for part in path:
            if not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
                raise ValueError(f"override {name!r}: no field {part!r}")
            obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj) or last not in {f.name for f in dataclasses.fields(obj)}:
            raise ValueError(f"override {name!r}: no field {last!r}")
        hint = _hints(type(obj))[last]
        if dataclasses.is_dataclass(hint):
            raise ValueError(f"override {name!r} names a group; set one of its fields")
        try:
            setattr(obj, last, _parse(text.strip(), hint, getattr(obj, last)))
        except (ValueError, json.JSONDecodeError) as err:
            raise ValueError(f"override {name!r}: cannot read {text!r} ({err})") from err
    return cfg
