"""Int8 for the `lite` decoder on the CPU (issue 24): how fast it runs and how far its masks move, for the lead
to weigh against a validation J&F before anything ships. Not used by the engine.

torch.ao's FX graph mode (x86 backend, static per-tensor activations, per-channel weights; deprecated in torch
2.14 but present) quantizes the decoder's levels layer3..layer1 whole, the layer4 level's parts, the
projections and `project_conv1`; each quantized part takes and returns float32, so the rest of the decoder runs
as shipped under bf16 autocast. The levels' inputs of the first frames of a clip calibrate the observers.

    python scripts/int8_decoder.py [--frames 40] [--calibrate 8] [--threads 1]

Prints the decoder's CPU ms per frame in bf16 (as shipped) and in int8 on the same captured inputs, and the
IoU of the two crops' masks (logits > 0). The TSE's concatenation of the reduced feature with the resized
target encoding (and the CAB's of the two pooled vectors) requantizes its inputs to one scale, which torch warns
may cost accuracy: a validation J&F has to say. The EfficientNet-Lite2 backbone is not covered: its TensorFlow "SAME"
padding is shape-dependent control flow that FX cannot trace, and its traceable blocks quantized one by one
ran slower than bf16 with 22-31 % relative error on the features.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from llb.bench.clip import BenchClip, default_clip
from llb.checkpoint import load_model
from llb.decoder import LEVELS, SegmentationDecoder
from llb.inference.crop import CPU_SIZE, CropConfig
from llb.inference.session import InferenceConfig, Segmenter, inference_network

DecoderInputs = tuple[Tensor, dict[str, Tensor], tuple[int, int]]


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


def first_inputs(root: nn.Module, part: nn.Module, run: Callable[[nn.Module, int], None]) -> tuple[Tensor, ...]:
    """The inputs `part` of `root` receives on the first captured frame (FX's example inputs)."""
    seen: list[tuple[Tensor, ...]] = []
    hook = part.register_forward_hook(lambda m, args, out: seen.append(args))
    run(root, 1)
    hook.remove()
    return seen[0]


def quantize(
    decoder: SegmentationDecoder, run: Callable[[nn.Module, int], None], calibrate: int
) -> SegmentationDecoder:
    """An int8 copy of `decoder`; `run(copy, k)` runs the copy in float32 on k captured frames."""
    q = copy.deepcopy(decoder)
    qmap = get_default_qconfig_mapping("x86")
    names = part_names(q)
    for name in names:
        part = q.get_submodule(name)
        q.set_submodule(name, prepare_fx(part, qmap, first_inputs(q, part, run)))
    run(q, calibrate)
    for name in names:
        q.set_submodule(name, Float32In(convert_fx(q.get_submodule(name))))
    return q


def cpu_ms(decoder: nn.Module, inputs: list[DecoderInputs], repeats: int = 3) -> float:
    """Median CPU ms of one decoder call under bf16 autocast over the inputs, `repeats` times."""
    times = []
    for _ in range(repeats):
        for e_tar, layers, size in inputs:
            start = time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                decoder(e_tar, layers, size)
            times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=40, help="frames of the clip tracked to capture inputs")
    parser.add_argument("--calibrate", type=int, default=8, help="captured frames that calibrate the observers")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*(deprecated|share the same quantization parameters).*")
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86"
    cfg = InferenceConfig(crop=CropConfig(size=CPU_SIZE))
    seg = Segmenter.from_pretrained(None, config="lite", variant="llb", device="cpu", inference=cfg)
    captured: list[DecoderInputs] = []
    hook = seg.model.decoder.register_forward_hook(lambda m, a, out: captured.append(a))
    clip = BenchClip.open(default_clip())
    session = seg.start(clip.frames(args.frames))
    session.add_mask(0, clip.first_mask(1))
    with torch.inference_mode():
        for _ in session.propagate():
            pass
        hook.remove()
        float32 = inference_network(load_model(None, config="lite", variant="llb"), torch.device("cpu")).decoder
        held_out = captured[args.calibrate :]

        def run(decoder: nn.Module, k: int) -> None:
            for e_tar, layers, size in captured[:k]:
                decoder(e_tar.float(), {n: x.float() for n, x in layers.items()}, size)

        int8 = quantize(float32, run, args.calibrate)
        print(f"decoder CPU ms per frame ({args.threads} thread(s), {len(held_out)} frames):")
        print(f"  bf16 (shipped) {cpu_ms(seg.model.decoder, held_out):.1f}, int8 {cpu_ms(int8, held_out):.1f}")
        ious = []
        for e_tar, layers, size in held_out:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                a, b = seg.model.decoder(e_tar, layers, size) > 0, int8(e_tar, layers, size) > 0
            ious.append(float((a & b).sum() / (a | b).sum().clamp_min(1)))
        print(f"  crop masks, IoU int8 vs bf16: mean {statistics.mean(ious):.4f}, min {min(ious):.4f}")


if __name__ == "__main__":
    main()
