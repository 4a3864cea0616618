"""digits-net (examples/own_model) in NumPy, reading and writing PyTorch-layout safetensors.

Checks braid's weights files against the layout PyTorch's state_dict has for the same network
(nn.Linear(64, 64) as `hidden`, nn.LayerNorm(64) as `norm`, nn.Linear(64, 10) as `out`,
forward: out(gelu(norm(hidden(x / 16))))), without PyTorch itself: linear weights [out, in],
LayerNorm `weight`/`bias`, eps 1e-5, exact (erf) GELU.

usage:
  python digits_net.py eval WEIGHTS TEST_CSV       # test accuracy of braid's final.safetensors
  python digits_net.py make OUT SEED               # a PyTorch-style random init to start braid from
needs: numpy, safetensors (pip install numpy safetensors)
"""
import math
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

SHAPES = {
    "hidden.weight": (64, 64), "hidden.bias": (64,),
    "norm.weight": (64,), "norm.bias": (64,),
    "out.weight": (10, 64), "out.bias": (10,),
}


def forward(w, x):
    h = (x / 16.0) @ w["hidden.weight"].T + w["hidden.bias"]
    mu = h.mean(axis=1, keepdims=True)
    var = ((h - mu) ** 2).mean(axis=1, keepdims=True)
    h = (h - mu) / np.sqrt(var + 1e-5) * w["norm.weight"] + w["norm.bias"]
    erf = np.vectorize(math.erf)
    h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
    return h @ w["out.weight"].T + w["out.bias"]


def main():
    if sys.argv[1] == "eval":
        w = load_file(sys.argv[2])
        assert {k: v.shape for k, v in w.items()} == SHAPES, {k: v.shape for k, v in w.items()}
        data = np.loadtxt(sys.argv[3], delimiter=",", skiprows=1)
        x, y = data[:, :64], data[:, 64].astype(int)
        pred = forward({k: v.astype(np.float64) for k, v in w.items()}, x).argmax(axis=1)
        print(f"accuracy {np.mean(pred == y):.6f} on {len(y)} samples")
    elif sys.argv[1] == "make":
        rng = np.random.default_rng(int(sys.argv[3]))
        w = {}
        for k, shape in SHAPES.items():
            if k == "norm.weight":
                w[k] = np.ones(shape, np.float32)
            elif k == "norm.bias":
                w[k] = np.zeros(shape, np.float32)
            else:
                fan_in = 64
                b = 1.0 / math.sqrt(fan_in)  # nn.Linear's default bound
                w[k] = rng.uniform(-b, b, shape).astype(np.float32)
        save_file(w, sys.argv[2])
        print(f"wrote {sys.argv[2]}")


main()
