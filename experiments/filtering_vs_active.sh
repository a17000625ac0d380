#!/usr/bin/env bash
# Active learning against data filtering on real MNIST with LeNet-5, and the submodularity
# diagnostics.
#
#   bash experiments/filtering_vs_active.sh [OUT_DIR]
#
# 1. The filtering curve: BALD of a model trained on the 60 initial labels removes 0..90%
#    of the pool; a model trained on the rest, against removing as many at random.
# 2. Active learning (BALD) and random acquisition on the whole pool and on the pool with
#    its 50% least informative samples filtered out: 60 initial labels, 10 per iteration,
#    20 iterations, otherwise the reference settings.
# 3. The reference experiment's BALD arm (100 iterations of 1), by
#    experiments/reference_experiment.sh in REFERENCE (default runs/reference), which keeps
#    it if it is there already; then `jal analyze` at K = 32, 128 and 256 on every 5th round,
#    each of those rounds' models with a sibling trained again on its labels.
# 4. Figures and the report.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-runs/filtering_vs_active}"
jal="$root/bin/jal"
# finished DIR LINES FILE: DIR holds all LINES lines of FILE, written by this jal (its config.json
# has a "record"). This jal cannot read an older jal's results: the script stops at one.
finished() {
  [ -f "$1/$3" ] && [ "$(wc -l <"$1/$3")" -eq "$2" ] || return 1
  grep -q '"record"' "$1/config.json" && return 0
  echo "$1: written by an older jal, which this one cannot read; move it away to run it again" >&2
  exit 1
}
if ! finished "$out/filter" 11 filtering.jsonl; then
  rm -rf "$out/filter"
  "$jal" filter --model lenet5 --out "$out/filter"
fi
for acquisition in bald random; do
  for fraction in 0 0.5; do
    run="$out/$acquisition-filtered$fraction"
    finished "$run" 21 metrics.jsonl && continue
    rm -rf "$run"
    "$jal" run --model lenet5 --acquisition "$acquisition" --acquire 10 --iterations 20 \
      --filter-fraction "$fraction" --out "$run"
  done
done
reference_dir="${REFERENCE:-runs/reference}"
reference="$reference_dir/bald"
bash "$root/experiments/reference_experiment.sh" "$reference_dir" bald  # keeps a finished run
"$jal" analyze "$reference" --mc-samples 32 128 256 --every 5
"$jal" figures "$out"/*-filtered* "$reference" "$out/filter" --out "$out/figures"
"$jal" report "$out"/*-filtered* "$reference" "$out/filter" --out "$out/report.html"
