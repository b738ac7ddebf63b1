"""Search-region cropping: where to look in the next frame, cropping it out, and pasting results back.

The target box comes from the soft mask's moments (centre = mean, size = 4 x standard deviation); masks of
fewer than `min_area` pixels keep the previous box, and the size may change by a bounded factor per frame.
The crop is `scale` times the box (in area, scale^2), with the aspect ratio of the processing size, shrunk so
it is never larger than the image in both dimensions, and shifted inside the frame (the official tracker's
rules). Boxes are (x0, y0, x1, y1) in continuous pixel coordinates, (K, 4) tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

OUTSIDE_LOGIT = -100.0  # score of pixels outside the search region (probability 0)
CPU_SIZE = (240, 432)  # half the paper's 480x832 keeps the CPU path interactive


@dataclass
class CropConfig:
    """Search-region rules; `size` is the processing size (H, W) every crop is resized to."""

    size: tuple[int, int] = (480, 832)
    scale: float = 5.0
    min_area: float = 100.0
    max_shrink: float = 0.95
    max_grow: float = 1.1


def engine_crop_size(device: torch.device) -> tuple[int, int]:
    """The processing size (H, W) the engine uses by default on `device`: the paper's on CUDA, half on the CPU."""
    return CropConfig().size if device.type == "cuda" else CPU_SIZE


def mask_box(probs: Tensor) -> tuple[Tensor, Tensor]:
    """Target box from soft masks (K, H, W): centre (K, 2) as (x, y) and size (K, 2) as (w, h), 4 x std; in
    float64 for float64 masks (the training sampler's), else float32."""
    h, w = probs.shape[-2:]
    p = probs if probs.dtype == torch.float64 else probs.float()
    ys = torch.arange(h, device=probs.device, dtype=p.dtype) + 0.5
    xs = torch.arange(w, device=probs.device, dtype=p.dtype) + 0.5
    mass = p.sum(dim=(1, 2)).clamp_min(1e-6)
    px, py = p.sum(dim=1), p.sum(dim=2)  # (K, W), (K, H)
    cx, cy = (px * xs).sum(1) / mass, (py * ys).sum(1) / mass
    vx = (px * (xs - cx[:, None]).square()).sum(1) / mass
    vy = (py * (ys - cy[:, None]).square()).sum(1) / mass
    size = 4 * torch.stack([vx, vy], dim=1).sqrt()
    return torch.stack([cx, cy], dim=1), size.clamp_min(1.0)


def update_box(probs: Tensor, prev_center: Tensor, prev_size: Tensor, cfg: CropConfig) -> tuple[Tensor, Tensor]:
    """New (centre, size) from this frame's masks (K, H, W); small masks keep the previous box, and the size
    changes by a factor within [max_shrink, max_grow] per frame."""
    center, size = mask_box(probs)
    ratio = (size / prev_size).clamp(cfg.max_shrink, cfg.max_grow)
    size = prev_size * ratio
    keep = ((probs > 0.5).sum(dim=(1, 2)) < cfg.min_area)[:, None]
    return torch.where(keep, prev_center, center), torch.where(keep, prev_size, size)


def search_region(center: Tensor, size: Tensor, image_hw: tuple[int, int], cfg: CropConfig) -> Tensor:
    """Crop boxes (K, 4) of `scale^2` times the target area with the processing aspect ratio, no larger than
    the image in both dimensions, shifted inside it."""
    img_h, img_w = image_hw
    out_h, out_w = cfg.size
    area = (size[:, 0] * size[:, 1]).clamp_min(1.0) * cfg.scale**2
    crop_w = (area * out_w / out_h).sqrt()
    crop_h = crop_w * out_h / out_w
    shrink = torch.minimum(torch.maximum(img_w / crop_w, img_h / crop_h), torch.ones_like(crop_w))
    crop_w, crop_h = crop_w * shrink, crop_h * shrink
    cx = _inside(center[:, 0], crop_w, img_w)
    cy = _inside(center[:, 1], crop_h, img_h)
    return torch.stack([cx - crop_w / 2, cy - crop_h / 2, cx + crop_w / 2, cy + crop_h / 2], dim=1)


def _inside(c: Tensor, extent: Tensor, limit: int) -> Tensor:
    """Shift centres so [c - extent/2, c + extent/2] lies in [0, limit]; centre it when it cannot fit."""
    lo, hi = extent / 2, limit - extent / 2
    return torch.where(extent >= limit, torch.full_like(c, limit / 2), torch.minimum(torch.maximum(c, lo), hi))


def _roi_taps(start: Tensor, end: Tensor, n_out: int, n_in: int) -> tuple[Tensor, Tensor]:
    """roi_align's sampling (aligned, spatial scale 1, adaptive sampling ratio) along one axis, for a box
    [start, end) (0-d float32) over n_in pixels to n_out bins: per bin, the pixels it reads and their weights
    (n_out, 2 x samples). Each sample's two bilinear taps are weighted by 1/samples, 0 outside [-1, n_in]."""
    roi_start, roi_end = start - 0.5, end - 0.5
    length = roi_end - roi_start
    bin_size = length / n_out
    samples = math.ceil(float(length / n_out))
    i = torch.arange(max(samples, 1), device=start.device, dtype=torch.float32)
    pos = (
        roi_start
        + torch.arange(n_out, device=start.device, dtype=torch.float32)[:, None] * bin_size
        + (i[None] + 0.5) * bin_size / max(samples, 1)
    )  # (n_out, samples)
    valid = ((pos >= -1) & (pos <= n_in)).float() / samples if samples else torch.zeros_like(pos)
    pos = pos.clamp(min=0)
    low = pos.floor()
    last = low >= n_in - 1
    low = torch.where(last, torch.full_like(low, n_in - 1), low)
    frac = torch.where(last, torch.zeros_like(pos), pos - low)
    index = torch.stack([low, torch.where(last, low, low + 1)], dim=-1).long().flatten(1)
    weight = torch.stack([(1 - frac) * valid, frac * valid], dim=-1).flatten(1)
    return index, weight


def crop_channels_last(images: Tensor, boxes: Tensor, size: tuple[int, int], index: Tensor | None = None) -> Tensor:
    """Crop K boxes out of channels-last images (N, H, W, C) of any dtype (a frame's uint8) and resize them to
    `size`: (K, C, h, w) float32 in channels-last memory; outside reads 0. Box k reads image `index[k]` (image 0
    for all when None).

    This is torchvision's roi_align (aligned, adaptive sampling ratio: it averages over the pixels each output
    sample covers, so large crops are not aliased), written out: its sampling is separable, each output pixel
    a weighted sum of rows, then of columns. Only the rows and columns a box reads are made float, once each,
    where roi_align reads a whole float copy of the image, and each pass is one weighted gather
    (`embedding_bag`), which never builds the gathered taps; equal to roi_align up to float rounding (tests).
    """
    img_h, img_w, chans = images.shape[1:]
    out_h, out_w = size
    out = []
    for k, box in enumerate(boxes.float()):
        image = images[0 if index is None else int(index[k])]
        rows, row_w = _roi_taps(box[1], box[3], out_h, img_h)
        cols, col_w = _roi_taps(box[0], box[2], out_w, img_w)
        r0, r1 = int(rows.min()), int(rows.max()) + 1
        c0, c1 = int(cols.min()), int(cols.max()) + 1
        table = image[r0:r1, c0:c1].reshape(r1 - r0, (c1 - c0) * chans).float()  # the rows it reads
        band = F.embedding_bag(rows - r0, table, mode="sum", per_sample_weights=row_w)  # (out_h, (c1 - c0) * C)
        band = band.view(out_h, c1 - c0, chans).transpose(0, 1).reshape(c1 - c0, out_h * chans)  # columns first
        picked = F.embedding_bag(cols - c0, band, mode="sum", per_sample_weights=col_w)  # (out_w, out_h * C)
        out.append(picked.view(out_w, out_h, chans))
    return torch.stack(out).permute(0, 3, 2, 1).contiguous(memory_format=torch.channels_last)


def _paste_taps(start: Tensor, end: Tensor, n_out: int, n_in: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Along one axis, for boxes [start, end) (K,) and n_out image pixels: which pixels lie in the box (K,
    n_out) bool, and grid_sample's bilinear taps (align_corners=False, border padding) of a crop of n_in
    samples: low and high index (K, n_out) and the high tap's weight (K, n_out)."""
    pos = torch.arange(n_out, device=start.device, dtype=torch.float32) + 0.5
    g = 2 * (pos[None] - start[:, None]) / (end - start)[:, None] - 1  # the normalised grid coordinate
    inside = g.abs() <= 1
    src = (((g + 1) * n_in - 1) / 2).clamp(0, n_in - 1)
    low = src.floor()
    return inside, low.long(), (low + 1).clamp(max=n_in - 1).long(), src - low


def paste(crops: Tensor, boxes: Tensor, image_hw: tuple[int, int], outside: float = OUTSIDE_LOGIT) -> Tensor:
    """Inverse of `crop`: maps (K, C, h, w) back to the image grid (K, C, H, W), `outside` beyond each box.

    The bilinear resampling of F.grid_sample (align_corners=False, border padding) along each axis in turn,
    computed on the rows and columns inside the boxes only; equal to it up to float rounding.
    """
    img_h, img_w = image_hw
    k, c, h, w = crops.shape
    b = boxes.float()
    in_x, x_lo, x_hi, fx = _paste_taps(b[:, 0], b[:, 2], img_w, w)
    in_y, y_lo, y_hi, fy = _paste_taps(b[:, 1], b[:, 3], img_h, h)
    out = crops.new_full((k, c, img_h, img_w), outside, dtype=torch.float32)
    for i in range(k):
        cols, rows = in_x[i].nonzero()[:, 0], in_y[i].nonzero()[:, 0]
        if not len(cols) or not len(rows):
            continue
        src = crops[i].float()  # (C, h, w); columns first, on the small crop, then whole rows
        left, right = src.index_select(2, x_lo[i, cols]), src.index_select(2, x_hi[i, cols])
        colwise = torch.lerp(left, right, fx[i, cols])  # (C, h, cols)
        top, bottom = colwise.index_select(1, y_lo[i, rows]), colwise.index_select(1, y_hi[i, rows])
        out[i, :, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = torch.lerp(top, bottom, fy[i, rows][:, None])
    return out
