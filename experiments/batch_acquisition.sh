#!/usr/bin/env bash
# Batch acquisition on real MNIST with LeNet-5, in the style of the BatchBALD paper
# (Kirsch et al., 2019): 20 initial labels (2 per class), 10 acquired per iteration for 30
# iterations (320 labels at the end), K=50 MC-dropout samples, test accuracy from one
# deterministic pass; the reference's pool of 10,000 and its training otherwise. One run per
# method and seed.
#
#   bash experiments/batch_acquisition.sh [OUT_DIR] [SEED ...]
#
# Writes OUT_DIR/METHOD-seedS/ run directories, then prints the labels-to-accuracy table
# (with the paper's medians) and draws OUT_DIR/batch_acquisition.png. Finished runs are kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-runs/batch_acquisition}"
shift || true
seeds=("${@:-1}")
# finished DIR LINES FILE: DIR holds all LINES lines of FILE, written by this jal (its config.json
# has a "record"). This jal cannot read an older jal's results: the script stops at one.
finished() {
  [ -f "$1/$3" ] && [ "$(wc -l <"$1/$3")" -eq "$2" ] || return 1
  grep -q '"record"' "$1/config.json" && return 0
  echo "$1: written by an older jal, which this one cannot read; move it away to run it again" >&2
  exit 1
}
for seed in "${seeds[@]}"; do
  for acquisition in random bald batchbald powerbald epig; do
    run="$out/$acquisition-seed$seed"
    [ -f "$run/pool_scores.npy" ] && finished "$run" 31 metrics.jsonl && continue
    rm -rf "$run"
    "$root/bin/jal" run --model lenet5 --acquisition "$acquisition" --initial-per-class 2 --acquire 10 \
      --iterations 30 --mc-samples 50 --skip-test-scores --seed "$seed" --out "$run"
  done
done
"$root/.venv/bin/python" "$root/experiments/labels_to_accuracy.py" "$out"/*-seed*/ --paper \
  --figure "$out/batch_acquisition.png"
