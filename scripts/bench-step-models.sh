#!/usr/bin/env bash
# One training step (batch 32, plain SGD lr 0.05) of the built-in resnet20 and transformer in
# braid and the same networks in PyTorch (scripts/bench/torch_step.py), alternately in one
# sitting, at 1 and 2 threads; prints the ratios of the medians. The ResNet steps on generated
# CIFAR-10-format files (the cost of a step does not depend on pixel values), the transformer
# on 64-byte windows of /usr/share/common-licenses. Figures in docs/step-profile.md.
# usage: scripts/bench-step-models.sh [REPEATS] [OUT]   env: STEPS (100), THREADS ("1,2"),
#        PY (a Python with torch; default ~/.venv-flower/bin/python, made by scripts/setup-flower.sh),
#        BUILD=0 to time the release binary already built
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
OUT=${2:-runs/bench-step-models}
STEPS=${STEPS:-100}
THREADS=${THREADS:-1,2}
PY=${PY:-$HOME/.venv-flower/bin/python}
if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "no Python with PyTorch at $PY: run scripts/setup-flower.sh first, or set PY" >&2
  exit 1
fi
[[ ${BUILD:-1} == 1 ]] && cargo build --release -p braid
mkdir -p "$OUT/cifar"
rm -f "$OUT"/*.jsonl
"$PY" - "$OUT/cifar" <<'PY'
import os, random, sys
r = random.Random(0)
for name in ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
             "data_batch_5.bin", "test_batch.bin"]:
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        for _ in range(256):
            f.write(bytes([r.randrange(10)]) + r.randbytes(3072))
PY
cat > "$OUT/resnet20.toml" <<TOML
[data]
dataset = "cifar"
set = "cifar-10"
dir = "$OUT/cifar"
[model]
name = "resnet20"
[algorithm]
name = "fedavg"
rounds = 1
TOML
cat > "$OUT/transformer.toml" <<TOML
[data]
dataset = "text"
path = "/usr/share/common-licenses"
window = 64
[model]
name = "transformer"
[algorithm]
name = "fedavg"
rounds = 1
TOML
for rep in $(seq 1 "$REPEATS"); do
  for model in resnet20 transformer; do
    ./target/release/braid bench-step --config "$OUT/$model.toml" --steps "$STEPS" --warmup 10 \
      --batch 32 --threads "$THREADS" --json "$OUT/braid_${model}_$rep.jsonl"
    "$PY" scripts/bench/torch_step.py --model "$model" --steps "$STEPS" --warmup 10 --batch 32 \
      --threads "$THREADS" --json "$OUT/torch_${model}_$rep.jsonl"
  done
done
"$PY" - "$OUT" <<'PY'
import glob, json, statistics, sys
rows = [json.loads(l) for p in glob.glob(sys.argv[1] + "/*.jsonl") for l in open(p)]
print("\nmedian ms per step over the repeats (each a median of its timed steps)")
print(f"{'model':>12} {'threads':>8} {'braid':>8} {'pytorch':>8} {'braid/pytorch':>14}   forward / backward+update ratio")
for model in ["resnet20", "transformer"]:
    for t in sorted({r["threads"] for r in rows}):
        b = [r for r in rows if r["impl"] == "braid" and r["model"] == model and r["threads"] == t]
        p = [r for r in rows if r["impl"] == "pytorch" and r["model"] == model and r["threads"] == t]
        if not b or not p:
            continue
        m = lambda rs, k: statistics.median(r[k] for r in rs)
        fb, fp = m(b, "forward_ms"), m(p, "forward_ms")
        bb, bp = m(b, "backward_ms") + m(b, "update_ms"), m(p, "backward_ms") + m(p, "update_ms")
        print(f"{model:>12} {t:>8} {m(b, 'median_ms'):>8.2f} {m(p, 'median_ms'):>8.2f} {m(b, 'median_ms') / m(p, 'median_ms'):>14.2f}   {fb / fp:.2f} / {bb / bp:.2f}")
PY
