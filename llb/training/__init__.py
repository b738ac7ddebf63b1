"""Offline training: stage configs, the losses, and the trainer behind `llb train`."""

from .config import DataConfig, OptimConfig, TrainConfig, apply_overrides, stage_config
from .loss import LossConfig, cosine_similarity_loss, lovasz_hinge, lovasz_sigmoid, training_loss
from .trainer import Trainer, build_dataset, build_model, open_run

__all__ = [
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "Trainer",
    "apply_overrides",
    "build_dataset",
    "build_model",
    "cosine_similarity_loss",
    "lovasz_hinge",
    "lovasz_sigmoid",
    "open_run",
    "stage_config",
    "training_loss",
]
