"""Shared fixtures: where ../shared lives, and the rule that tests needing it skip for a user's clone but fail in CI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from llb.settings import from_env

REPO = Path(__file__).resolve().parents[1]
SHARED = from_env().shared  # $LLB_SHARED, else ../shared beside the repo

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def require_shared(*parts: str) -> Path:
    """Path under ../shared; skips with a reason where it is absent, fails under CI=true."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"{path} is absent (the project's shared data lies beside the repository as ../shared)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """../shared/official, with make_weights.py importable."""
    path = require_shared("official")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require_shared("data")


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may wait on the network
