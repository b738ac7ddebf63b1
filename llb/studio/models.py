"""The networks the app runs: trained checkpoints only (unless the development switch allows an untrained
network), each loaded once per process and shared by every browser session."""

from __future__ import annotations

import logging
import threading

import torch

from llb.checkpoint import CheckpointError, resolve_checkpoint
from llb.config import get_config
from llb.inference.crop import CropConfig
from llb.inference.session import InferenceConfig, Segmenter

from .settings import Settings

log = logging.getLogger(__name__)
NAMES = {"llb": "LLB", "joint": "JOINT-style (sum fusion)"}


def device_name() -> str:
    if torch.cuda.is_available():
        return f"CUDA ({torch.cuda.get_device_name(0)})"
    return f"CPU ({torch.get_num_threads()} threads)"


class Models:
    """Segmenters by variant, loaded once per process and shared by every session (sessions hold the state)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._segmenters: dict[str, Segmenter] = {}
        self._problems: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def problem(self, variant: str) -> str | None:
        """None when `variant` can run; otherwise what is missing and what to do about it."""
        if variant not in self._problems:
            key = get_config(self.settings.config, variant).key
            try:
                resolve_checkpoint(key)
                self._problems[variant] = None
            except CheckpointError as err:
                log.warning("%s", err)  # where it looked: for the log, not the page
                self._problems[variant] = (
                    None
                    if self.settings.allow_untrained
                    else (
                        f"No trained {NAMES[variant]} checkpoint yet, so nothing can be tracked. Put "
                        f"`{key}.safetensors` into `checkpoints/` (or a folder named by `LLB_CHECKPOINT_DIR`, "
                        f"or publish it to the Hub repo named by `LLB_HUB_REPO`) and restart the app."
                    )
                )
        return self._problems[variant]

    def get(self, variant: str) -> Segmenter:
        problem = self.problem(variant)
        if problem:
            raise CheckpointError(problem)
        with self._lock:
            if variant not in self._segmenters:
                inference = InferenceConfig(
                    crop=CropConfig(size=self.settings.crop_size), return_gates=True, int8=self.settings.int8
                )
                self._segmenters[variant] = Segmenter.from_pretrained(
                    config=self.settings.config,
                    variant=variant,
                    allow_untrained=self.settings.allow_untrained,
                    inference=inference,
                )
            return self._segmenters[variant]
