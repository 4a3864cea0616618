#!/usr/bin/env bash
# GPU check: on a machine with a GPU, braid's numbers on the reference job (configs/
# reference-fedavg.toml: FedAvg, 10 IID clients, full Fashion-MNIST, the reference CNN, SGD lr
# 0.05, batch 32, one local epoch, server evaluation after every round) for 5 rounds, run
#   - on the CPU (every core; the accuracy the GPU runs are compared with),
#   - on the GPU with clients one after another (runtime.workers = 1),
#   - on the GPU with all 10 clients at once (runtime.workers = 10: a thread, a model and an
#     optimizer per client, their work queued on the one GPU concurrently),
#   - on the GPU with all 10 clients batched (runtime.batch_clients = true: their models
#     stacked into one computation, grouped convolutions and batched matrix products),
# plus the reference CNN's training step at batch 32 on the GPU, alone and 10 stacked (both
# ways a stack can compute its convolutions; batched runs use the unfolded one on a GPU). Prints one JSON object (also
# written to OUT/gpu-check.json): per mode the wall time, the seconds of each round, the
# accuracy after each round, the GPU's peak memory in use (nvidia-smi, where there is one).
#
# usage: scripts/gpu-check.sh [OUT]
#   env: DEVICE (gpu; or gpu:N, gpu:software), ROUNDS (5), FASHION (system: Debian's
#        dataset-fashion-mnist; or a directory of the four IDX files), BRAID (a built braid
#        binary; default target/release/braid, built with cargo if missing), STEPS (200),
#        SET (more KEY=VALUE overrides for every run, space separated, e.g.
#        "data.train_limit=2000" for a quick try)
# Needs: the Vulkan loader (Debian's libvulkan1) and the GPU's Vulkan driver (NVIDIA's driver
# ships one: if the loader does not find it, export VK_DRIVER_FILES=/path/to/nvidia_icd.json),
# python3 (to write the JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu-check}
DEVICE=${DEVICE:-gpu}
ROUNDS=${ROUNDS:-5}
FASHION=${FASHION:-system}
STEPS=${STEPS:-200}
BRAID=${BRAID:-target/release/braid}

need() { echo "gpu-check: $*" >&2; exit 2; }
command -v python3 > /dev/null || need "python3 is missing (it writes the JSON)"
if ! ldconfig -p 2> /dev/null | grep -q 'libvulkan\.so\.1'; then
  need "no Vulkan loader (libvulkan.so.1): install Debian's libvulkan1 (apt-get install libvulkan1) and the GPU's Vulkan driver"
fi
if [[ ! -x $BRAID ]]; then
  command -v cargo > /dev/null || need "no braid binary at $BRAID and no cargo to build one"
  cargo build --release -p braid >&2
fi
mkdir -p "$OUT"

# Peak GPU memory in use while a command runs, in MiB (empty without nvidia-smi).
gpu_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2> /dev/null | head -1; }
read -r -a extra <<< "${SET:-}"
sets=()
for kv in "${extra[@]}"; do sets+=(--set "$kv"); done
run_mode() { # NAME DEVICE WORKERS BATCHED
  local name=$1 device=$2 workers=$3 batched=$4 dir="$OUT/$1"
  rm -rf "$dir"
  local base peak=0 sampler=""
  base=$(gpu_mem || true)
  if [[ -n $base ]]; then
    (while sleep 0.2; do gpu_mem; done > "$dir.mem") &
    sampler=$!
  fi
  local t0 t1
  t0=$(date +%s%N)
  "$BRAID" run configs/reference-fedavg.toml -q --out "$dir" --set algorithm.rounds="$ROUNDS" \
    --set data.source="\"$FASHION\"" --set runtime.device="\"$device\"" \
    --set runtime.workers="$workers" --set runtime.batch_clients="$batched" ${sets[@]+"${sets[@]}"} \
    > "$dir.log" 2>&1 || { cat "$dir.log" >&2; need "the $name run failed (log above)"; }
  t1=$(date +%s%N)
  if [[ -n $sampler ]]; then
    kill "$sampler" 2> /dev/null || true
    peak=$(sort -n "$dir.mem" | tail -1)
    peak=$((peak - base))
  else
    peak=""
  fi
  echo "{\"mode\": \"$name\", \"device\": \"$device\", \"workers\": $workers, \"batch_clients\": $batched, \"wall_ms\": $(((t1 - t0) / 1000000)), \"gpu_mem_mib\": \"${peak}\", \"dir\": \"$dir\"}" >> "$OUT/modes.jsonl"
}

rm -f "$OUT/modes.jsonl"
"$BRAID" bench-step --device "$DEVICE" --threads 1 --steps "$STEPS" --batch 32 \
  --source "$FASHION" --json "$OUT/step.json" > "$OUT/step.log" 2>&1 || { cat "$OUT/step.log" >&2; need "bench-step on $DEVICE failed (log above)"; }
for form in unfolded grouped; do
  "$BRAID" bench-step --device "$DEVICE" --threads 1 --steps "$STEPS" --batch 32 --stack 10 \
    --stack-conv $form --source "$FASHION" --json "$OUT/step-stack-$form.json" > "$OUT/step-stack-$form.log" 2>&1 ||
    { cat "$OUT/step-stack-$form.log" >&2; need "bench-step --stack 10 --stack-conv $form on $DEVICE failed (log above)"; }
done
run_mode cpu cpu "$(nproc)" false
run_mode gpu-sequential "$DEVICE" 1 false
run_mode gpu-concurrent "$DEVICE" 10 false
run_mode gpu-batched "$DEVICE" 10 true

python3 - "$OUT" <<'PY'
import json, subprocess, sys
out = sys.argv[1]
modes = [json.loads(l) for l in open(f"{out}/modes.jsonl")]
step = json.loads(open(f"{out}/step.json").readline())
stack = {form: json.loads(open(f"{out}/step-stack-{form}.json").readline())
         for form in ("unfolded", "grouped")}
def gpu_name():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None
result = {"job": "configs/reference-fedavg.toml", "gpu": gpu_name(),
          "step_ms_batch32": step["median_ms"],
          "step_ms_batch32_10_stacked_unfolded": stack["unfolded"]["median_ms"],
          "step_ms_batch32_10_stacked_grouped": stack["grouped"]["median_ms"], "modes": {}}
for m in modes:
    rows = [json.loads(l) for l in open(f"{m['dir']}/metrics.jsonl")]
    walls = [r["wall_s"] for r in rows]
    per_round = [round(b - a, 3) for a, b in zip([0.0] + walls, walls)]
    result["modes"][m["mode"]] = {
        "device": m["device"], "workers": m["workers"], "batch_clients": m["batch_clients"],
        "wall_s": round(m["wall_ms"] / 1000, 2),
        "round_s": per_round, "accuracy": [r["accuracy"] for r in rows],
        "gpu_mem_mib": int(m["gpu_mem_mib"]) if m["gpu_mem_mib"] not in ("", None) else None,
    }
cpu = result["modes"]["cpu"]["accuracy"]
for name, m in result["modes"].items():
    m["max_accuracy_gap_to_cpu"] = round(max(abs(a - b) for a, b in zip(m["accuracy"], cpu)), 4)
text = json.dumps(result, indent=1)
open(f"{out}/gpu-check.json", "w").write(text + "\n")
print(text)
PY
