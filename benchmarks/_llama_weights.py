"""A Llama-3-8B-shaped process for bench_storage.py: 16.06 GB of bf16 weights on the GPU.

    python benchmarks/_llama_weights.py --state DIR [--seed 1] [--layers 32]

Weights are N(0, 0.02) from a seeded generator on the GPU (two processes with one seed hold the
same bytes: replicas of one model). It speaks hold_memory's ready/verified protocol: the digest
is, per tensor, sums of its bf16 bit patterns (plain and position-weighted, computed on the GPU)
plus the logits of one greedy step, so any flipped bit shows.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from restoreprof.workloads.hold_memory import serve

HIDDEN, KV, FFN, VOCAB = 4096, 1024, 14336, 128256


def main() -> int:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--layers", type=int, default=32)
    args = parser.parse_args()
    args.state.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device="cuda").manual_seed(args.seed)

    def weight(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32) * 0.02
                ).to(torch.bfloat16)

    weights = {"embed": weight(VOCAB, HIDDEN), "lm_head": weight(VOCAB, HIDDEN)}
    for i in range(args.layers):
        for name, shape in (("q", (HIDDEN, HIDDEN)), ("k", (KV, HIDDEN)), ("v", (KV, HIDDEN)),
                            ("o", (HIDDEN, HIDDEN)), ("gate", (FFN, HIDDEN)),
                            ("up", (FFN, HIDDEN)), ("down", (HIDDEN, FFN))):
            weights[f"{i}.{name}"] = weight(*shape)
    torch.cuda.synchronize()

    def digest() -> str:
        sha = hashlib.sha256()
        with torch.no_grad():
            for name, w in weights.items():
                bits = w.view(torch.int16).flatten().to(torch.int64)
                pos = torch.arange(bits.numel(), device="cuda", dtype=torch.int64) % 65521
                sha.update(f"{name}:{int(bits.sum())}:{int((bits * pos).sum())};".encode())
            h = weights["embed"][torch.tensor([1, 2, 3], device="cuda")].float()
            for i in range(args.layers):
                h = h + torch.tanh(h @ weights[f"{i}.q"].float().T)
            logits = h @ weights["lm_head"].float().T
            sha.update(logits.argmax(-1).cpu().numpy().tobytes())
        torch.cuda.synchronize()
        return sha.hexdigest()

    serve(args.state, digest(), digest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
