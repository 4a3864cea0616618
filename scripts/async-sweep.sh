#!/usr/bin/env bash
# Synchronous FedAvg against FedBuff under the simulator's straggler model (docs/async.md):
# examples/async/fedavg-stragglers.toml and fedbuff.toml, and variants. Run from the
# repository root; about 6-10 minutes per run on 2 cores. Results: OUT/<run>/metrics.csv,
# OUT/summary.csv (final accuracy, simulated seconds, client updates).
#   scripts/async-sweep.sh [OUT] [RUN ...]     (default OUT runs/async, every run)
# A run whose metrics.csv exists is not run again.
set -euo pipefail
out=${1:-runs/async}
shift || true
B=${B:-./target/release/braid}
[ -x "$B" ] || cargo build --release -p braid
mkdir -p "$out"
sync=examples/async/fedavg-stragglers.toml
buff=examples/async/fedbuff.toml
run() { # name, config, then --set overrides
  local name=$1 cfg=$2; shift 2
  [ -f "$out/$name/metrics.csv" ] && return 0
  echo "== $name"
  "$B" run "$cfg" --out "$out/$name" --quiet "$@" | tail -1
}
for r in ${@:-fedavg fedavg-timeout fedbuff fedbuff-constant fedbuff-c20}; do
  case $r in
    fedavg) run fedavg "$sync" ;;
    # Skip clients that take more than 20 simulated seconds (the stragglers here).
    fedavg-timeout) run fedavg-timeout "$sync" --set algorithm.round_timeout_s=20 ;;
    fedbuff) run fedbuff "$buff" ;;
    fedbuff-constant) run fedbuff-constant "$buff" --set 'fedbuff.staleness={ kind = "constant" }' ;;
    fedbuff-c20) run fedbuff-c20 "$buff" --set fedbuff.concurrency=20 --set fedbuff.buffer=10 --set algorithm.rounds=20 ;;
    *) echo "unknown run $r" >&2; exit 2 ;;
  esac
done
echo "run,accuracy,sim_time_s,updates,wall_s" > "$out/summary.csv"
for d in "$out"/*/; do
  n=$(basename "$d")
  [ -f "$d/metrics.csv" ] || continue
  awk -F, -v n="$n" 'NR > 1 { u += $5; a = $2; t = $13; w = $NF } END { print n "," a "," t "," u "," w }' "$d/metrics.csv" >> "$out/summary.csv"
done
column -s, -t "$out/summary.csv"
