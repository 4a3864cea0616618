#!/usr/bin/env bash
# The DFML comparison of docs/dfml.md: DFML against isolated local training, FML and Def-KT on the
# same 50 clients, data and heterogeneous models (cnn-small, mlp, cnn by turns), under
# Dirichlet(0.5) non-IID and IID data; and a homogeneous setting (every client cnn-small,
# non-IID) where FedAvg can take part too.
#   scripts/dfml-compare.sh [ROUNDS] [OUT]        (defaults: 100, runs/dfml-compare)
#   SETTINGS="noniid" scripts/dfml-compare.sh     (only some settings; default "noniid iid homog")
# A run whose OUT/<name>/metrics.csv already reaches round ROUNDS is not run again, so an
# interrupted comparison resumes. Writes OUT/summary.csv and one accuracy plot per setting.
set -euo pipefail
rounds=${1:-100}
out=${2:-runs/dfml-compare}
. "$(dirname "$0")/braid-bin.sh"
mkdir -p "$out/configs"
settings=${SETTINGS:-noniid iid homog}

# True when DIR/metrics.csv has a line for round ROUNDS.
done_already() { [ -f "$1/metrics.csv" ] && tail -n 1 "$1/metrics.csv" | grep -q "^$rounds,"; }

run() { # name config [--set ...]
  local name=$1 config=$2
  shift 2
  done_already "$out/$name" ||
    "$braid" run "$config" --set algorithm.rounds="$rounds" --out "$out/$name" --quiet "$@"
}

for setting in $settings; do
  case $setting in
    noniid|homog) src=examples/dfml ;;
    iid)
      src="$out/configs"
      for f in dfml local fml def-kt fedavg; do
        sed -e 's/^kind = "dirichlet"$/kind = "iid"/' -e '/^alpha = 0.5$/d' \
          "examples/dfml/$f.toml" > "$src/$f.toml"
      done ;;
    *) echo "unknown setting $setting (noniid, iid, homog)" >&2; exit 2 ;;
  esac
  if [ "$setting" = homog ]; then
    algos="dfml fedavg local def-kt"
    extra=(--set 'mutual.models=["cnn-small"]')
  else
    algos="dfml local fml def-kt"
    extra=()
  fi
  runs=()
  for a in $algos; do
    if [ "$a" = fedavg ]; then
      run "$setting-$a" "$src/$a.toml"
    else
      run "$setting-$a" "$src/$a.toml" "${extra[@]}"
    fi
    runs+=("$out/$setting-$a")
  done
  "$braid" compare "${runs[@]}" --out "$out/$setting-accuracy.png" --x round --y accuracy \
    --title "DFML vs baselines, $setting, 50 clients"
done

# One line per run: the final round's global accuracy (current and peak models), per-model
# accuracy, and bytes.
python3 - "$out" "$rounds" <<'PY'
import csv, os, sys
out, rounds = sys.argv[1], sys.argv[2]
lines = ["run,setting,algorithm,rounds,accuracy,peak_accuracy,acc_cnn_small,acc_mlp,acc_cnn,global_model_accuracy,mb_total,wall_s"]
for name in sorted(os.listdir(out)):
    f = os.path.join(out, name, "metrics.csv")
    if not os.path.exists(f):
        continue
    rows = list(csv.DictReader(open(f)))
    last = rows[-1]
    setting, algo = name.split("-", 1)
    if "round" not in last:
        continue
    mb = int(last.get("cum_bytes") or 0) / 1e6
    g = lambda k: last.get(k, "") or ""
    lines.append(",".join([name, setting, algo, g("round"), g("accuracy"), g("peak_accuracy"),
        g("acc_cnn-small"), g("acc_mlp"), g("acc_cnn"), g("global_model_accuracy"), f"{mb:.1f}", g("wall_s")]))
open(os.path.join(out, "summary.csv"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
