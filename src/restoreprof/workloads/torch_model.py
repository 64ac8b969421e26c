"""A real PyTorch program for restore tests: a stack of Linear layers held on the GPU.

    python -m restoreprof.workloads.torch_model --gib 4 --state DIR

It builds the model from a seed, runs a fixed input through it and writes the SHA-256 of the
output (and of the weights) to DIR/ready, then waits. On SIGUSR1 it runs the same input again
and writes "OK <digest>" when output and weights match bit for bit, else "MISMATCH <digest>",
to DIR/verified. Same protocol as hold_memory, so HeldMemory drives both.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from restoreprof.workloads.hold_memory import serve


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="weights to hold on the GPU, GiB")
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    args.state.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = False
    layer_bytes = args.width * args.width * 4
    layers = max(1, int(args.gib * 2**30) // layer_bytes)
    model = torch.nn.Sequential(*[torch.nn.Linear(args.width, args.width, bias=True)
                                  for _ in range(layers)]).cuda().eval()
    x = torch.randn(64, args.width, device="cuda")

    def digest() -> str:
        with torch.no_grad():
            h = x
            for layer in model:
                h = torch.tanh(layer(h))  # keeps activations bounded through many layers
            torch.cuda.synchronize()
        sha = hashlib.sha256(h.cpu().numpy().tobytes())
        for p in model.parameters():
            sha.update(hashlib.sha256(p.detach().cpu().numpy().tobytes()).digest())
        return sha.hexdigest()

    serve(args.state, digest(), digest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
