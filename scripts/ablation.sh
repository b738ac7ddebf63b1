#!/usr/bin/env bash
# The paper's ablations (Tables 3 and 4) at one short budget each (README: Training, the ablation table): every
# row of llb.config.ABLATIONS trains the synthetic stage from ImageNet weights with the same data, seed, steps
# and batch, then validates on davis2017-dev, extra-val and the held-out training sequences. A finished row is
# skipped and a stopped one resumes, so the script can be rerun until every row has its val.csv row.
#
#   scripts/ablation.sh [ROW ...]          (default: all six rows, one after another)
#   STEPS=500 SIZE=224x128 THREADS=1 DEVICE=cpu OUT=runs/ablation VAL_FRAMES= (score only the first frames)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-500}
data=${LLB_DATA:-../shared/data}
out=${OUT:-runs/ablation}
rows=("$@")
[[ ${#rows[@]} -gt 0 ]] || rows=(joint llb-1 llb-2 llb-3 llb-4 llb)
for row in "${rows[@]}"; do
  run=$out/$row
  if [[ -e $run/val.csv ]] && grep -q "^$steps," "$run/val.csv"; then
    echo "$run: done"
  elif [[ -e $run/last/state.json ]]; then
    .venv/bin/llb train --resume "$run/last" --steps "$steps" --quiet
  else
    .venv/bin/llb train --variant "$row" --stage synthetic --steps "$steps" --size "${SIZE:-224x128}" --batch 4 \
      --threads "${THREADS:-1}" --workers 1 --device "${DEVICE:-cpu}" --quiet --seed 0 --save-every 100 \
      --val-root "$data/davis2017-dev" --val-root "$data/extra-val" --val-every "$steps" \
      ${VAL_FRAMES:+--val-max-frames "$VAL_FRAMES"} --set val_at_start=false --set optim.warmup_steps=50 --set freeze_bn=false --out "$run"
  fi
done
