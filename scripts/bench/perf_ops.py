"""Attribute `perf` samples of `braid bench-step` to the operations of a training step.

usage: perf record -F 1999 --call-graph dwarf,32768 -o perf.data \
           target/profiling/braid bench-step --threads 1 --steps 150 --warmup 5
       perf script -i perf.data -F comm,ip,sym --no-inline > perf.txt
       python3 scripts/bench/perf_ops.py perf.txt
Each sample is labelled with its phase (backward when a burn-autodiff backward frame is on the
stack) and the innermost three burn / braid frames of its call chain; shares of all samples.
"""
import re,sys,collections
samples=open(sys.argv[1]).read().split("\n\n")
tot=0; c=collections.Counter()
for s in samples:
    lines=[l.strip() for l in s.strip().split("\n")[1:]]
    syms=[l.split(" ",1)[1] if " " in l else l for l in lines]
    if not syms: continue
    tot+=1
    chain=[]
    for x in reversed(syms):
        if re.search(r"burn_flex|burn_backend::backend::ops|burn_autodiff::ops::(module|tensor|activation)|braid_nn|gemm::gemm|CrossEntropy",x):
            n=re.sub(r"\{\{closure\}\}","",x); n=re.sub(r"<impl [^>]*>","",n); n=re.sub(r"<.*?>","",n)
            n=n.replace("burn_backend::backend::ops::modules::","bk::").replace("burn_flex::ops::","flex::").replace("burn_autodiff::ops::","ad::")
            n=re.sub(r"::+$","",n)[:70]
            if not chain or chain[-1]!=n: chain.append(n)
    phase = "bwd" if any("backward" in x and "burn_autodiff" in x for x in syms) else "fwd/other"
    # keep the first 2 and the last 1 entries of chain
    key=phase+" | "+" > ".join(chain[-3:]) if chain else phase+" | -"
    c[key]+=1
for k,v in c.most_common(45): print(f"{100*v/tot:6.2f}% {k}")
