#!/usr/bin/env bash
# Two braid builds side by side, alternating in one sitting: the reference job's round
# (`braid bench --source system`), the demo, and (with Flower set up) the reference job against
# Flower + PyTorch. Wall time and peak memory of each run; compare medians.
#
# usage: scripts/bench-before-after.sh BEFORE_BIN AFTER_BIN [REPEATS] [OUT]
#   BEFORE_BIN: e.g. a release build of an older commit
#     (git worktree add /tmp/base REV && CARGO_TARGET_DIR=/tmp/base-target \
#      cargo build --release -p braid --manifest-path /tmp/base/Cargo.toml)
#   env: PY (~/.venv-flower/bin/python, from scripts/setup-flower.sh; skipped if missing),
#        FLOWER_DIR (../shared/bench/flower)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { sed -n 2,11p "$0" >&2; exit 2; }
BEFORE=$1 AFTER=$2 REPEATS=${3:-3} OUT=${4:-runs/bench-before-after}
PY=${PY:-$HOME/.venv-flower/bin/python}
FLOWER=${FLOWER_DIR:-../shared/bench/flower}
mkdir -p "$OUT"
# timed LOG CMD...: runs CMD with its output in LOG; prints its wall time and peak memory.
timed() {
  local log=$1; shift
  /usr/bin/time -o "$OUT/time" -f "%e s, %M KiB peak RSS" "$@" > "$log" 2>&1
  cat "$OUT/time"
}
for rep in $(seq 1 "$REPEATS"); do
  for who in before after; do
    bin=$BEFORE; [[ $who == after ]] && bin=$AFTER
    log=$OUT/bench_${who}_$rep.log
    echo "bench $who $rep: $(timed "$log" "$bin" bench --source system --rounds 1 --workers 2 \
      --no-bare) | $(tail -1 "$log")"
    echo "demo $who $rep: $(timed "$OUT/demo_${who}_$rep.log" "$bin" demo -q)"
  done
done
if [[ -x $PY && -f $FLOWER/flower_fedavg.py ]]; then
  for rep in 1 2; do
    mkdir -p "$OUT/before" "$OUT/after"
    "$PY" "$FLOWER/memwrap.py" "$OUT/before/flower_a_$rep.mem.json" -- "$PY" "$FLOWER/flower_fedavg.py" \
      --clients 10 --fraction 1.0 --rounds 5 --out "$OUT/before/flower_a_$rep.json" \
      > "$OUT/before/flower_a_$rep.log" 2>&1
    cp "$OUT"/before/flower_a_"$rep".* "$OUT/after/"
    for who in before after; do
      bin=$BEFORE; [[ $who == after ]] && bin=$AFTER
      rm -rf "$OUT/$who/braid_a_$rep"
      "$PY" "$FLOWER/memwrap.py" "$OUT/$who/braid_a_$rep.mem.json" -- "$bin" run \
        configs/reference-fedavg.toml -q --out "$OUT/$who/braid_a_$rep" --set seed=42 \
        --set algorithm.rounds=5 --set partition.clients=10 --set algorithm.clients_per_round=10 \
        > "$OUT/$who/braid_a_$rep.log" 2>&1
    done
  done
  for who in before after; do echo "== $who"; "$PY" scripts/bench/flower_summary.py "$OUT/$who"; done
fi
