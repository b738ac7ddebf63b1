"""Offline training of LLB (paper: "Offline Training"): mini-sequences of Q frames, memory from frame 0.

One step: a batch of clips (B, Q, 3, H, W); frame 0 and its mask start the memory, the model's forward fits
tau0 (5 steepest-descent steps), segments frames 1..Q-1 one by one, adding each with its predicted mask (2
steps per later frame); loss = 100 x Lovasz + 1 x cosine similarity(E1, E2); Adam with per-module rates.

A run folder holds `config.json`, `log.csv` (and `val.csv`), `tb/` (TensorBoard events), `curves.png`, `last/`
(the resume state: model, optimiser and RNG states as safetensors plus `state.json`; nothing is pickled) and,
at the end, the exported network `<config>-<variant>-<stage>.safetensors` (parts of at most 16 MiB) with
`trained=True`. Clips are numbered and each is drawn from its own seeded generator, so a resumed run sees the
same data and continues bit for bit.

Under `torchrun` every process trains on its own share of the clip stream (`batch` clips per process and step)
through DistributedDataParallel, and rank 0 alone writes the run folder and validates (llb.training.distributed).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from llb.checkpoint import read_checkpoint, save_checkpoint
from llb.config import get_config
from llb.data import (
    ClipDataset,
    MixedClips,
    SyntheticClips,
    VideoClips,
    check_training_root,
)
from llb.inference.session import native_bf16, resolve_device
from llb.network import LLBNet

from .config import MIB, STAGES, TrainConfig, shared_data_dir
from .distributed import SINGLE_PROCESS, Distributed
from .loss import training_loss
from .monitor import RunMonitor
from .state import (
    flatten_optimizer,
    read_state,
    replacing,
    rng_from_tensors,
    rng_state,
    rng_to_tensors,
    seed_everything,
    set_rng_state,
    unflatten_optimizer,
)
from .validation import Validator, make_validator, validation_sets

# MKL picks its BLAS code path by memory alignment unless told otherwise, so the same step could round
# differently in two runs; its AUTO mode fixes the path per CPU, which makes resumed runs bit-exact. MKL reads
# this when it first runs, so it is set on import (before any training computes).
os.environ.setdefault("MKL_CBWR", "AUTO")

STATE_FORMAT = "llb-train-state/1"
WHAT = "an LLB training state"
SHARD_HEADER_MARGIN = 1 << 19  # room for a shard's safetensors header (tensor index and metadata)

# parameter groups: name prefix in LLBNet -> OptimConfig field
PARAM_GROUPS = (
    ("decoder.", "lr_decoder"),
    ("label_generator.", "lr_label_generator"),
    ("fusion.", "lr_fusion"),
    ("transduction.", "lr_transduction"),
    ("learner_adapter.", "lr_adapters"),
    ("transduction_adapter.", "lr_adapters"),
    ("learner.", "lr_filter_reg"),
    ("backbone.", "lr_backbone"),
)


def build_dataset(cfg: TrainConfig) -> ClipDataset:
    """The stage's clip source (synthetic or video), seeded with the run's seed."""
    data = cfg.data
    videos = video_roots(cfg)
    statics = list(data.static_roots) or [str(shared_data_dir() / "static")]
    for root in videos:
        check_training_root(root)
    if data.clip.size != data.synthetic.size or data.clip.num_frames != data.synthetic.num_frames:
        raise ValueError("data.clip and data.synthetic must share size and num_frames (set them with --size)")
    held = data.holdout
    if cfg.stage == "synthetic":
        backgrounds = videos if data.video_backgrounds else ()
        return SyntheticClips(statics, backgrounds, data.synthetic, seed=cfg.seed, exclude=held)
    if cfg.stage == "video":
        real = VideoClips(videos, data.clip, seed=cfg.seed, exclude=held)
        if data.synthetic_fraction <= 0:
            return real
        synthetic = SyntheticClips(statics, videos, data.synthetic, seed=cfg.seed, exclude=held)
        return MixedClips([real, synthetic], [1 - data.synthetic_fraction, data.synthetic_fraction], seed=cfg.seed)
    raise ValueError(f"unknown stage {cfg.stage!r}: choose {' or '.join(STAGES)}")


def video_roots(cfg: TrainConfig) -> list[str]:
    """The run's real-video roots (the shared DAVIS 2016 train set when none is given)."""
    return list(cfg.data.video_roots) or [str(shared_data_dir() / "davis2016-train-240p")]


def build_model(cfg: TrainConfig) -> tuple[LLBNet, dict[str, Any] | None]:
    """The network named by the config, from ImageNet weights or from `cfg.init` (a checkpoint of the same
    network, e.g. the synthetic stage's export), and what that checkpoint says of its own training (its `info`
    without the full config, None without `init`), so that the run's exports carry their lineage."""
    mcfg = get_config(cfg.model, cfg.variant)
    if cfg.init or not cfg.pretrained:
        mcfg.backbone.pretrained = mcfg.label.pretrained = False
    model = LLBNet(mcfg)
    if not cfg.init:
        return model, None
    init_cfg, state, meta = read_checkpoint(cfg.init)
    if init_cfg.key != mcfg.key:
        raise ValueError(f"--init {cfg.init} holds a {init_cfg.key} network, but {mcfg.key} is trained")
    model.load_state_dict(state, strict=True)
    lineage = json.loads(meta.get("info") or "{}")
    lineage.pop("train_config", None)
    return model, lineage


def _backbone_trainable(name: str) -> bool:
    """Backbone parameters fine-tuned when lr_backbone > 0: everything after the stride-4 stage (ResNet
    layer2-4; EfficientNet blocks 2 onwards)."""
    if name.startswith("backbone.net.layer"):
        return not name.startswith("backbone.net.layer1")
    if name.startswith("backbone.net.blocks."):
        return int(name.split(".")[3]) >= 2
    return False


def param_groups(model: LLBNet, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Adam groups by module with the official rates; parameters of a part with rate 0 are frozen.

    Every trainable parameter must fall in a group, so that a new module cannot go untrained unnoticed.
    """
    groups: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        field = next((f for prefix, f in PARAM_GROUPS if name.startswith(prefix)), None)
        if field is None:
            raise ValueError(f"parameter {name} belongs to no learning-rate group")
        if field == "lr_backbone":
            param.requires_grad_(cfg.optim.lr_backbone > 0 and _backbone_trainable(name))
        lr = getattr(cfg.optim, field)
        if lr <= 0:
            param.requires_grad_(False)
        if param.requires_grad:
            groups.setdefault(field, []).append(param)
    return [
        {"name": f, "params": ps, "lr": getattr(cfg.optim, f), "base_lr": getattr(cfg.optim, f)}
        for f, ps in groups.items()
    ]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at `step` (0-based): linear warm-up, then x decay at each milestone."""
    o = cfg.optim
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
    passed = sum(step >= round(f * cfg.steps) for f in o.decay_at)
    return warm * o.decay**passed


def clip_batches(first_step: int, steps: int, batch: int, place: Distributed) -> list[range]:
    """Clip numbers of this process's batch at each step from `first_step` on.

    Step s takes clips s*W*B .. (s+1)*W*B - 1 of the stream (W processes of B clips each) and rank r the r-th B
    of them: the processes see different clips, together the clips of one process with batch W*B, and a resumed
    run (with as many processes) the clips it would have seen without the interruption.
    """
    per_step = batch * place.world
    first = place.rank * batch
    return [range(s * per_step + first, s * per_step + first + batch) for s in range(first_step, steps)]


def _worker_init(_: int) -> None:
    """Data workers decode with one thread each: the main process needs the cores for the network."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def batch_iou(logits: Tensor, masks: Tensor) -> float:
    """Mean IoU of thresholded predictions (N, ..., H, W) over images whose union is not empty."""
    pred = logits.detach().float() > 0
    gt = masks > 0.5
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    keep = union > 0
    return float((inter[keep] / union[keep]).mean()) if keep.any() else 1.0


class Trainer:
    """Owns the model, optimiser, step counter and run folder; `fit` runs the loop.

    `place` is this process's rank among the training processes; with several, a process group must exist
    (`process_group`), the model is wrapped in DistributedDataParallel, and only rank 0 should be given
    validators.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: ClipDataset | None = None,
        validators: Sequence[Validator] = (),
        place: Distributed = SINGLE_PROCESS,
    ) -> None:
        self.cfg = cfg
        self.place = place
        self.device = place.device_for(resolve_device(cfg.device))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.out = Path(cfg.out)
        seed_everything(cfg.seed)
        model, self.init_info = build_model(cfg)
        self.model = model.to(self.device)
        if cfg.compile:
            self.model.backbone.compile()
            self.model.decoder.compile()
        # param_groups freezes parameters; DistributedDataParallel must come after it, as it syncs only the
        # parameters that require gradients when it is built
        self.optimizer = torch.optim.Adam(
            param_groups(self.model, cfg), betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
        )
        self.net = self._distribute()
        self.dataset = dataset
        self.validators = list(validators)
        self.step = 0
        self.stop_requested = False  # set (e.g. by SIGTERM) to pause after the current step

    def _distribute(self) -> nn.Module:
        """The model as a step calls it: across processes, wrapped in DistributedDataParallel, which averages the
        gradients during backward. Every trainable parameter takes part in the loss, so DDP need not search for
        unused ones (find_unused_parameters)."""
        if not self.place.enabled:
            return self.model
        devices = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=devices)

    # ---- one step -------------------------------------------------------------------------------------
    def set_train_mode(self) -> None:
        """Train mode with every batch norm on its running statistics when `freeze_bn` (the backbone's
        always are while it is frozen)."""
        self.model.train()
        if self.cfg.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when `amp` and the device computes bf16 natively (recent GPUs; CPUs with AMX or
        AVX512-BF16), as the engine does; a no-op elsewhere. The few-shot learner stays float32 (LLBNet._learn)."""
        enabled = self.cfg.amp and native_bf16(self.device)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One update on a batch {"images": (B, Q, 3, H, W) uint8, "masks": (B, Q, 1, H, W)}."""
        self.set_train_mode()
        factor = lr_factor(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        images = batch["images"].to(self.device, non_blocking=True).float().transpose(0, 1)  # (Q, B, 3, H, W)
        masks = batch["masks"].to(self.device, non_blocking=True).float().transpose(0, 1)  # (Q, B, 1, H, W)
        q, b = images.shape[:2]
        norm = self.model.normalize(images.flatten(0, 1)).unflatten(0, (q, b))
        with self.autocast():
            out = self.net(norm[:1], masks[:1], norm[1:], self.cfg.num_init_iter, self.cfg.num_update_iter)
        terms = training_loss(out.logits, masks[1:], out.e1, out.e2, self.cfg.loss)
        self.optimizer.zero_grad(set_to_none=True)
        stats = {
            "loss": float(terms.total.detach()),
            "seg": float(terms.segmentation.detach()),
            "cos": float(terms.cosine.detach()),
            "iou": batch_iou(out.logits, masks[1:]),
            "lr": self.cfg.optim.lr_decoder * factor,
        }
        # the whole batch's statistics; every process then sees the same loss and stops together if it is bad
        stats = self.place.mean(stats, self.device)
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"non-finite loss {stats['loss']} at step {self.step}; lower the learning rates")
        terms.total.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip))
        self.optimizer.step()
        self.step += 1
        return stats

    # ---- the loop -------------------------------------------------------------------------------------
    def batches(self) -> Iterator[dict[str, Tensor]]:
        """This process's batches from the current step on (`clip_batches`): the same data whether or not the
        run was resumed."""
        if self.dataset is None:
            self.dataset = build_dataset(self.cfg)
        workers = self.cfg.data.workers
        loader = DataLoader(
            self.dataset,
            batch_sampler=clip_batches(self.step, self.cfg.steps, self.cfg.batch, self.place),
            num_workers=workers,
            worker_init_fn=_worker_init if workers > 0 else None,
            # fresh worker processes: a forked one inherits OpenCV's thread pool as the parent left it (started by
            # a validation, say) and hung in cv2.setNumThreads
            multiprocessing_context="spawn" if workers > 0 else None,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if workers > 0 else None,
            persistent_workers=False,
        )
        yield from loader

    def fit(self, quiet: bool = False, stop_at: int | None = None) -> dict[str, float]:
        """Train until `cfg.steps` (or pause at `stop_at`, or after the step during which `stop_requested` was
        set), logging, saving `last/` and validating on schedule; `last/` is also saved when pausing, and the
        network is exported at the end. Rank 0 does all the writing; every process returns once it is done.

        Returns the statistics of the last step (averaged over the processes).
        """
        monitor = self._open_monitor(quiet) if self.place.is_main else None
        stats: dict[str, float] = {}
        try:
            if monitor is not None and self.step == 0 and self.cfg.val_at_start and self.cfg.val_every:
                monitor.validation(0, self.validate())
            tick = time.perf_counter()
            for batch in self.batches():
                stats = self.train_step(batch)
                seconds = time.perf_counter() - tick
                stats["sec_per_step"] = seconds
                stats["clips_per_s"] = self.cfg.batch * self.place.world / max(seconds, 1e-9)
                pause = self.step == stop_at or self.stop_requested
                if monitor is not None:
                    self._after_step(monitor, stats, pause)
                if pause:
                    break
                tick = time.perf_counter()
        finally:
            if monitor is not None:
                monitor.close()
        if self.step >= self.cfg.steps and self.place.is_main:
            self.export(self.out / f"{self.model.cfg.key}-{self.cfg.stage}.safetensors")
        self.place.barrier()
        return stats

    def _open_monitor(self, quiet: bool) -> RunMonitor:
        """Create the run folder with config.json, and the bar and logs that report on it."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(self.cfg.to_json())
        return RunMonitor(self.out, self.step, self.cfg.steps, self.cfg.log_every, quiet)

    def _after_step(self, monitor: RunMonitor, stats: dict[str, float], pause: bool) -> None:
        """Rank 0 after a step: log, validate and save `last/` on schedule, redrawing curves.png after a
        validation or a save (the other processes wait for it in their next step)."""
        cfg = self.cfg
        monitor.training(self.step, stats)
        validated = bool(cfg.val_every and self.validators and self.step % cfg.val_every == 0)
        if validated:
            monitor.validation(self.step, self.validate())
        saved = bool(cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps or pause
        if saved:
            self.save_state(self.out / "last")
        if validated or saved:
            monitor.draw()

    def validate(self) -> dict[str, float]:
        """Run every validator (eval mode; RNG states kept so training continues as without it)."""
        if not self.validators:
            return {}
        rng = rng_state()
        self.model.eval()
        results: dict[str, float] = {}
        try:
            with torch.no_grad():
                for validator in self.validators:
                    results.update(validator(self.model, self.step))
        finally:
            set_rng_state(rng)
            self.set_train_mode()
        return results

    # ---- checkpoints ----------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What the exported model's metadata says about its training."""
        data = self.cfg.data
        videos = list(data.video_roots) or ["davis2016-train-240p"]
        statics = list(data.static_roots) or ["static (ecssd, duts-tr, coco)"]
        if self.cfg.stage == "synthetic":
            used = statics + (videos if data.video_backgrounds else [])
        else:
            used = videos + (statics if data.synthetic_fraction > 0 else [])
        return {
            "steps": self.step,
            "stage": self.cfg.stage,
            "data": [Path(r).name or r for r in used],
            "batch": self.cfg.batch,
            "processes": self.place.world,
            "size": list(data.size),
            "init": self.cfg.init,
            "init_info": self.init_info,
            "holdout": list(data.holdout),
        }

    def export(self, path: str | Path) -> list[Path]:
        """The trained network as safetensors parts of at most `export_shard_mib` MiB (files, headers
        included), flagged trained."""
        return save_checkpoint(
            self.model,
            path,
            trained=True,
            info={**self.info(), "train_config": self.cfg.to_dict()},
            max_shard_bytes=self.cfg.export_shard_mib * MIB - SHARD_HEADER_MARGIN,
        )

    def save_state(self, folder: str | Path) -> Path:
        """Write the resume state to `folder` (replaced atomically): model.safetensors (with config),
        optimizer.safetensors, rng.safetensors and state.json."""
        folder = Path(folder)
        with replacing(folder) as tmp:
            save_checkpoint(self.model, tmp / "model.safetensors", trained=False, info=self.info())
            opt_tensors, opt_meta = flatten_optimizer(self.optimizer.state_dict())
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            rng_tensors, rng_meta = rng_to_tensors(rng_state())
            save_file(rng_tensors, str(tmp / "rng.safetensors"))
            state = {
                "format": STATE_FORMAT,
                "step": self.step,
                "config": self.cfg.to_dict(),
                "optimizer": opt_meta,
                "rng": rng_meta,
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
        return folder

    def load_state(self, folder: str | Path) -> None:
        """Continue from a resume state written by `save_state` (model, optimiser, step, RNG states)."""
        folder = Path(folder)
        state = read_state(folder, STATE_FORMAT, WHAT)
        _, tensors, _ = read_checkpoint(folder / "model.safetensors")
        self.model.load_state_dict(tensors, strict=True)
        opt = unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
        for group, saved in zip(self.optimizer.param_groups, opt["param_groups"], strict=True):
            if group["name"] != saved["name"] or len(group["params"]) != len(saved["params"]):
                raise ValueError(f"{folder}: optimizer groups do not match this run's ({group['name']})")
        self.optimizer.load_state_dict(opt)
        self.step = int(state["step"])
        set_rng_state(rng_from_tensors(load_file(str(folder / "rng.safetensors")), state["rng"]))


# ---- a run ----------------------------------------------------------------------------------------------
def run_validators(cfg: TrainConfig) -> list[Validator]:
    """The validation asked for by the config: its roots and, with `val_holdout`, the held-out sequences."""
    if not cfg.val_every:
        return []
    holdout = cfg.data.holdout if cfg.val_holdout else ()
    sets = validation_sets(cfg.val_roots, holdout, video_roots(cfg))
    if not sets:
        return []
    return [make_validator(sets, Path(cfg.out) / "val", cfg.val_size, cfg.val_max_frames)]


def resumed_config(folder: str | Path) -> TrainConfig:
    """The config of the run whose resume state is `folder` (its RUN/last)."""
    return TrainConfig.from_dict(read_state(folder, STATE_FORMAT, WHAT)["config"])


def open_run(cfg: TrainConfig, place: Distributed = SINGLE_PROCESS, resume: str | Path | None = None) -> Trainer:
    """The trainer of a run in this process (rank 0 validates), continued from the resume state `resume`."""
    trainer = Trainer(cfg, validators=run_validators(cfg) if place.is_main else (), place=place)
    if resume:
        trainer.load_state(resume)
    return trainer
