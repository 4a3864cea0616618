#!/usr/bin/env bash
# braid against Flower + PyTorch on the reference FedAvg job (../shared/bench/flower), run
# alternately in one sitting: wall time, time per round, accuracy per round and peak memory of
# the whole process tree (both measured by the reference's memwrap.py), with the ratios.
#
# usage: scripts/bench-flower.sh [REPEATS] [OUT]
#   env: ROUNDS (5), SETTINGS ("a": 10 clients all per round; "b": 100 clients, 10 per round),
#        FLOWER_DIR (../shared/bench/flower), PY (~/.venv-flower/bin/python, made by
#        scripts/setup-flower.sh), BRAID_SEEDS ("42 1 2": repeat i runs braid with the i-th seed,
#        cycling; the reference job's seeds are fixed in its code)
# Nothing else should run on the machine meanwhile; compare ratios from the same sitting.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-2}
OUT=${2:-runs/bench-flower}
ROUNDS=${ROUNDS:-5}
SETTINGS=${SETTINGS:-a}
read -r -a SEEDS <<< "${BRAID_SEEDS:-42 1 2}"
FLOWER=${FLOWER_DIR:-../shared/bench/flower}
PY=${PY:-$HOME/.venv-flower/bin/python}
if [[ ! -x $PY ]]; then
  echo "no Python with Flower and PyTorch at $PY: run scripts/setup-flower.sh first" >&2
  exit 1
fi
if [[ ! -f $FLOWER/flower_fedavg.py ]]; then
  echo "no Flower reference job at $FLOWER (set FLOWER_DIR)" >&2
  exit 1
fi
cargo build --release -p braid
mkdir -p "$OUT"
for rep in $(seq 1 "$REPEATS"); do
  for s in $SETTINGS; do
    case $s in
      a) clients=10 fraction=1.0 per=10 ;;
      b) clients=100 fraction=0.1 per=10 ;;
      *) echo "unknown setting $s (a or b)" >&2; exit 1 ;;
    esac
    echo "== repeat $rep, setting $s: Flower + PyTorch"
    "$PY" "$FLOWER/memwrap.py" "$OUT/flower_${s}_$rep.mem.json" -- \
      "$PY" "$FLOWER/flower_fedavg.py" --clients $clients --fraction $fraction --rounds "$ROUNDS" \
      --out "$OUT/flower_${s}_$rep.json" > "$OUT/flower_${s}_$rep.log" 2>&1
    seed=${SEEDS[$(( (rep - 1) % ${#SEEDS[@]} ))]}
    echo "== repeat $rep, setting $s: braid (seed $seed)"
    rm -rf "$OUT/braid_${s}_$rep"
    "$PY" "$FLOWER/memwrap.py" "$OUT/braid_${s}_$rep.mem.json" -- \
      ./target/release/braid run configs/reference-fedavg.toml -q --out "$OUT/braid_${s}_$rep" \
      --set seed="$seed" --set algorithm.rounds="$ROUNDS" --set partition.clients=$clients \
      --set algorithm.clients_per_round=$per > "$OUT/braid_${s}_$rep.log" 2>&1
  done
done
"$PY" scripts/bench/flower_summary.py "$OUT" | tee "$OUT/summary.md"
