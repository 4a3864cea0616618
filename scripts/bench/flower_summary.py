"""Summarize scripts/bench-flower.sh's runs: a markdown table of braid against Flower + PyTorch.

Reads OUT/flower_<s>_<rep>.json (the reference job's own result), OUT/braid_<s>_<rep>/metrics.csv,
and the memwrap.py records OUT/<impl>_<s>_<rep>.mem.json. Wall time is the whole process
(start-up included), measured by memwrap for both; peak memory is the peak sum of PSS over the
process tree (RSS sum in brackets). Figures are medians over the repeats.
"""
import csv
import glob
import json
import os
import re
import statistics
import sys

D = sys.argv[1] if len(sys.argv) > 1 else "runs/bench-flower"


def load(path):
    with open(path) as f:
        return json.load(f)


def runs(impl, setting):
    out = []
    for mem_path in sorted(glob.glob(os.path.join(D, f"{impl}_{setting}_*.mem.json"))):
        rep = re.search(r"_(\d+)\.mem\.json$", mem_path).group(1)
        mem = load(mem_path)
        if mem.get("rc") != 0:
            print(f"warning: {mem_path} exited with {mem.get('rc')}", file=sys.stderr)
            continue
        r = {"rep": rep, "wall": mem["wall_s"], "pss": mem["peak_pss_sum_MiB"],
             "rss": mem["peak_rss_sum_MiB"], "nproc": mem["peak_nproc"]}
        if impl == "flower":
            res = load(os.path.join(D, f"flower_{setting}_{rep}.json"))
            # The strategy evaluates the initial model first (round 0): drop it.
            r["acc"] = res["acc"][1:]
            r["round"] = res["round_median_s"]
        else:
            with open(os.path.join(D, f"braid_{setting}_{rep}", "metrics.csv")) as f:
                rows = list(csv.DictReader(f))
            r["acc"] = [float(x["accuracy"]) for x in rows]
            with open(os.path.join(D, f"braid_{setting}_{rep}", "config.toml")) as f:
                seed = re.search(r"^seed\s*=\s*(\d+)", f.read(), re.M)
            r["seed"] = seed.group(1) if seed else "?"
            walls = [0.0] + [float(x["wall_s"]) for x in rows]
            r["round"] = statistics.median(b - a for a, b in zip(walls, walls[1:]))
        out.append(r)
    return out


def med(rs, key):
    return statistics.median(r[key] for r in rs)


settings = sorted({re.search(r"_([ab])_\d+\.mem\.json$", p).group(1)
                   for p in glob.glob(os.path.join(D, "*_*_*.mem.json"))})
label = {"a": "(a) 10 clients, all per round", "b": "(b) 100 clients, 10 per round"}
for s in settings:
    fl, br = runs("flower", s), runs("braid", s)
    if not fl or not br:
        print(f"setting {s}: missing runs (flower {len(fl)}, braid {len(br)})")
        continue
    print(f"### {label[s]}: {len(fl)} Flower and {len(br)} braid runs, medians\n")
    print("| | Flower + PyTorch | braid | braid / Flower |")
    print("|---|---|---|---|")
    for name, key, fmt in [("wall time, whole process (s)", "wall", "{:.1f}"),
                           ("time per round (s)", "round", "{:.2f}"),
                           ("peak memory, process tree PSS (MiB)", "pss", "{:.0f}"),
                           ("peak memory, process tree RSS (MiB)", "rss", "{:.0f}"),
                           ("processes", "nproc", "{:.0f}")]:
        f, b = med(fl, key), med(br, key)
        print(f"| {name} | {fmt.format(f)} | {fmt.format(b)} | {b / f:.2f} |")
    print()
    rounds = min(min(len(r["acc"]) for r in fl), min(len(r["acc"]) for r in br))
    print("| round | " + " | ".join(f"Flower {r['rep']}" for r in fl) + " | "
          + " | ".join(f"braid {r['rep']} (seed {r['seed']})" for r in br)
          + " | braid - Flower (medians, points) |")
    print("|---" * (2 + len(fl) + len(br)) + "|")
    for i in range(rounds):
        fa = [r["acc"][i] for r in fl]
        ba = [r["acc"][i] for r in br]
        diff = 100 * (statistics.median(ba) - statistics.median(fa))
        print(f"| {i + 1} | " + " | ".join(f"{a:.4f}" for a in fa) + " | "
              + " | ".join(f"{a:.4f}" for a in ba) + f" | {diff:+.2f} |")
    print()
