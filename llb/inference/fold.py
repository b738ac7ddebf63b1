"""Batch norms folded into the convolutions before them, for inference.

In eval mode a batch norm is an affine map per channel, so `bn(conv(x))` equals one convolution with scaled
weights and a shifted bias (`torch.nn.utils.fusion.fuse_conv_bn_weights`); the output is the same up to float
rounding and the batch norm's pass over the feature map is gone. On the 2-core CPU (1 thread, bf16 autocast,
432x240, under load, medians) folding EfficientNet-Lite2's 63 pairs took the backbone alone from 42.5 to
34.3 CPU ms, and in `llb bench` (6 interleaved runs) the backbone stage from 54.0 to 46.8 CPU ms a frame and
the label generator's from 7.1 to 5.5.

Under bf16 autocast every convolution casts its float32 weight to bf16 at each call (autocast's cache lasts one
`with` block, and only for weights that need gradients), about 11 MB of casts a frame for the lite network, most
in the decoder; `cast_weights` stores them in bf16 once, which gives the same bits (the same rounding) without
the casts: the decoder alone 4-6 ms faster (of 115-130 CPU ms, 1 thread, under load).

A pair is a `Conv2d` and the `BatchNorm2d` registered right after it in the same parent with as many
channels: how timm's EfficientNet and ResNet and this package's decoder are written, each such conv's output
going to that batch norm alone. timm's `BatchNormAct2d` is a batch norm followed by dropout and an activation;
those two stay in its place.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def cast_weights(module: nn.Module, dtype: torch.dtype, skip: tuple[nn.Module, ...] = ()) -> int:
    """Store the weights and biases of every `Conv2d` and `Linear` under `module` (except those in `skip`) in
    `dtype`, in place; returns how many layers were cast. For a network that only ever runs under autocast to
    `dtype`, where those layers compute in `dtype` anyway: the same outputs, without a cast per call. Layers
    whose weights are read outside autocast belong in `skip`."""
    skipped = {id(m) for m in skip}
    layers = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear) and id(m) not in skipped]
    for layer in layers:
        layer.to(dtype)
    return len(layers)


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str, str]]:
    """(parent, conv, batch norm) names of every foldable pair under `module`; parent "" is `module` itself."""
    pairs = []
    for parent_name, parent in module.named_modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in pairwise(children):
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and conv.out_channels == bn.num_features
            ):
                pairs.append((parent_name, conv_name, bn_name))
    return pairs


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of `bn` once folded: timm's BatchNormAct2d keeps its dropout and activation."""
    drop, act = getattr(bn, "drop", nn.Identity()), getattr(bn, "act", nn.Identity())
    if isinstance(drop, nn.Identity):
        return act
    return nn.Sequential(drop, act)


@torch.no_grad()
def fold_batch_norms(module: nn.Module) -> int:
    """Fold every conv + batch norm pair under `module` (`conv_bn_pairs`) into its convolution, in place, and
    return how many were folded. Same function as `module.eval()` up to float rounding; the batch norms are
    gone, so this is for inference only: fold a copy of a network that is still trained."""
    pairs = conv_bn_pairs(module)
    for parent_name, conv_name, bn_name in pairs:
        parent = module.get_submodule(parent_name)
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        setattr(parent, bn_name, _after_norm(bn))
    return len(pairs)
