#!/usr/bin/env bash
# The byte-level transformer language model on Debian's licence texts
# (/usr/share/common-licenses): FedAvg on 16 clients, DiLoCo's outer Nesterov step with
# H = 25 local steps, and dsgd on 16 peers with the global merge against parallel SGD.
# Figures in docs/text.md. usage: scripts/text-lm.sh [OUT]   (default runs/text-lm)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/text-lm}
cargo build --release -p braid
mkdir -p "$OUT"
./target/release/braid run examples/text/fedavg.toml --set algorithm.rounds=10 --out "$OUT/fedavg" -q
./target/release/braid run examples/text/diloco.toml --out "$OUT/diloco" -q
./target/release/braid run examples/text/dsgd.toml --baseline --out "$OUT/dsgd" -q
for run in fedavg diloco; do
  echo "== $run: round, test loss (nats per byte), perplexity, next-byte accuracy"
  awk -F, 'NR > 1 { printf "%s %.4f %.2f %.4f\n", $1, $3, exp($3), $2 }' "$OUT/$run/metrics.csv"
done
echo "== dsgd: see $OUT/dsgd (metrics.csv, and the baseline's)"
ls "$OUT/dsgd"
