"""The one settings module: defaults, the variables it honours, and where the repo and shared data are found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llb import settings
from llb.checkpoint import LOCAL_DIRS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    names = ("LLB_SHARED", "LLB_DATA", "LLB_CHECKPOINT_DIR", "LLB_HUB_REPO", "LLB_EXAMPLES_DIR", "LLB_CROP_SIZE")
    for name in (*names, "LLB_APP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_checkout_finds_its_checkpoints_and_the_shared_folder_beside_it(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.chdir(REPO)
    env = settings.from_env()
    assert settings.repo_root() == REPO
    assert env.checkpoints == REPO / "checkpoints" and LOCAL_DIRS == (REPO / "checkpoints",)
    assert env.shared == REPO.parent / "shared" and env.data == REPO.parent / "shared" / "data"
    assert env.examples_dir == REPO.parent / "shared" / "examples"
    assert env.checkpoint_dir is None and env.hub_repo == "llb-vos/llb-checkpoints" and env.app_config == "lite"


def test_the_variables_override_the_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("LLB_SHARED", str(tmp_path / "s"))
    clean_env.setenv("LLB_CHECKPOINT_DIR", str(tmp_path / "c"))
    clean_env.setenv("LLB_HUB_REPO", "me/mine")
    clean_env.setenv("LLB_CROP_SIZE", "432x240")
    clean_env.setenv("LLB_APP_CONFIG", "tiny")
    env = settings.from_env()
    assert env.app_config == "tiny"
    assert env.shared == tmp_path / "s" and env.data == tmp_path / "s" / "data"
    assert env.checkpoint_dir == tmp_path / "c" and env.hub_repo == "me/mine"
    assert env.crop_size == (240, 432)
    clean_env.setenv("LLB_DATA", str(tmp_path / "d"))
    assert settings.from_env().data == tmp_path / "d"
    clean_env.setenv("LLB_CROP_SIZE", "430x240")
    with pytest.raises(ValueError, match="LLB_CROP_SIZE=430x240: width and height must be multiples of 16"):
        settings.from_env()


def test_an_installed_package_looks_in_the_working_directory(tmp_path: Path) -> None:
    """The package copied into a site-packages folder (a non-editable install): checkpoints/ and ../shared are
    looked for from the working directory, not beside the package."""
    site = tmp_path / "venv" / "site-packages"
    site.mkdir(parents=True)
    (site / "llb").mkdir()
    (site / "llb" / "settings.py").write_text((REPO / "llb" / "settings.py").read_text())
    work = tmp_path / "project"
    work.mkdir()
    script = "import llb.settings as s; e = s.from_env(); print(s.repo_root(), e.checkpoints, e.shared, sep='|')"
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, check=True)
    root, checkpoints, shared = (Path(p) for p in out.stdout.strip().split("|"))
    assert root == work and checkpoints == work / "checkpoints" and shared == tmp_path / "shared"
