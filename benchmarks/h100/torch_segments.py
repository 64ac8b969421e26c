"""How much of PyTorch's reserved memory is free inside segments that also hold live tensors
(what empty_cache() cannot give back), for the weight-making patterns of our workloads.

    python3 benchmarks/h100/torch_segments.py
"""
import torch


def report(label: str) -> None:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    segs = torch.cuda.memory_snapshot()
    live = [s for s in segs if any(b["state"] == "active_allocated" for b in s["blocks"])]
    free_in_live = sum(b["size"] for s in live for b in s["blocks"] if b["state"] != "active_allocated")
    big = sorted((b["size"] for s in live for b in s["blocks"] if b["state"] != "active_allocated"),
                 reverse=True)
    mib = 1 << 20
    print(f"{label}: allocated {torch.cuda.memory_allocated() / 1e9:.2f} GB, reserved "
          f"{torch.cuda.memory_reserved() / 1e9:.2f} GB, segments {len(segs)}, free inside live "
          f"segments {free_in_live / 1e9:.3f} GB in {len(big)} blocks (largest MiB: "
          f"{[b // mib for b in big[:8]]}; >=2 MiB: {sum(b for b in big if b >= 2 * mib) / 1e9:.3f} GB)")


gen = torch.Generator(device="cuda").manual_seed(1)
w = [(torch.randn(14336, 4096, generator=gen, device="cuda") * 0.02).to(torch.bfloat16)
     for _ in range(24)]
report("fp32 randn then bf16, 24 x 117 MB")
del w
torch.cuda.empty_cache()
from restoreprof.workloads import frameworks  # noqa: E402

print("frameworks module:", frameworks.__file__)
