"""Search-region cropping: where to look in the next frame, cropping it out, and pasting results back.

The target box comes from the soft mask's moments (centre = mean, size = 4 x standard deviation); masks of
fewer than `min_area` pixels keep the previous box, and the size may change by a bounded factor per frame.
The crop is `scale` times the box (in area, scale^2), with the aspect ratio of the processing size, shrunk so
it is never larger than the image in both dimensions, and shifted inside the frame (the official tracker's
rules). Boxes are (x0, y0, x1, y1) in continuous pixel coordinates, (K, 4) tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

OUTSIDE_LOGIT = -100.0  # score of pixels outside the search region (probability 0)


@dataclass
class CropConfig:
    """Search-region rules; `size` is the processing size (H, W) every crop is resized to."""

    size: tuple[int, int] = (480, 832)
    scale: float = 5.0
    min_area: float = 100.0
    max_shrink: float = 0.95
    max_grow: float = 1.1


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


def crop(images: Tensor, boxes: Tensor, size: tuple[int, int], index: Tensor | None = None) -> Tensor:
    """Crop K boxes out of images (N, C, H, W) and resize them to `size`: (K, C, h, w); outside reads 0.

    Box k reads image `index[k]` (image 0 for all when None). roi_align averages over the pixels that each
    output sample covers, so large crops are not aliased.
    """
    if index is None:
        index = boxes.new_zeros(len(boxes))
    rois = torch.cat([index[:, None].to(boxes), boxes], dim=1).to(images.dtype)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def paste(crops: Tensor, boxes: Tensor, image_hw: tuple[int, int], outside: float = OUTSIDE_LOGIT) -> Tensor:
    """Inverse of `crop`: maps (K, C, h, w) back to the image grid (K, C, H, W), `outside` beyond each box."""
    img_h, img_w = image_hw
    xs = torch.arange(img_w, device=crops.device, dtype=torch.float32) + 0.5
    ys = torch.arange(img_h, device=crops.device, dtype=torch.float32) + 0.5
    b = boxes.float()
    gx = 2 * (xs[None] - b[:, 0:1]) / (b[:, 2:3] - b[:, 0:1]) - 1  # (K, W)
    gy = 2 * (ys[None] - b[:, 1:2]) / (b[:, 3:4] - b[:, 1:2]) - 1  # (K, H)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (K, H, W, 2)
    out = F.grid_sample(crops.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = (grid.abs() <= 1).all(dim=-1)[:, None]
    return torch.where(inside, out, torch.full_like(out, outside))
