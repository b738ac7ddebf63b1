"""Offline training: stage configs, the losses, and the trainer behind `llb train`."""

from .config import DataConfig, OptimConfig, TrainConfig, apply_overrides, stage_config
from .loss import LossConfig, cosine_similarity_loss, lovasz_hinge, lovasz_sigmoid, training_loss
from .trainer import Trainer, add_train_arguments, build_dataset, build_model, run_train

__all__ = [
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "Trainer",
    "add_train_arguments",
    "apply_overrides",
    "build_dataset",
    "build_model",
    "cosine_similarity_loss",
    "lovasz_hinge",
    "lovasz_sigmoid",
    "run_train",
    "stage_config",
    "training_loss",
]
