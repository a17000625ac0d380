#!/usr/bin/env bash
# The reference experiment on real MNIST with LeNet-5: 100 iterations of 1 acquisition,
# test-set scoring on, seed 42 (all `jal run` defaults), with BALD and with random acquisition,
# then one figure and a table (total seconds per run from its metrics).
#
#   bash experiments/reference_experiment.sh [OUT_DIR] [ARM ...]
#
# ARM is an --acquisition (default: bald random). With SIDE_BY_SIDE=1 the arms run at once,
# each pinned to its own core (taskset) with single-threaded XLA, so that none slows the
# others; otherwise one after the other. Writes OUT_DIR/ARM/ run directories and
# OUT_DIR/accuracy.png. Finished arms are kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-runs/reference}"
shift || true
if [ $# -gt 0 ]; then arms=("$@"); else arms=(bald random); fi
"$root/bin/setup"
# finished DIR LINES FILE: DIR holds all LINES lines of FILE, written by this jal (its config.json
# has a "record"). This jal cannot read an older jal's results: the script stops at one.
finished() {
  [ -f "$1/$3" ] && [ "$(wc -l <"$1/$3")" -eq "$2" ] || return 1
  grep -q '"record"' "$1/config.json" && return 0
  echo "$1: written by an older jal, which this one cannot read; move it away to run it again" >&2
  exit 1
}

arm() {  # arm ACQUISITION [CORE]
  local run="$out/$1" pin=()
  finished "$run" 101 metrics.jsonl && return
  rm -rf "$run"
  [ -n "${2:-}" ] && pin=(env XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c "$2")
  "${pin[@]}" "$root/.venv/bin/jal" run --model lenet5 --acquisition "$1" --seed "${SEED:-42}" --out "$run"
}

pids=()
for i in "${!arms[@]}"; do
  if [ "${SIDE_BY_SIDE:-0}" = 1 ]; then
    arm "${arms[$i]}" "$i" &
    pids+=($!)
  else
    arm "${arms[$i]}"
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
runs=("${arms[@]/#/$out/}")
"$root/.venv/bin/jal" plot "${runs[@]}" --out "$out/accuracy.png"
"$root/.venv/bin/python" "$root/experiments/summarize.py" "${runs[@]}"
