"""A Llama-3-8B-shaped bf16 decoder held on the GPU, for restore benchmarks (issue 14).

    python -m restoreprof.workloads.llama_model --state DIR [--layers 32] [--seed 7]

The shape of Llama 3 8B: hidden 4096, 32 heads with 8 key/value heads (grouped-query
attention), SwiGLU MLP of 14336, RMSNorm, rotary positions, vocabulary 128256: 16.06 GB of bf16
weights at 32 layers (--layers scales it). Weights are drawn on the GPU from a seeded generator
(no checkpoint to download). Each weight is its own allocation, as a loaded model's are.

Digest (the ready/verified protocol of hold_memory, which HeldMemory drives): the greedy tokens
of a fixed prompt, the bytes of the last step's logits, and per weight the sum of its bf16 bit
patterns as integers (any changed value changes it), all hashed with SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from restoreprof.workloads.hold_memory import serve

HIDDEN, HEADS, KV_HEADS, FFN, VOCAB = 4096, 32, 8, 14336, 128256
PROMPT_TOKENS, NEW_TOKENS = 16, 8


def build(layers: int, seed: int, torch):
    """{name: tensor} of bf16 weights on the GPU, scaled as an initialised model's are."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    head = HIDDEN // HEADS

    def weight(*shape: int, std: float = 0.02):
        return torch.empty(shape, device="cuda", dtype=torch.bfloat16).normal_(0, std,
                                                                              generator=gen)

    w = {"embed": weight(VOCAB, HIDDEN), "norm": torch.ones(HIDDEN, device="cuda",
                                                            dtype=torch.bfloat16),
         "lm_head": weight(VOCAB, HIDDEN)}
    for i in range(layers):
        w |= {f"{i}.q": weight(HEADS * head, HIDDEN), f"{i}.k": weight(KV_HEADS * head, HIDDEN),
              f"{i}.v": weight(KV_HEADS * head, HIDDEN), f"{i}.o": weight(HIDDEN, HEADS * head),
              f"{i}.gate": weight(FFN, HIDDEN), f"{i}.up": weight(FFN, HIDDEN),
              f"{i}.down": weight(HIDDEN, FFN),
              f"{i}.attn_norm": torch.ones(HIDDEN, device="cuda", dtype=torch.bfloat16),
              f"{i}.mlp_norm": torch.ones(HIDDEN, device="cuda", dtype=torch.bfloat16)}
    return w


def forward(w: dict, layers: int, tokens, torch):
    """Logits for every position of tokens (1, T): a plain Llama block stack, no KV cache."""
    import torch.nn.functional as F

    head = HIDDEN // HEADS
    t = tokens.shape[1]

    def rms(x, g):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype) * g

    pos = torch.arange(t, device="cuda", dtype=torch.float32)
    inv = 1.0 / (500000.0 ** (torch.arange(0, head, 2, device="cuda", dtype=torch.float32) / head))
    angles = torch.outer(pos, inv)
    cos, sin = angles.cos().to(torch.bfloat16), angles.sin().to(torch.bfloat16)

    def rope(x):  # (1, heads, T, head)
        a, b = x[..., ::2], x[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)

    x = w["embed"][tokens]
    for i in range(layers):
        h = rms(x, w[f"{i}.attn_norm"])
        q = (h @ w[f"{i}.q"].T).view(1, t, HEADS, head).transpose(1, 2)
        k = (h @ w[f"{i}.k"].T).view(1, t, KV_HEADS, head).transpose(1, 2)
        v = (h @ w[f"{i}.v"].T).view(1, t, KV_HEADS, head).transpose(1, 2)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
        v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + a.transpose(1, 2).reshape(1, t, HIDDEN) @ w[f"{i}.o"].T
        h = rms(x, w[f"{i}.mlp_norm"])
        x = x + (F.silu(h @ w[f"{i}.gate"].T) * (h @ w[f"{i}.up"].T)) @ w[f"{i}.down"].T
    return rms(x, w["norm"]) @ w["lm_head"].T


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    args.state.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    w = build(args.layers, args.seed, torch)
    prompt = torch.randint(0, VOCAB, (1, PROMPT_TOKENS), device="cuda",
                           generator=torch.Generator(device="cuda").manual_seed(args.seed + 1))
    weight_bytes = sum(t.numel() * t.element_size() for t in w.values())

    def digest() -> str:
        with torch.no_grad():
            tokens = prompt
            for _ in range(NEW_TOKENS):  # greedy
                logits = forward(w, args.layers, tokens, torch)[:, -1]
                tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
            sums = torch.stack([t.view(torch.int16).sum(dtype=torch.int64) for t in w.values()])
            torch.cuda.synchronize()
        sha = hashlib.sha256(tokens.cpu().numpy().tobytes())
        sha.update(logits.float().cpu().numpy().tobytes())
        sha.update(sums.cpu().numpy().tobytes())
        torch.cuda.empty_cache()  # activations go: what stays is the weights
        return sha.hexdigest()

    first = digest()
    (args.state / "model.txt").write_text(f"weights_bytes={weight_bytes} layers={args.layers} "
                                          f"tokens={PROMPT_TOKENS}+{NEW_TOKENS}\n")
    serve(args.state, first, digest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
