#!/usr/bin/env bash
# Accuracy under attack for each robust aggregation rule (docs/privacy.md): the issue's setting
# (examples/compression/fedavg-20.toml: FedAvg, 20 clients all per round, Dirichlet(0.5), full
# Fashion-MNIST, reference CNN) for ROUNDS rounds, with no attackers and with each fraction in
# FRACTIONS of attacking clients, under each rule. ATTACK=sign-flip (default: each attacker
# sends -SCALE times its update) or label-flip (each attacker trains on labels l -> 9 - l).
#   scripts/robust-sweep.sh [OUT]   (default runs/robust-sweep; ROUNDS=5, FRACTIONS="0 0.1 0.2",
#                                    SCALE=4, ATTACK=sign-flip,
#                                    RULES="mean median trimmed-mean krum multi-krum norm-clip")
# A run whose metrics.csv is complete is not run again. Writes OUT/summary.csv.
set -euo pipefail
out=${1:-runs/robust-sweep}
rounds=${ROUNDS:-5}
fractions=${FRACTIONS:-0 0.1 0.2}
scale=${SCALE:-4}
attack=${ATTACK:-sign-flip}
case $attack in
  sign-flip) kind="{ kind = \"sign-flip\", scale = $scale }" tag="" ;;
  label-flip) kind='{ kind = "label-flip" }' tag="-label-flip" ;;
  *) echo "unknown attack $attack (sign-flip or label-flip)" >&2; exit 1 ;;
esac
rules=${RULES:-mean median trimmed-mean krum multi-krum norm-clip}
. "$(dirname "$0")/braid-bin.sh"
mkdir -p "$out"
cfg=examples/compression/fedavg-20.toml
done_already() { [ -f "$1/metrics.csv" ] && tail -n 1 "$1/metrics.csv" | grep -q "^$rounds,"; }
rule_toml() {
  case $1 in
    mean) echo '{ kind = "mean" }' ;;
    median) echo '{ kind = "median" }' ;;
    trimmed-mean) echo '{ kind = "trimmed-mean", trim = 0.2 }' ;;
    krum) echo '{ kind = "krum", f = 4 }' ;;
    multi-krum) echo '{ kind = "multi-krum", f = 4, m = 10 }' ;;
    norm-clip) echo '{ kind = "norm-clip", clip = 1.0 }' ;;
    *) echo "unknown rule $1" >&2; exit 1 ;;
  esac
}
for rule in $rules; do
  for f in $fractions; do
    name="$rule$tag-f$f"
    done_already "$out/$name" && continue
    "$braid" run "$cfg" --out "$out/$name" --quiet --set algorithm.rounds="$rounds" \
      --set "algorithm.aggregator=$(rule_toml "$rule")" \
      --set attack.fraction="$f" --set "attack.kind=$kind"
  done
done
echo "rule,attackers,accuracy" > "$out/summary$tag.csv"
for rule in $rules; do
  for f in $fractions; do
    tail -n 1 "$out/$rule$tag-f$f/metrics.csv" | awk -F, -v r="$rule" -v f="$f" '{print r "," f "," $2}' >> "$out/summary$tag.csv"
  done
done
column -s, -t "$out/summary$tag.csv"
