"""PyTorch's cost of one training step of a model, as `braid bench-step` measures braid's.

`--model cnn` (default) uses the reference job's own model and data loader
(../shared/bench/flower/common.py) on consecutive batches of the real Fashion-MNIST training set.
`--model resnet20` and `--model transformer` are braid's built-ins of those names written in
PyTorch (same layers, shapes and parameter counts; see crates/braid-nn/src/models/) on seeded
random inputs of braid's shapes (32x32 RGB images, 10 classes; 64-byte windows, 256 tokens):
a step's cost does not depend on the values. Each step is forward, cross-entropy, backward and a
plain SGD step (lr 0.05), with torch limited to N threads, after warm-up steps.
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



class Block(torch.nn.Module):
    """braid_nn::models::resnet::Block: two 3x3 convolutions with GroupNorm, a residual."""

    def __init__(self, i, o, stride):
        super().__init__()
        gn = lambda c: torch.nn.GroupNorm(max(1, c // 8), c)
        self.conv1 = torch.nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.norm1 = gn(o)
        self.conv2 = torch.nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.norm2 = gn(o)
        self.shortcut = None
        if stride != 1 or i != o:
            self.shortcut = torch.nn.Sequential(torch.nn.Conv2d(i, o, 1, stride, 0, bias=False), gn(o))

    def forward(self, x):
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class ResNet20(torch.nn.Module):
    """braid's built-in `resnet20` (GroupNorm in groups of 8 channels)."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.stem_norm = torch.nn.GroupNorm(2, 16)
        blocks, ch = [], 16
        for s, o in enumerate([16, 32, 64]):
            for b in range(3):
                blocks.append(Block(ch, o, 2 if s > 0 and b == 0 else 1))
                ch = o
        self.blocks = torch.nn.Sequential(*blocks)
        self.fc = torch.nn.Linear(64, classes)

    def forward(self, x):
        h = self.blocks(F.relu(self.stem_norm(self.stem(x))))
        return self.fc(h.mean(dim=(2, 3)))


class LmBlock(torch.nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = torch.nn.LayerNorm(d)
        self.up = torch.nn.Linear(d, 4 * d)
        self.down = torch.nn.Linear(4 * d, d)

    def forward(self, h, mask):
        a = self.norm1(h)
        h = h + self.attn(a, a, a, attn_mask=mask, need_weights=False)[0]
        return h + self.down(F.gelu(self.up(self.norm2(h))))


class TransformerLm(torch.nn.Module):
    """braid's built-in `transformer`: 2 pre-norm blocks of width 128, 4 heads, bytes."""

    def __init__(self, vocab=256, t=64, d=128, heads=4, layers=2):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, d)
        self.positions = torch.nn.Parameter(torch.randn(t, d) * 0.02)
        self.blocks = torch.nn.ModuleList([LmBlock(d, heads) for _ in range(layers)])
        self.norm = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)
        self.register_buffer("mask", torch.triu(torch.ones(t, t, dtype=torch.bool), 1))

    def forward(self, x):
        t = x.shape[1]
        h = self.tokens(x) + self.positions[:t]
        for b in self.blocks:
            h = b(h, self.mask[:t, :t])
        return self.head(self.norm(h)).reshape(-1, self.head.out_features)


def model_and_data(name, n=2048):
    """The model and a training set (inputs, targets) for `--model`."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "cnn":
        import common
        x, y = common.load_split("train")
        return common.init_model(seed=0), x, y
    if name == "resnet20":
        x = torch.randint(0, 256, (n, 3, 32, 32), generator=g).float() / 255
        return ResNet20(), x, torch.randint(0, 10, (n,), generator=g)
    if name == "transformer":
        w = torch.randint(0, 256, (n, 65), generator=g)
        # targets flattened per batch in measure(): the next byte at every position
        return TransformerLm(), w[:, :64], w[:, 1:]
    raise SystemExit(f"unknown --model {name}")


def measure(name, model, x, y, batch, threads, steps, warmup):
    torch.set_num_threads(threads)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    n_batches = max(1, min(64, x.shape[0] // batch))
    total, fwd, bwd, upd = [], 0.0, 0.0, 0.0
    for i in range(warmup + steps):
        b = i % n_batches
        xb, yb = x[b * batch:(b + 1) * batch], y[b * batch:(b + 1) * batch]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb.reshape(-1))
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
        "impl": "pytorch", "model": name, "batch": batch, "threads": threads,
        "torch": torch.__version__,
        "median_ms": statistics.median(total), "mean_ms": sum(total) / n,
        "p10_ms": total[round((n - 1) * 0.1)], "p90_ms": total[round((n - 1) * 0.9)],
        "forward_ms": fwd / n, "backward_ms": bwd / n, "update_ms": upd / n,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn", choices=["cnn", "resnet20", "transformer"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json")
    a = ap.parse_args()
    model, x, y = model_and_data(a.model)
    params = sum(p.numel() for p in model.parameters())
    print(f"train step: {a.model} ({params} parameters), batch {a.batch}, SGD lr 0.05, PyTorch {torch.__version__} | "
          f"{a.warmup} warm-up + {a.steps} timed steps")
    print(f"{'threads':>8} {'median_ms':>10} {'mean_ms':>9} {'p10_ms':>9} {'p90_ms':>9} "
          f"{'forward_ms':>10} {'backward_ms':>11} {'update_ms':>10}")
    rows = []
    for t in [int(v) for v in a.threads.split(",")]:
        r = measure(a.model, model, x, y, a.batch, t, a.steps, a.warmup)
        rows.append(r)
        print(f"{t:>8} {r['median_ms']:>10.2f} {r['mean_ms']:>9.2f} {r['p10_ms']:>9.2f} {r['p90_ms']:>9.2f} "
              f"{r['forward_ms']:>10.2f} {r['backward_ms']:>11.2f} {r['update_ms']:>10.2f}")
    if a.json:
        with open(a.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
