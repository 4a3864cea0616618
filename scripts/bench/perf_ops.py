"""Attribute `perf` samples of `braid bench-step` to the operations of a training step.

usage: perf record -F 1999 --call-graph dwarf,32768 -o perf.data \\
           target/profiling/braid bench-step --threads 1 --steps 300 --warmup 5
       perf script -i perf.data -F comm,ip,sym --no-inline > perf.txt
       python3 scripts/bench/perf_ops.py perf.txt [--chains]
Each sample is put in one operation by the frames on its stack (first matching rule below) and
in a phase (backward when a burn-autodiff backward frame is on the stack). Samples outside the
training steps (start-up: reading and decompressing the dataset, building the model; and
samples with no burn, braid, gemm or rayon frame) are counted apart; shares are of the step samples. --chains also lists the most common chains of
burn / braid frames, to find what an unknown share is.
"""
import collections
import re
import sys

RULES = [  # (operation, phase or None for any, regex on the joined stack)
    ("max-pool forward", "fwd", r"max_pool2d_with_indices_f32|max_pool2x2_forward"),
    ("max-pool backward", "bwd", r"max_pool2d_backward|max_pool2x2_backward"),
    ("conv input gradient (transposed conv)", "bwd", r"conv_transpose"),
    ("conv backward: layout copies", "bwd", r"to_contiguous"),
    ("conv backward (weight, bias, input gradients)", "bwd", r"conv2d_f32|conv3x3_relu_backward|bias_backward"),
    ("conv forward", "fwd", r"conv2d_f32|conv3x3_relu_forward|conv_forward"),
    ("linear layers (matmul)", None, r"float_matmul|matmul_gemm|flex::ops::matmul"),
    ("ReLU", None, r"Autodiff>::relu|relu::Relu|unary_op"),
    ("SGD update", None, r"optim::|Optimizer"),
    ("loss", None, r"CrossEntropy|log_softmax"),
]
STARTUP = r"decompress|read_idx|load_fashion|init_params|_dl_start|execve"


def main():
    path = sys.argv[1]
    samples = open(path).read().split("\n\n")
    ops, chains = collections.Counter(), collections.Counter()
    total = startup = 0
    for s in samples:
        lines = [l.strip() for l in s.strip().split("\n")[1:]]
        syms = [l.split(" ", 1)[1] if " " in l else l for l in lines]
        if not syms:
            continue
        stack = "\n".join(syms)
        if re.search(STARTUP, stack) or not re.search(r"burn|braid_nn|gemm|rayon", stack):
            startup += 1
            continue
        total += 1
        phase = "bwd" if re.search(r"burn_autodiff.*[Bb]ackward|::backward", stack) else "fwd"
        for name, ph, rx in RULES:
            if (ph is None or ph == phase) and re.search(rx, stack):
                ops[(name, phase)] += 1
                break
        else:
            ops[("other (framework, tensors, allocation)", phase)] += 1
        chain = []
        for x in reversed(syms):
            if re.search(r"burn_flex|burn_backend::backend::ops|burn_autodiff::ops|braid_nn", x):
                n = re.sub(r"<[^<>]*>", "", re.sub(r"\{\{closure\}\}", "", x))[:70]
                if not chain or chain[-1] != n:
                    chain.append(n)
        chains[phase + " | " + " > ".join(chain[-3:])] += 1
    print(f"{total} step samples ({startup} outside the steps, not counted)")
    print(f"{'share':>7}  phase     operation")
    for (name, phase), n in ops.most_common():
        label = "update" if name == "SGD update" else ("backward" if phase == "bwd" else "forward")
        print(f"{100 * n / total:6.1f}%  {label:9} {name}")
    if "--chains" in sys.argv:
        print()
        for k, n in chains.most_common(30):
            print(f"{100 * n / total:6.2f}% {k}")


main()
