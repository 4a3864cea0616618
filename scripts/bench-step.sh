#!/usr/bin/env bash
# One training step of the reference CNN (batch 32, SGD) in braid and in PyTorch, alternately in
# one sitting, at 1 and 2 threads; prints both tables and the ratios of the medians.
# usage: scripts/bench-step.sh [REPEATS] [OUT]   env: STEPS (300), BATCH (32), THREADS ("1,2"),
#        PY (~/.venv-flower/bin/python, made by scripts/setup-flower.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
OUT=${2:-runs/bench-step}
STEPS=${STEPS:-300}
BATCH=${BATCH:-32}
THREADS=${THREADS:-1,2}
PY=${PY:-$HOME/.venv-flower/bin/python}
if [[ ! -x $PY ]]; then
  echo "no Python with PyTorch at $PY: run scripts/setup-flower.sh first" >&2
  exit 1
fi
cargo build --release -p braid
mkdir -p "$OUT"
rm -f "$OUT"/*.jsonl
for rep in $(seq 1 "$REPEATS"); do
  ./target/release/braid bench-step --steps "$STEPS" --batch "$BATCH" --threads "$THREADS" \
    --source system --json "$OUT/braid_$rep.jsonl"
  "$PY" scripts/bench/torch_step.py --steps "$STEPS" --batch "$BATCH" --threads "$THREADS" \
    --json "$OUT/torch_$rep.jsonl"
done
"$PY" - "$OUT" <<'PY'
import glob, json, statistics, sys
rows = [json.loads(l) for p in glob.glob(sys.argv[1] + "/*.jsonl") for l in open(p)]
print("\nmedian ms per step over the repeats (each a median of its timed steps)")
print(f"{'threads':>8} {'braid':>8} {'pytorch':>8} {'braid/pytorch':>14}   forward / backward+update ratio")
for t in sorted({r["threads"] for r in rows}):
    b = [r for r in rows if r["impl"] == "braid" and r["threads"] == t]
    p = [r for r in rows if r["impl"] == "pytorch" and r["threads"] == t]
    m = lambda rs, k: statistics.median(r[k] for r in rs)
    fb, fp = m(b, "forward_ms"), m(p, "forward_ms")
    bb, bp = m(b, "backward_ms") + m(b, "update_ms"), m(p, "backward_ms") + m(p, "update_ms")
    print(f"{t:>8} {m(b, 'median_ms'):>8.2f} {m(p, 'median_ms'):>8.2f} {m(b, 'median_ms') / m(p, 'median_ms'):>14.2f}   {fb / fp:.2f} / {bb / bp:.2f}")
PY
