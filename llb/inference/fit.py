"""The few-shot learner's fit during tracking, with the target model's output carried along instead of recomputed.

`FewShotLearner.step` applies the target model to every memory frame three times a step: A tau (for the
residual), the gradient's adjoint, and A g (for the step length). The target model is linear in tau, so after
tau' = tau - alpha g its output is A tau' = A tau - alpha A g, from A g that the step already computed: one
convolution over the memory a step is saved. Across fits the output of the final tau on each memory frame is
kept with its entry, so a fit applies tau afresh only to the frames that joined since the last fit (from tau0 = 0
there is nothing to apply). Per fit of S steps on N frames that is 2 S N + (new frames) convolutions instead of
3 S N. The arithmetic is the same as `FewShotLearner.forward`; only float rounding differs (to about 1e-6
relative after a whole video's fits).

The gradient (`filter_gradient`, a convolution with the memory's frames as channels and 15x27 kernels) runs
as what it is, the weight gradient of the target model's convolution (`aten.convolution_backward`), whose
oneDNN kernel takes 31 instead of 58 ms at 20 memory frames (1 thread, float32, 512 x 15 x 27 features).
Training keeps `filter_gradient`, which autograd differentiates. Both convolutions run about a fifth faster on
features stored channels-last (`channels_last_features`): 28 -> 23 and 31 -> 25 ms at 20 memory frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..induction import FewShotLearner, apply_filter


def fit(
    learner: FewShotLearner,
    feat: Tensor,
    label: Tensor,
    weight: Tensor,
    iters: int,
    tau: Tensor | None,
    fitted: Sequence[Tensor | None],
    sample_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """`iters` steepest-descent steps from `tau` (zero when None) on N memory frames of B sequences.

    feat (N, B, C, h, w), label and weight (N, B, D, h, w), sample_weight (N, B) or None, tau (B, D, C, K, K);
    fitted: per frame, A tau (B, D, h, w) for the given tau, or None where it is not known (computed here).
    Returns the new tau and its output on every frame, A tau (N, B, D, h, w), to pass as `fitted` next time.
    """
    n, b = feat.shape[:2]
    if tau is None:
        tau = learner.initial_filter(b, feat)
        out = feat.new_zeros(n, b, learner.label_dim, *feat.shape[-2:])
    else:
        missing = [i for i, f in enumerate(fitted) if f is None]
        fresh = apply_filter(feat[missing], tau) if missing else None
        out = torch.stack([f if f is not None else fresh[missing.index(i)] for i, f in enumerate(fitted)])
    w = weight if sample_weight is None else weight * sample_weight.sqrt()[:, :, None, None, None]
    reg2 = learner.filter_reg.square()
    for _ in range(iters):
        data_res = w * (out - label)
        grad = weight_gradient(feat, w * data_res, learner.cfg.filter_size) + reg2 * tau
        a_grad = apply_filter(feat, grad)
        num = grad.square().sum(dim=(1, 2, 3, 4))
        den = (w * a_grad).square().sum(dim=(0, 2, 3, 4)) + reg2 * num
        alpha = num / den.clamp_min(learner.cfg.min_denominator)
        tau = tau - alpha[:, None, None, None, None] * grad
        out = out - alpha[None, :, None, None, None] * a_grad
    return tau, out


def weight_gradient(feat: Tensor, residual: Tensor, filter_size: int) -> Tensor:
    """`filter_gradient` (sum_n x_n correlated with residual_n) as the weight gradient of `apply_filter`'s
    convolution: feat (N, B, C, h, w), residual (N, B, D, h, w) -> (B, D, C, K, K). Not differentiable."""
    n, b, c, h, w = feat.shape
    d, pad = residual.shape[2], filter_size // 2
    shape = feat.new_empty(()).expand(b * d, c, filter_size, filter_size)  # the weight's shape, no data
    _, grad, _ = torch.ops.aten.convolution_backward(
        residual.reshape(n, b * d, h, w),
        feat.reshape(n, b * c, h, w),
        shape,
        None,
        (1, 1),
        (pad, pad),
        (1, 1),
        False,
        (0, 0),
        b,
        (False, True, False),
    )
    return grad.reshape(b, d, c, filter_size, filter_size)


def channels_last_features(feat: Tensor) -> Tensor:
    """The memory's learner features (N, B, C, h, w), any float dtype, as float32 stored channels-last per frame
    (strides of an (N, B*C, h, w) channels-last tensor): the layout in which oneDNN runs the fit's convolutions
    fastest; `apply_filter` and `weight_gradient` reshape it to that 4-D view without a copy."""
    n, b, c, h, w = feat.shape
    frames = feat.reshape(n, b * c, h, w).to(torch.float32, memory_format=torch.channels_last)
    return frames.view(n, b, c, h, w)
