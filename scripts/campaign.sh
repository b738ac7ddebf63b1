#!/usr/bin/env bash
# The CPU training campaign of lite-llb and lite-joint (README: Training): each variant runs the synthetic stage,
# then the video stage, from the shipped weights, with the same data, seed, steps and batch; one thread per run,
# so two runs share a 2-core machine. Validation: davis2017-dev, extra-val and the held-out training sequences.
# A stopped run resumes where its RUN/last is (rerun the same command); a finished stage is skipped.
#
#   scripts/campaign.sh VARIANT [TAG] [--set KEY=VALUE ...]     e.g. scripts/campaign.sh llb llb-gate --set optim.lr_fusion=1e-3
#   S1=400 S2=600 (steps of the two stages), INIT=checkpoints/lite-VARIANT.safetensors, OUT=runs/campaign
set -euo pipefail
cd "$(dirname "$0")/.."
variant=$1
tag=${2:-$variant}
shift $(($# < 2 ? $# : 2))
s1=${S1:-400}
s2=${S2:-600}
data=${LLB_DATA:-../shared/data}
run=${OUT:-runs/campaign}/$tag
llb=(.venv/bin/llb train --variant "$variant" --size 224x128 --batch 4 --threads 1 --workers 1 --device cpu --quiet
  --val-root "$data/davis2017-dev" --val-root "$data/extra-val" --save-every 100
  --set optim.warmup_steps=20 --set freeze_bn=false "$@")

stage() {  # stage NAME STEPS VAL_EVERY INIT [extra args]
  local name=$1 steps=$2 every=$3 init=$4 folder=$run/$1
  shift 4
  if [[ -e $folder/lite-$variant-$name.safetensors.index.json || -e $folder/lite-$variant-$name.safetensors ]]; then
    echo "$folder: stage done"
  elif [[ -e $folder/last/state.json ]]; then
    "${llb[@]}" --resume "$folder/last" --steps "$steps"
  else
    "${llb[@]}" --stage "$name" --steps "$steps" --val-every "$every" --init "$init" --out "$folder" "$@"
  fi
}

stage synthetic "$s1" "$s1" "${INIT:-checkpoints/lite-$variant.safetensors}"
first=$(ls "$run"/synthetic/lite-"$variant"-synthetic.safetensors* | head -1)
stage video "$s2" $((s2 / 2)) "${first%.index.json}" --set val_at_start=false
