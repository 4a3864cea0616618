"""PyTorch's cost of one training step of the reference CNN, as `braid bench-step` measures braid's.

Uses the reference job's own model and data loader (../shared/bench/flower/common.py): forward,
cross-entropy, backward and a plain SGD step (lr 0.05) on consecutive batches of the real
Fashion-MNIST training set, with torch limited to N threads, after warm-up steps.
Prints one line per thread count, and one JSON object per line to --json.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FLOWER = os.environ.get("FLOWER_BENCH", os.path.join(HERE, "..", "..", "..", "shared", "bench", "flower"))
sys.path.insert(0, FLOWER)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402


def measure(x, y, batch, threads, steps, warmup):
    torch.set_num_threads(threads)
    model = common.init_model(seed=0)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    n_batches = max(1, min(64, x.shape[0] // batch))
    total, fwd, bwd, upd = [], 0.0, 0.0, 0.0
    for i in range(warmup + steps):
        b = i % n_batches
        xb, yb = x[b * batch:(b + 1) * batch], y[b * batch:(b + 1) * batch]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.item()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= warmup:
            total.append((t3 - t0) * 1e3)
            fwd += (t1 - t0) * 1e3
            bwd += (t2 - t1) * 1e3
            upd += (t3 - t2) * 1e3
    n = len(total)
    total.sort()
    return {
        "impl": "pytorch", "model": "cnn", "batch": batch, "threads": threads,
        "torch": torch.__version__,
        "median_ms": statistics.median(total), "mean_ms": sum(total) / n,
        "p10_ms": total[round((n - 1) * 0.1)], "p90_ms": total[round((n - 1) * 0.9)],
        "forward_ms": fwd / n, "backward_ms": bwd / n, "update_ms": upd / n,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json")
    a = ap.parse_args()
    x, y = common.load_split("train")
    print(f"train step: cnn, batch {a.batch}, SGD lr 0.05, PyTorch {torch.__version__} | "
          f"{a.warmup} warm-up + {a.steps} timed steps")
    print(f"{'threads':>8} {'median_ms':>10} {'mean_ms':>9} {'p10_ms':>9} {'p90_ms':>9} "
          f"{'forward_ms':>10} {'backward_ms':>11} {'update_ms':>10}")
    rows = []
    for t in [int(v) for v in a.threads.split(",")]:
        r = measure(x, y, a.batch, t, a.steps, a.warmup)
        rows.append(r)
        print(f"{t:>8} {r['median_ms']:>10.2f} {r['mean_ms']:>9.2f} {r['p10_ms']:>9.2f} {r['p90_ms']:>9.2f} "
              f"{r['forward_ms']:>10.2f} {r['backward_ms']:>11.2f} {r['update_ms']:>10.2f}")
    if a.json:
        with open(a.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
