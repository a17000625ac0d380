#!/usr/bin/env bash
# The reference experiment on real MNIST: 100 iterations of 1 acquisition, BALD and random,
# test-set scoring on, seed 42 (all `jal run` defaults), then one figure and a table.
#
#   JAL_MNIST_DIR=/path/to/mnist bash experiments/reference_experiment.sh [OUT_DIR]
#
# With SIDE_BY_SIDE=1 the two arms run at once, each pinned to one core (taskset) with
# single-threaded XLA, so that neither slows the other; otherwise one after the other.
# Writes OUT_DIR/{bald,random}/ run directories, OUT_DIR/wall_seconds.txt and
# OUT_DIR/bald_vs_random.png. Finished arms are kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-runs/reference}"
seed="${SEED:-42}"
mkdir -p "$out"
"$root/bin/setup"

arm() {  # arm ACQUISITION [CORE]
  local run="$out/$1"
  [ -f "$run/metrics.jsonl" ] && [ "$(wc -l <"$run/metrics.jsonl")" -eq 101 ] && return
  rm -rf "$run"
  local start
  start=$(date +%s.%N)
  if [ -n "${2:-}" ]; then
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false" taskset -c "$2" "$root/.venv/bin/jal" run --acquisition "$1" --seed "$seed" --out "$run"
  else
    "$root/.venv/bin/jal" run --acquisition "$1" --seed "$seed" --out "$run"
  fi
  echo "$1 $(echo "$(date +%s.%N) - $start" | bc)" >>"$out/wall_seconds.txt"
}

if [ "${SIDE_BY_SIDE:-0}" = 1 ]; then
  arm bald 0 &
  bald=$!
  arm random 1 &
  random=$!
  wait "$bald"
  wait "$random"
else
  arm bald
  arm random
fi
"$root/.venv/bin/jal" plot "$out/bald" "$out/random" --out "$out/bald_vs_random.png"
"$root/.venv/bin/python" "$root/experiments/summarize.py" "$out/bald" "$out/random"
