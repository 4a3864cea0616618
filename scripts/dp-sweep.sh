#!/usr/bin/env bash
# Accuracy against epsilon for DP-FedAvg (docs/privacy.md): the issue's setting
# (examples/compression/fedavg-20.toml: FedAvg, 20 clients, Dirichlet(0.5), full Fashion-MNIST,
# reference CNN, 10 rounds, all clients every round) without DP, and with central DP at clip C
# and each noise multiplier in SIGMAS.
#   scripts/dp-sweep.sh [OUT]        (default runs/dp-sweep; CLIP=1.0, SIGMAS="0 0.3 1")
# A run whose metrics.csv is complete is not run again. Writes OUT/summary.csv.
set -euo pipefail
out=${1:-runs/dp-sweep}
clip=${CLIP:-1.0}
sigmas=${SIGMAS:-0 0.3 1}
. "$(dirname "$0")/braid-bin.sh"
mkdir -p "$out"
cfg=examples/compression/fedavg-20.toml
done_already() { [ -f "$1/metrics.csv" ] && tail -n 1 "$1/metrics.csv" | grep -q "^10,"; }
done_already "$out/no-dp" || "$braid" run "$cfg" --out "$out/no-dp" --quiet
for s in $sigmas; do
  name="central-c$clip-s$s"
  done_already "$out/$name" ||
    "$braid" run "$cfg" --out "$out/$name" --quiet \
      --set privacy.mode=central --set privacy.clip="$clip" --set privacy.noise_multiplier="$s"
done
echo "run,accuracy,epsilon" > "$out/summary.csv"
for d in "$out"/*/; do
  n=$(basename "$d")
  tail -n 1 "$d/metrics.csv" | awk -F, -v n="$n" '{print n "," $2 "," $12}' >> "$out/summary.csv"
done
column -s, -t "$out/summary.csv"
