"""An int8 decoder for the `lite` network on the CPU (issue 24; opt-in through `InferenceConfig.int8`).

torch.ao's FX graph mode (x86 backend: static per-tensor activations, per-channel weights) quantizes the
decoder's levels layer3..layer1 whole, the layer4 level's parts (that level branches on `prev`, which FX cannot
trace), the projections and `project_conv1`. Each quantized part takes and returns float32, so the rest of the
decoder (the CABs, the upsamplings, the last convolution) runs as shipped, under bf16 autocast where the CPU has it.

Why FX, deprecated: torch 2.14 no longer ships the PT2E path (`torch.ao.quantization.quantize_pt2e` moved to
the separate `torchao` package), and PT2E's int8 graphs only run as int8 once torch.compile lowers them, which
costs minutes per load on a 2-core CPU (the bf16 decoder took 3 minutes to compile and ran no faster). FX's
deprecation notices are silenced where it is called, and no other warning.

Calibration is done once, when a Segmenter is built with `int8=True`: the network tracks the first
`CALIBRATION_FRAMES` frames of each clip that ships in the repository's examples/ (`CALIBRATION_CLIPS`, never a
clip that is evaluated) from an ellipse in the middle of the first frame, and the decoder inputs it sees set the
observers' ranges. Nothing is cached: the same weights and clips give the same int8 decoder at every load.

The EfficientNet-Lite2 backbone stays bf16: its TensorFlow "SAME" padding is shape-dependent control flow that FX
cannot trace, and its traceable blocks quantized one by one ran slower than bf16 with 22-31 % relative error on
the features. The TSE's concatenation of the reduced feature with the resized target encoding (and the CAB's of the
two pooled vectors) requantizes its inputs to one scale. Torch warns that this may cost accuracy; the validation
J&F on 11 sequences did not move (README, "CPU speed"), so that one warning is silenced for the process once an
int8 decoder is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..decoder import LEVELS, SegmentationDecoder
from ..settings import repo_root
from ..video.io import iter_frames

CALIBRATION_CLIPS = ("dog.mp4", "blocks.mp4", "juggle.mp4")  # in the repository's examples/
CALIBRATION_FRAMES = 5  # frames tracked per clip (the first one is the prompt: 4 decoder calls each)
INT8_CONFIGS = ("lite", "tiny")  # tiny: the test network, same decoder
DEPRECATED = r"(?s).*deprecated"  # torch.ao's notices that it is deprecated (the API, reduce_range, quint8)
REQUANTIZED_CAT = "All inputs of this cat operator must share the same quantization parameters"
DecoderInputs = tuple[Tensor, dict[str, Tensor], tuple[int, int]]  # E_tar, backbone features, image size


def check_int8(device: torch.device, config: str) -> None:
    """ValueError in the user's words where the int8 decoder cannot run: off the CPU, on a network other than
    `lite`, or on a torch build without the x86 int8 engine."""
    if device.type != "cpu":
        raise ValueError(
            f"the int8 decoder runs on the CPU only, not on {device.type}: leave --int8 (LLB_INT8) out there "
            "(the GPU runs bf16) or pass --device cpu"
        )
    if config not in INT8_CONFIGS:
        raise ValueError(
            f"the int8 decoder is for the lite network, not {config!r}: the paper configuration stays the "
            "official float network; leave --int8 (LLB_INT8) out or use --config lite"
        )
    if "x86" not in torch.backends.quantized.supported_engines:
        raise ValueError("this torch build has no x86 int8 engine (an x86-64 CPU is needed): leave --int8 out")


def calibration_clips() -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
    """Per shipped example clip: its first `CALIBRATION_FRAMES` frames (H, W, 3) uint8 and a first-frame mask
    (H, W) uint8, object 1 an ellipse in the middle covering a quarter of each side."""
    folder = repo_root() / "examples"
    for name in CALIBRATION_CLIPS:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"the int8 decoder calibrates on the shipped clip {path}, which is missing")
        frames = list(iter_frames(path, stop=CALIBRATION_FRAMES))
        h, w = frames[0].shape[:2]
        yy, xx = np.ogrid[:h, :w]
        inside = ((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 <= 1
        yield frames, inside.astype(np.uint8)


class Float32In(nn.Module):
    """A quantized part behind float32 inputs (the surrounding autocast hands it bf16)."""

    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        self.part = part

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.part(*(x.float() for x in inputs))


def part_names(decoder: SegmentationDecoder) -> list[str]:
    """The parts quantized: whole levels where FX can trace them (the coarsest level branches on `prev`)."""
    names = [f"levels.{LEVELS[0]}.{p}" for p in ("tse.reduce", "tse.transform", "rrb1", "rrb2")]
    names += [f"levels.{level}" for level in LEVELS[1:]]
    return [*names, *(f"proj.{level}" for level in decoder.proj), "project_conv1"]


def _run(decoder: nn.Module, inputs: Sequence[DecoderInputs]) -> None:
    """`decoder` in float32 (no autocast) on each captured input."""
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for e_tar, layers, size in inputs:
            decoder(e_tar.float(), {n: x.float() for n, x in layers.items()}, size)


def _first_inputs(decoder: nn.Module, names: Sequence[str], inputs: DecoderInputs) -> dict[str, tuple[Tensor, ...]]:
    """The inputs each named part receives on one decoder call (FX's example inputs)."""
    seen: dict[str, tuple[Tensor, ...]] = {}

    def keep(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], object], None]:
        return lambda module, args, out: seen.update({name: args})

    hooks = [decoder.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        _run(decoder, [inputs])
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def quantize_decoder(decoder: SegmentationDecoder, inputs: Sequence[DecoderInputs]) -> SegmentationDecoder:
    """`decoder` (float32 weights, batch norms folded; a copy the caller owns) turned int8 in place and returned,
    its observers calibrated on `inputs`: E_tar (B, D, h, w), the backbone features {layer1..4} (B, C_l, H_l, W_l)
    and the image size, as the decoder received them while tracking."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DEPRECATED)
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        q = decoder.eval()
        names = part_names(q)
        seen = _first_inputs(q, names, inputs[0])
        qmap = get_default_qconfig_mapping("x86")
        for name in names:
            q.set_submodule(name, prepare_fx(q.get_submodule(name), qmap, seen[name]))
        _run(q, inputs)
        for name in names:
            q.set_submodule(name, Float32In(convert_fx(q.get_submodule(name))))
    warnings.filterwarnings("ignore", message=REQUANTIZED_CAT)
    return q
