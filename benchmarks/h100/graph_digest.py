"""Is the CUDA graph program's digest stable within one process (no checkpoint at all)?

    python3 benchmarks/h100/graph_digest.py --gib 8
"""
import argparse

from restoreprof.workloads.frameworks import torch_program

p = argparse.ArgumentParser()
p.add_argument("--gib", type=float, default=8)
p.add_argument("--program", default="torch-graph")
a = p.parse_args()
digest, stats = torch_program(a.program, a.gib, 2.0, 1)
d = [digest() for _ in range(4)]
print(a.program, a.gib, "digest stable:", len(set(d)) == 1, [x[:10] for x in d])
import torch  # noqa: E402

torch.cuda.empty_cache()
d2 = digest()
print("after empty_cache:", d2[:10], "same:", d2 == d[0])
