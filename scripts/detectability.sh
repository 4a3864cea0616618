#!/usr/bin/env bash
# What a network observer learns of a braid run (docs/governance.md#detectability-from-outside):
# launches a small FedAvg run (4 clients, MLP, bundled data, 5 rounds) on loopback three ways
# (plain; top-1% fp16 uplink with error feedback; secure aggregation), captures its packets
# with tcpdump (headers only: the payload is Noise-encrypted anyway), and infers the rounds
# and the model size from packet sizes and timing alone (scripts/detectability.py).
# Needs root (or CAP_NET_RAW) and tcpdump (Debian: apt-get install tcpdump).
# usage: scripts/detectability.sh [OUT_DIR]   (BRAID=path/to/braid skips the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/detectability}
command -v tcpdump >/dev/null || { echo "needs tcpdump (apt-get install tcpdump)" >&2; exit 1; }
if [ -z "${BRAID:-}" ]; then
  cargo build --release -q -p braid
  BRAID=$PWD/target/release/braid
fi
B=$BRAID
mkdir -p "$out"
params=199210
declare -A extra=(
  [plain]=""
  [topk]='--set compression.uplink={sparsify={kind="top-k",fraction=0.01},quantize={kind="fp16"}} --set compression.error_feedback=true'
  [secagg]='--set secure_aggregation.threshold=2'
)
for v in plain topk secagg; do
  rm -rf "$out/$v"
  tcpdump -i lo -s 128 -w "$out/$v.pcap" tcp 2>/dev/null &
  dump=$!
  trap 'kill "$dump" 2>/dev/null || true' EXIT
  sleep 1
  # shellcheck disable=SC2086
  "$B" launch scripts/detectability.toml --out "$out/$v" ${extra[$v]} > "$out/$v.log" 2>&1
  sleep 1
  kill "$dump"; wait "$dump" 2>/dev/null || true
  echo "== $v"
  python3 scripts/detectability.py "$out/$v.pcap" --params $params --rounds 5 | tee "$out/$v.json"
done
