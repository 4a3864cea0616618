#!/usr/bin/env bash
# Halt latency of an 8-peer (+ monitor) dsgd run on loopback: braid launch, then braid halt.
# Run from the repository root after `cargo build --release -p braid`. Prints how long after
# the halt command started every node had stopped training (its signed `halted` log entry)
# and had exited, then verifies the run logs.
set -euo pipefail
B=${B:-$(pwd)/target/release/braid}
EX=$(pwd)/examples/deploy/dsgd.toml
D=$(mktemp -d)
cd "$D"
HK=$($B keygen --out halter.key)
$B launch "$EX" --nodes 8 --out run --set model.name=mlp \
  --set algorithm.steps=1000000 --set algorithm.eval_every=100 \
  --set "network.halt_keys=[\"$HK\"]" > launch.out 2>&1 &
L=$!
sleep 10
T0=$(python3 -c 'import time;print(time.time())')
$B halt run/launch.toml --key halter.key > halt.out
wait $L
python3 - "$T0" run <<'PY'
import sys, json, glob
t0 = float(sys.argv[1]); halted = []; left = []
for f in sorted(glob.glob(sys.argv[2] + "/node-*/runlog.jsonl")):
    for line in open(f):
        e = json.loads(line.split(" ", 1)[1])
        if e["kind"] == "halted": halted.append(e["t"] - t0)
        if e["kind"] == "leave": left.append(e["t"] - t0)
print(f"nodes {len(halted)}: stopped training within {max(halted)*1e3:.0f} ms (median {sorted(halted)[len(halted)//2]*1e3:.0f} ms), all exited within {max(left)*1e3:.0f} ms of the halt command starting")
PY
$B audit verify run | tail -1
