#!/usr/bin/env bash
# Scaling curves: wall time per round and peak memory of a braid FedAvg run as the number of
# simulated clients grows (10, 100, 1000 clients with 10 per round; 10, 50, 100 all per round)
# and as the model grows (mlp, cnn-small, cnn, cnn-deep; 10 clients all per round). Reference
# job otherwise (full Fashion-MNIST, IID, SGD lr 0.05, batch 32, one local epoch); the test set
# is evaluated once, after the last round, so a round's time is its training and averaging.
# Peak memory is the peak PSS sum of the process tree, by ../shared/bench/flower/memwrap.py when
# a Python with psutil is found, else the process's max RSS from /usr/bin/time.
#
# usage: scripts/scaling.sh [OUT]   env: ROUNDS (3), ONLY ("sampled all models": which curves)
# Writes OUT/<curve>/metrics.csv (one row per point) and OUT/*.png (braid compare).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/scaling}
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-sampled all models}
FLOWER=${FLOWER_DIR:-../shared/bench/flower}
PY=${PY:-$HOME/.venv-flower/bin/python}
cargo build --release -p braid
B=./target/release/braid
mkdir -p "$OUT"

# run NAME CLIENTS PER_ROUND MODEL -> prints "s_per_round peak_mib"
run() {
  local name=$1 clients=$2 per=$3 model=$4 dir="$OUT/runs/$1"
  rm -rf "$dir"
  mkdir -p "$OUT/runs"
  local cmd=("$B" run configs/reference-fedavg.toml -q --out "$dir" --set algorithm.rounds="$ROUNDS"
    --set algorithm.eval_every="$ROUNDS" --set partition.clients="$clients"
    --set algorithm.clients_per_round="$per" --set model.name="$model")
  local peak
  if "$PY" -c 'import psutil' 2> /dev/null && [[ -f $FLOWER/memwrap.py ]]; then
    "$PY" "$FLOWER/memwrap.py" "$dir.mem.json" -- "${cmd[@]}" > "$dir.log" 2>&1
    peak=$("$PY" -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["peak_pss_sum_MiB"], 1))' "$dir.mem.json")
  else
    /usr/bin/time -f %M -o "$dir.rss" "${cmd[@]}" > "$dir.log" 2>&1
    peak=$(awk '{printf "%.1f", $1 / 1024}' "$dir.rss")
  fi
  # Median time of the rounds before the last (the last one also evaluates).
  local per_round
  per_round=$(python3 - "$dir/metrics.csv" <<'PY'
import csv, statistics, sys
w = [float(r["wall_s"]) for r in csv.DictReader(open(sys.argv[1]))]
d = [b - a for a, b in zip([0.0] + w, w)]
print(f"{statistics.median(d[:-1] or d):.3f}")
PY
)
  echo "$per_round $peak"
}

curve() { # curve NAME HEADER_X then rows "x clients per model"
  local name=$1 xname=$2
  shift 2
  mkdir -p "$OUT/$name"
  local header="clients,clients_per_round,model,s_per_round,peak_mib"
  [[ $xname == clients ]] || header="$xname,$header"
  echo "$header" > "$OUT/$name/metrics.csv"
  for row in "$@"; do
    read -r x clients per model <<< "$row"
    read -r t m <<< "$(run "$name-$x" "$clients" "$per" "$model")"
    local line="$clients,$per,$model,$t,$m"
    [[ $xname == clients ]] || line="$x,$line"
    echo "$line" | tee -a "$OUT/$name/metrics.csv"
  done
}

for c in $ONLY; do
  case $c in
    sampled) curve sampled clients "10 10 10 cnn" "100 100 10 cnn" "1000 1000 10 cnn" ;;
    all) curve all clients "10 10 10 cnn" "50 50 50 cnn" "100 100 100 cnn" ;;
    models)
      rows=()
      for m in mlp cnn-small cnn cnn-deep; do
        # "train step: NAME (PARAMS parameters, MFLOP MFLOP per training sample), ..."
        mflop=$($B bench-step --model $m --steps 1 --warmup 0 --threads 1 | awk 'NR == 1 { print $6 }')
        rows+=("$mflop 10 10 $m")
      done
      curve models train_mflop_per_sample "${rows[@]}" ;;
    *) echo "unknown curve $c" >&2; exit 1 ;;
  esac
done
for c in $ONLY; do
  x=clients
  [[ $c == models ]] && x=train_mflop_per_sample
  $B compare "$OUT/$c" --x $x --log-x --y s_per_round --title "seconds per round ($c)" --out "$OUT/$c-time.png"
  $B compare "$OUT/$c" --x $x --log-x --y peak_mib --title "peak memory, MiB ($c)" --out "$OUT/$c-memory.png"
done
