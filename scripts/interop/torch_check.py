"""braid's weights files read and written by PyTorch itself (not a model of it).

`digits`: digits-net (examples/own_model) as torch modules: `load_state_dict(strict=True)` of
braid's final.safetensors, then the test accuracy on the digits test table.
`resnet20`: braid's built-in resnet20 as torch modules (scripts/bench/torch_step.py's
ResNet20), the same for a CIFAR-10-format test file.
`make-digits OUT SEED`: PyTorch's own init of digits-net saved with safetensors.torch, for
`[model] init`. `make-cifar DIR`: small CIFAR-10-format files whose class is a bright band
(its rows and channel), learnable in a few rounds: 5 x 128 training and 200 test images.

usage:
  python torch_check.py digits WEIGHTS TEST_CSV
  python torch_check.py resnet20 WEIGHTS TEST_BATCH_BIN
  python torch_check.py make-digits OUT SEED
  python torch_check.py make-cifar DIR
needs: torch, safetensors, numpy
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from torch_step import ResNet20  # noqa: E402


class DigitsNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(64, 64)
        self.norm = torch.nn.LayerNorm(64)
        self.out = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.out(F.gelu(self.norm(self.hidden(x / 16.0))))


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        logits = model(x)
    loss = F.cross_entropy(logits, y).item()
    return (logits.argmax(dim=1) == y).float().mean().item(), loss, len(y)


def main():
    what = sys.argv[1]
    if what == "make-cifar":
        r = np.random.default_rng(0)

        def make(n):
            y = r.integers(0, 10, n)
            x = r.integers(0, 120, (n, 3, 32, 32))
            for i, c in enumerate(y):
                x[i, c % 3, c * 3:c * 3 + 3, :] += 120
            return np.concatenate([y[:, None], x.reshape(n, -1)], axis=1).astype(np.uint8).tobytes()

        os.makedirs(sys.argv[2], exist_ok=True)
        for k in range(1, 6):
            open(os.path.join(sys.argv[2], f"data_batch_{k}.bin"), "wb").write(make(128))
        open(os.path.join(sys.argv[2], "test_batch.bin"), "wb").write(make(200))
        return
    if what == "make-digits":
        torch.manual_seed(int(sys.argv[3]))
        save_file(DigitsNet().state_dict(), sys.argv[2])
        return
    model = {"digits": DigitsNet, "resnet20": ResNet20}[what]()
    model.load_state_dict(load_file(sys.argv[2]), strict=True)
    if what == "digits":
        data = np.loadtxt(sys.argv[3], delimiter=",", skiprows=1)
        x = torch.tensor(data[:, :64], dtype=torch.float32)
        y = torch.tensor(data[:, 64].astype(np.int64))
    else:
        raw = np.fromfile(sys.argv[3], dtype=np.uint8).reshape(-1, 3073)
        y = torch.tensor(raw[:, 0].astype(np.int64))
        x = torch.tensor(raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    acc, loss, n = accuracy(model, x, y)
    print(f"{what}: strict load ok, accuracy {acc:.6f}, loss {loss:.6f} on {n} samples "
          f"(PyTorch {torch.__version__})")


if __name__ == "__main__":
    main()
