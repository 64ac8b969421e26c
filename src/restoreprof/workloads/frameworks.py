"""Real framework programs for the restore benchmark (benchmarks/bench_frameworks.py).

    python -m restoreprof.workloads.frameworks --program torch --gib 8 --state DIR

Each holds GIB of weights on the GPU (bf16 8192 x 8192 layers; CuPy float32), made on the GPU
from a seed, plus --slack-gib of blocks it allocated and freed again, which its framework's
allocator keeps cached (PyTorch, CuPy): the memory a checkpoint should not save. Programs:

    torch             PyTorch, default caching allocator
    torch-expandable  PyTorch, PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (cuMemCreate/Map)
    torch-async       PyTorch, PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync (memory pools)
    torch-graph       PyTorch, the forward pass captured as a CUDA graph and replayed
    torch-llama       PyTorch, Llama-3-8B-shaped layers (4096 wide, FFN 14336, vocabulary
                      128256), each weight made in fp32 and converted to bf16 as checkpoint
                      loaders do: the freed fp32 temporaries leave free blocks inside
                      segments that also hold weights, which empty_cache() cannot give back
    cupy              CuPy, its default memory pool
    jax               JAX, a jitted chain (XLA_PYTHON_CLIENT_PREALLOCATE=false: else XLA takes
                      75% of the GPU up front, which no checkpoint should copy)
    cuda-python       no framework: one buffer through the driver API (cuda-python), which the
                      fake driver of the CPU tests serves too (the harness's own check)

The output digest is the SHA-256 of the forward pass's output and of a fingerprint of every
weight (per-row integer sums of its bits, computed on the GPU: a chunk restored to the wrong
place or a flipped bit changes it). Same ready/verified protocol as hold_memory, so HeldMemory
drives it; DIR/stats.json says what the framework's allocator holds at ready (allocated_bytes:
torch.cuda.memory_allocated(), CuPy's pool used_bytes(), JAX's bytes_in_use; reserved_bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from restoreprof.workloads.hold_memory import serve

PROGRAMS = ("torch", "torch-expandable", "torch-async", "torch-graph", "torch-llama", "cupy",
            "jax")
BASELINE = "cuda-python"  # the raw driver API, no allocator cache: runs on the fake driver too
ALLOC_CONF = {"torch-expandable": "expandable_segments:True",
              "torch-async": "backend:cudaMallocAsync"}
WIDTH = 8192
BATCH = 64
SLACK_BLOCK_BYTES = 256 << 20

Program = tuple[Callable[[], str], Callable[[], dict]]  # (digest, allocator stats)


def _layers(gib: float, layer_bytes: int) -> int:
    return max(1, -(-int(gib * 2**30) // layer_bytes))  # at least gib, never less


def _slack_sizes(gib: float) -> list[int]:
    return [SLACK_BLOCK_BYTES] * int(gib * 2**30 // SLACK_BLOCK_BYTES)


def torch_program(program: str, gib: float, slack_gib: float, seed: int) -> Program:
    if program in ALLOC_CONF:  # read when torch initialises CUDA, so set before the import
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOC_CONF[program]
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)
    if program == "torch-llama":
        weights, chain = _llama(torch, gen, gib)
        x = torch.empty(BATCH, LLAMA_HIDDEN, dtype=torch.bfloat16, device="cuda").normal_(
            generator=gen)
    else:
        weights = [torch.empty(WIDTH, WIDTH, dtype=torch.bfloat16, device="cuda")
                   .normal_(0.0, WIDTH ** -0.5, generator=gen)
                   for _ in range(_layers(gib, WIDTH * WIDTH * 2))]
        x = torch.empty(BATCH, WIDTH, dtype=torch.bfloat16, device="cuda").normal_(generator=gen)

        def chain(h):
            for w in weights:
                h = torch.tanh(h @ w)
            return h

    forward = _captured(torch, chain, x) if program == "torch-graph" else lambda: chain(x)
    with torch.no_grad():  # warmed up, as a server is before it serves: cuBLAS's workspace
        forward()          # is allocated now, not inside the slack's freed blocks later
    torch.cuda.synchronize()
    # The slack is made last: a graph's warm-up would otherwise reuse the freed blocks (seen on
    # the H200: no slack left in the graph program).
    slack = [torch.empty(n, dtype=torch.uint8, device="cuda") for n in _slack_sizes(slack_gib)]
    del slack  # freed, and kept by the caching allocator

    def digest() -> str:
        with torch.no_grad():
            out = forward()
            sums = torch.cat([w.view(torch.int64).sum(dim=1) for w in weights])
            torch.cuda.synchronize()
        sha = hashlib.sha256(out.float().cpu().numpy().tobytes())
        sha.update(sums.cpu().numpy().tobytes())
        return sha.hexdigest()

    def stats() -> dict:
        return {"allocated_bytes": torch.cuda.memory_allocated(),
                "reserved_bytes": torch.cuda.memory_reserved(),
                "weights_bytes": sum(w.numel() * w.element_size() for w in weights)}

    return digest, stats


LLAMA_HIDDEN, LLAMA_KV, LLAMA_FFN, LLAMA_VOCAB = 4096, 1024, 14336, 128256


def _llama(torch, gen, gib: float):
    """Llama-3-8B-shaped bf16 weights (32 layers: 16.06 GB), as many layers as gib holds, each
    made in fp32 and converted; and a forward pass through them (bounded by tanh)."""
    shapes = (("q", (LLAMA_HIDDEN, LLAMA_HIDDEN)), ("k", (LLAMA_KV, LLAMA_HIDDEN)),
              ("v", (LLAMA_KV, LLAMA_HIDDEN)), ("o", (LLAMA_HIDDEN, LLAMA_HIDDEN)),
              ("gate", (LLAMA_FFN, LLAMA_HIDDEN)), ("up", (LLAMA_FFN, LLAMA_HIDDEN)),
              ("down", (LLAMA_HIDDEN, LLAMA_FFN)))
    layer_bytes = 2 * sum(a * b for _, (a, b) in shapes)
    ends_bytes = 2 * 2 * LLAMA_VOCAB * LLAMA_HIDDEN  # embedding and lm_head
    layers = max(1, round((gib * 2**30 - ends_bytes) / layer_bytes))

    def weight(rows: int, cols: int):
        return (torch.randn(rows, cols, generator=gen, device="cuda", dtype=torch.float32)
                * 0.02).to(torch.bfloat16)

    named = {"embed": weight(LLAMA_VOCAB, LLAMA_HIDDEN)}
    for i in range(layers):
        for name, shape in shapes:
            named[f"{i}.{name}"] = weight(*shape)
    named["lm_head"] = weight(LLAMA_VOCAB, LLAMA_HIDDEN)

    def chain(h):
        for i in range(layers):
            h = torch.tanh(h @ named[f"{i}.q"].T) @ named[f"{i}.o"].T
            gate = torch.nn.functional.silu(h @ named[f"{i}.gate"].T)
            h = torch.tanh(h + (gate * (h @ named[f"{i}.up"].T)) @ named[f"{i}.down"].T)
        return h @ named["lm_head"].T

    return list(named.values()), chain


def _captured(torch, chain, x):
    """The forward pass captured once as a CUDA graph; replaying it runs the same kernels on
    the same (static) buffers."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(2):  # warm-up on a side stream before capture, as PyTorch asks
            chain(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = chain(static_x)

    def replay():
        graph.replay()
        return static_out

    # The graph reads static_x at the address it had at capture, but holds no reference to the
    # tensor: without this one the memory went back to the allocator once this function
    # returned, later tensors reused it (the first replay's output differed from every later
    # one on the H200), and torch.cuda.empty_cache() unmapped it under the graph (its next
    # replay faulted). Tensors a graph reads must stay alive, as PyTorch's documentation says.
    replay.inputs = (static_x,)
    return replay


def cupy_program(gib: float, slack_gib: float, seed: int) -> Program:
    import cupy as cp

    rs = cp.random.RandomState(seed)
    weights = []
    for _ in range(_layers(gib, WIDTH * WIDTH * 4)):
        w = rs.standard_normal((WIDTH, WIDTH), dtype=cp.float32)
        w *= WIDTH ** -0.5
        weights.append(w)
    x = rs.standard_normal((BATCH, WIDTH), dtype=cp.float32)
    slack = [cp.empty(n, dtype=cp.uint8) for n in _slack_sizes(slack_gib)]
    del slack  # back in CuPy's memory pool, which keeps it
    pool = cp.get_default_memory_pool()

    def digest() -> str:
        h = x
        for w in weights:
            h = cp.tanh(h @ w)
        sums = cp.stack([w.view(cp.int64).sum(axis=1) for w in weights])
        sha = hashlib.sha256(cp.asnumpy(h).tobytes())
        sha.update(cp.asnumpy(sums).tobytes())
        return sha.hexdigest()

    def stats() -> dict:
        return {"allocated_bytes": pool.used_bytes(), "reserved_bytes": pool.total_bytes(),
                "weights_bytes": sum(w.nbytes for w in weights)}

    return digest, stats


def jax_program(gib: float, seed: int) -> Program:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp
    import numpy as np

    @jax.jit
    def make(key):
        return (jax.random.normal(key, (WIDTH, WIDTH), jnp.float32) * WIDTH ** -0.5).astype(
            jnp.bfloat16)

    keys = jax.random.split(jax.random.PRNGKey(seed), _layers(gib, WIDTH * WIDTH * 2) + 1)
    weights = [make(k) for k in keys[1:]]
    x = jax.random.normal(keys[0], (BATCH, WIDTH), jnp.float32).astype(jnp.bfloat16)

    @jax.jit
    def forward(x, ws):
        for w in ws:
            x = jnp.tanh(x @ w)
        return x

    @jax.jit
    def fingerprint(ws):
        return jnp.stack([jax.lax.bitcast_convert_type(w, jnp.uint16).astype(jnp.uint32)
                          .sum(axis=1) for w in ws])

    def digest() -> str:
        out = np.asarray(forward(x, weights)).astype(np.float32)
        sha = hashlib.sha256(out.tobytes())
        sha.update(np.asarray(fingerprint(weights)).tobytes())
        return sha.hexdigest()

    def stats() -> dict:
        memory = jax.devices()[0].memory_stats() or {}
        return {"allocated_bytes": memory.get("bytes_in_use", 0),
                "reserved_bytes": memory.get("pool_bytes", memory.get("bytes_reserved", 0)),
                "weights_bytes": sum(w.nbytes for w in weights)}

    return digest, stats


def cuda_python_program(gib: float, seed: int) -> Program:
    import numpy as np

    from restoreprof.cuda import driver as cu
    from restoreprof.workloads.hold_memory import _fill

    nbytes = max(1, int(gib * 1024)) << 20  # whole MiB
    cu.primary_context(0)
    host = np.empty(nbytes, dtype=np.uint8)
    _fill(host, seed)
    pointer = cu.mem_alloc(host.nbytes)
    cu.copy_htod(pointer, host)
    del host

    def digest() -> str:
        back = np.empty(nbytes, dtype=np.uint8)
        cu.copy_dtoh(back, pointer)
        return hashlib.sha256(back).hexdigest()

    def stats() -> dict:
        return {"allocated_bytes": nbytes, "reserved_bytes": nbytes, "weights_bytes": nbytes}

    return digest, stats


def build(program: str, gib: float, slack_gib: float, seed: int) -> Program:
    if program.startswith("torch"):
        return torch_program(program, gib, slack_gib, seed)
    if program == "cupy":
        return cupy_program(gib, slack_gib, seed)
    if program == "jax":
        return jax_program(gib, seed)
    if program == BASELINE:
        return cuda_python_program(gib, seed)
    raise SystemExit(f"unknown program {program!r}: one of {', '.join(PROGRAMS)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", choices=(*PROGRAMS, BASELINE), required=True)
    parser.add_argument("--gib", type=float, default=8.0, help="weights to hold, GiB")
    parser.add_argument("--slack-gib", type=float, default=2.0,
                        help="blocks allocated and freed again, kept cached by the allocator")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    args.state.mkdir(parents=True, exist_ok=True)
    digest, stats = build(args.program, args.gib, args.slack_gib, args.seed)
    expected = digest()
    (args.state / "stats.json").write_text(json.dumps({"program": args.program, **stats()}))
    serve(args.state, expected, digest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
