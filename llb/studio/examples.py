"""The example clips: listed with their credits in examples/examples.json, read from the repository's
`examples/` folder (three short clips ship there), a local folder ($LLB_EXAMPLES_DIR, default
../shared/examples) or, on a Space, from a Hub dataset ($LLB_EXAMPLES_REPO)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llb.video.io import VideoError

from ..settings import from_env, repo_root
from .settings import Settings

SHIPPED = repo_root() / "examples"
LIST = SHIPPED / "examples.json"


@dataclass(frozen=True)
class Example:
    file: str
    title: str
    credit: str
    license: str
    source: str

    def credit_line(self) -> str:
        return f"*{self.title}*: {self.credit}, {self.license} ([source]({self.source}))"


def _local(example: Example, settings: Settings) -> Path | None:
    """The clip's path in the repository's examples/ or in `settings.examples_dir`, whichever has it first."""
    for folder in (SHIPPED, settings.examples_dir):
        if (folder / example.file).is_file():
            return folder / example.file
    return None


def load_examples(settings: Settings) -> list[Example]:
    """The listed clips that can be had here (shipped, present locally, or a Hub repo is configured)."""
    clips = json.loads(LIST.read_text())["clips"] if LIST.is_file() else []
    examples = [Example(c["file"], c["title"], c["credit"], c["license"], c["source"]) for c in clips]
    if settings.examples_repo:
        return examples
    return [e for e in examples if _local(e, settings)]


def example_path(example: Example, settings: Settings) -> Path:
    """The clip's local path, downloaded from the Hub dataset when it is in no local folder."""
    local = _local(example, settings)
    if local is not None:
        return local
    if settings.examples_repo and not from_env().hub_offline:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(settings.examples_repo, example.file, repo_type="dataset"))
        except Exception as err:  # any Hub failure: the example is not available here
            raise VideoError(f"the example {example.file} could not be fetched ({type(err).__name__})") from err
    raise VideoError(f"the example {example.file} is not on this server (set LLB_EXAMPLES_DIR to its folder)")
