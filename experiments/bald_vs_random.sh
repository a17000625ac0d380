#!/usr/bin/env bash
# BALD against random acquisition on real MNIST with LeNet-5: 60 initial labels, 10 acquired
# per iteration for 20 iterations (260 labels at the end), otherwise the reference settings.
#
#   bash experiments/bald_vs_random.sh [OUT_DIR]
#
# Writes OUT_DIR/{bald,random}/ run directories and OUT_DIR/bald_vs_random.png.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-runs/bald_vs_random}"
for acquisition in bald random; do
  "$root/bin/jal" run --model lenet5 --acquisition "$acquisition" --acquire 10 --iterations 20 --seed 42 \
    --out "$out/$acquisition"
done
"$root/bin/jal" plot "$out/bald" "$out/random" --out "$out/bald_vs_random.png"
