#!/usr/bin/env bash
# Accuracy against bytes for each compression setting on examples/compression/fedavg-20.toml
# (docs/compression.md). Run from the repository root after `cargo build --release -p braid`;
# about 3-5 minutes per setting on 2 cores. Results: $OUT/<setting>/metrics.csv.
#   OUT=runs/compression scripts/compression-sweep.sh [SETTING ...]   (default: every setting)
# A setting whose metrics.csv already has round 10 is not run again.
set -euo pipefail
B=${B:-$(pwd)/target/release/braid}
BASE=$(pwd)/examples/compression/fedavg-20.toml
OUT=${OUT:-runs/compression}
mkdir -p "$OUT"
UP10='uplink = { sparsify = { kind = "top-k", fraction = 0.1 }, quantize = { kind = "int8", block = 256 } }'
DOWN10='downlink = { sparsify = { kind = "top-k", fraction = 0.1 }, quantize = { kind = "int8", block = 256 } }'
UP20='uplink = { sparsify = { kind = "top-k", fraction = 0.2 }, quantize = { kind = "int8", block = 256 } }'
DOWN20='downlink = { sparsify = { kind = "top-k", fraction = 0.2 }, quantize = { kind = "int8", block = 256 } }'
UP5='uplink = { sparsify = { kind = "top-k", fraction = 0.05 }, quantize = { kind = "int8", block = 256 } }'
DOWN5='downlink = { sparsify = { kind = "top-k", fraction = 0.05 }, quantize = { kind = "int8", block = 256 } }'
UP1='uplink = { sparsify = { kind = "top-k", fraction = 0.01 }, quantize = { kind = "fp16" } }'
DOWN1='downlink = { sparsify = { kind = "top-k", fraction = 0.01 }, quantize = { kind = "fp16" } }'
setting() { # name -> the [compression] table's lines, one per line
  case $1 in
    none) ;;
    fp16) printf '%s\n' 'uplink = { quantize = { kind = "fp16" } }' 'downlink = { quantize = { kind = "fp16" } }' ;;
    int8) printf '%s\n' 'uplink = { quantize = { kind = "int8", block = 256 } }' 'downlink = { quantize = { kind = "int8", block = 256 } }' ;;
    int4) printf '%s\n' 'uplink = { quantize = { kind = "int4", block = 64 } }' 'downlink = { quantize = { kind = "int4", block = 64 } }' ;;
    topk1) printf '%s\n' "$UP1" ;;
    topk1-ef) printf '%s\n' "$UP1" 'error_feedback = true' ;;
    topk1-ef-int8) printf '%s\n' "$UP1" 'error_feedback = true' 'downlink = { quantize = { kind = "int8", block = 256 } }' ;;
    topk1-ef-int4) printf '%s\n' "$UP1" 'error_feedback = true' 'downlink = { quantize = { kind = "int4", block = 64 } }' ;;
    # Both ways sparse: error feedback on the clients, the downlink as changes to the clients' copy.
    delta-topk20) printf '%s\n' "$UP20" 'error_feedback = true' "$DOWN20" 'downlink_delta = true' ;;
    delta-topk10) printf '%s\n' "$UP10" 'error_feedback = true' "$DOWN10" 'downlink_delta = true' ;;
    delta-topk5) printf '%s\n' "$UP5" 'error_feedback = true' "$DOWN5" 'downlink_delta = true' ;;
    # PowerSGD: each weight matrix as rank-4 factors in fp16, with error feedback.
    powersgd4) printf '%s\n' 'uplink = { sparsify = { kind = "power-sgd", rank = 4 }, quantize = { kind = "fp16" } }' 'error_feedback = true' ;;
    powersgd4-delta) printf '%s\n' 'uplink = { sparsify = { kind = "power-sgd", rank = 4 }, quantize = { kind = "fp16" } }' 'error_feedback = true' "$DOWN20" 'downlink_delta = true' ;;
    delta-topk1) printf '%s\n' "$UP1" 'error_feedback = true' "$DOWN1" 'downlink_delta = true' ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
}
ALL="none fp16 int8 int4 topk1 topk1-ef topk1-ef-int8 topk1-ef-int4 delta-topk20 delta-topk10 delta-topk5 delta-topk1 powersgd4 powersgd4-delta"
for name in ${@:-$ALL}; do
  lines=$(setting "$name")
  if [ -f "$OUT/$name/metrics.csv" ] && tail -n 1 "$OUT/$name/metrics.csv" | grep -q '^10,'; then
    continue
  fi
  if [ -n "$lines" ]; then
    { cat "$BASE"; printf '\n[compression]\n%s\n' "$lines"; } > "$OUT/$name.toml"
  else
    cp "$BASE" "$OUT/$name.toml"
  fi
  echo "== $name"
  "$B" run "$OUT/$name.toml" -q --out "$OUT/$name" | tail -1
done
