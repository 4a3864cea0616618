#!/usr/bin/env bash
# Accuracy against bytes for each compression setting on examples/compression/fedavg-20.toml
# (docs/compression.md). Run from the repository root after `cargo build --release -p braid`;
# about 4-5 minutes per setting on 2 cores. Results: $OUT/<setting>/metrics.csv.
set -euo pipefail
B=${B:-$(pwd)/target/release/braid}
BASE=$(pwd)/examples/compression/fedavg-20.toml
OUT=${OUT:-runs/compression}
mkdir -p "$OUT"
run() { # name, then the [compression] table's lines
  local name=$1; shift
  { cat "$BASE"; printf '\n[compression]\n'; printf '%s\n' "$@"; } > "$OUT/$name.toml"
  "$B" run "$OUT/$name.toml" -q --out "$OUT/$name" | tail -1
}
"$B" run "$BASE" -q --out "$OUT/none" | tail -1
run fp16 'uplink = { quantize = { kind = "fp16" } }' 'downlink = { quantize = { kind = "fp16" } }'
run int8 'uplink = { quantize = { kind = "int8", block = 256 } }' 'downlink = { quantize = { kind = "int8", block = 256 } }'
run int4 'uplink = { quantize = { kind = "int4", block = 64 } }' 'downlink = { quantize = { kind = "int4", block = 64 } }'
run topk1 'uplink = { sparsify = { kind = "top-k", fraction = 0.01 }, quantize = { kind = "fp16" } }'
run topk1-ef 'uplink = { sparsify = { kind = "top-k", fraction = 0.01 }, quantize = { kind = "fp16" } }' 'error_feedback = true'
run topk1-ef-int8 'uplink = { sparsify = { kind = "top-k", fraction = 0.01 }, quantize = { kind = "fp16" } }' 'error_feedback = true' 'downlink = { quantize = { kind = "int8", block = 256 } }'
run topk1-ef-int4 'uplink = { sparsify = { kind = "top-k", fraction = 0.01 }, quantize = { kind = "fp16" } }' 'error_feedback = true' 'downlink = { quantize = { kind = "int4", block = 64 } }'
