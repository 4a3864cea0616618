#!/usr/bin/env bash
# The split-learning comparison of docs/split-learning.md: GPSL, FPLS and FLS at K = 64, 32, 16
# clients, severe (2 classes per client) and mild (5 classes) extended-Dirichlet non-IID, plus
# the centralized reference; same model, B, learning rate and epochs for all.
#   scripts/split-sweep.sh [EPOCHS] [OUT]      (defaults: 3, runs/split-sweep)
#   CLIENTS="32 16" scripts/split-sweep.sh     (only some client counts; default "64 32 16")
# Writes OUT/summary.csv: one line per run with the final accuracy and per-epoch means.
# A run whose OUT/<name>/metrics.csv already holds EPOCHS epochs is not run again, so an
# interrupted sweep resumes where it stopped.
set -euo pipefail
epochs=${1:-3}
out=${2:-runs/split-sweep}
. "$(dirname "$0")/braid-bin.sh"
mkdir -p "$out"
summary="$out/summary.csv"
echo "run,clients,classes_per_client,sampler,epochs,accuracy,steps_per_epoch,min_batch,max_batch,mean_clients,mb_per_epoch,sim_s_per_epoch,wall_s" > "$summary"

# Last line of metrics.csv -> the summary's columns (means over epochs where they vary).
collect() { # name clients classes sampler dir
  python3 - "$@" "$epochs" >> "$summary" <<'PY'
import csv, sys
name, k, c, sampler, d, epochs = sys.argv[1:7]
rows = list(csv.DictReader(open(f"{d}/metrics.csv")))
acc = [r["accuracy"] for r in rows if r["accuracy"]][-1]
n = len(rows)
if "steps" in rows[0]:
    steps = sum(int(r["steps"]) for r in rows) / n
    mb = sum(int(r["bytes_up"]) + int(r["bytes_down"]) for r in rows) / n / 1e6
    sim = sum(float(r["sim_time_s"]) for r in rows) / n
    lo = min(int(r["min_batch"]) for r in rows); hi = max(int(r["max_batch"]) for r in rows)
    cl = sum(float(r["mean_clients"]) for r in rows) / n
    print(f"{name},{k},{c},{sampler},{epochs},{acc},{steps:.1f},{lo},{hi},{cl:.1f},{mb:.1f},{sim:.1f},{rows[-1]['wall_s']}")
else:
    print(f"{name},1,-,centralized,{epochs},{acc},{int(rows[0]['local_steps'])},128,128,1,0,,{rows[-1]['wall_s']}")
PY
}

clients=${CLIENTS:-64 32 16}
# True when DIR/metrics.csv has EPOCHS data lines (the run finished).
done_already() { [ -f "$1/metrics.csv" ] && [ "$(($(wc -l < "$1/metrics.csv") - 1))" -ge "$epochs" ]; }

done_already "$out/centralized" ||
  "$braid" run examples/split/centralized.toml --set algorithm.rounds="$epochs" --out "$out/centralized" --quiet
collect centralized 1 - centralized "$out/centralized"
for k in $clients; do
  for c in 2 5; do
    for s in global fixed-proportional fixed-local; do
      name="k$k-c$c-$s"
      done_already "$out/$name" ||
      "$braid" run examples/split/gpsl.toml --set algorithm.rounds="$epochs" \
        --set partition.clients="$k" --set partition.classes_per_client="$c" \
        --set split.sampler="$s" --out "$out/$name" --quiet
      collect "$name" "$k" "$c" "$s" "$out/$name"
    done
  done
done
column -s, -t "$summary"
