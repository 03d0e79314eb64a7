"""The Fisher of one large model: a GPT-2-small-sized decoder and a small vision transformer.

Both models are built from torch.nn with random weights (nothing is downloaded). The GPT-2-sized
decoder has the shapes of GPT-2 small (12 layers, width 768, 12 heads, a 50,257-token vocabulary,
1,024 positions, the output projection tied to the token embedding as one Parameter: 124M
parameters); it reads 64 random sequences of 128 tokens in batches of 8, and its ``sample``
Fisher (one sampled continuation per token, the sequence as the sample) is timed against one
forward+backward pass of the token-level cross-entropy over the same batches. The vision
transformer (ViT-Tiny-like: 32×32 images in 4×4 patches, width 192, 6 `nn.TransformerEncoderLayer`
with 3 heads, a class token and positional embedding held as bare Parameters) reads 256 random
images in batches of 64.

Peak memory is the resident set's high-water mark (``VmHWM`` of /proc/self/status), reset before
each phase (``echo 5 > /proc/self/clear_refs``), so each figure is that phase's own peak, the
model and data included.

Usage: python benchmarks/transformer_speed.py [--models gpt2,vit] [--sequences 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ewc
from ewc.training import cross_entropy

Batches = list[tuple[Tensor, Tensor]]


class Block(nn.Module):
    """One GPT-2 block: pre-norm causal self-attention and a 4× GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn_in, self.attn_out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp_in, self.mlp_out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        n, t, width = x.shape
        q, k, v = self.attn_in(self.ln_1(x)).split(width, dim=2)
        q, k, v = (z.view(n, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_out(y.transpose(1, 2).reshape(n, t, width))
        return x + self.mlp_out(F.gelu(self.mlp_in(self.ln_2(x))))


class GPT(nn.Module):
    """GPT-2 small's shapes; the output projection is the token embedding (one Parameter)."""

    def __init__(
        self, vocab: int = 50257, positions: int = 1024, width: int = 768, layers: int = 12
    ):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(positions, width)
        self.blocks = nn.ModuleList(Block(width, width // 64) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, ids: Tensor) -> Tensor:
        # positions as one row per sample: an embedding called on ids shared by the batch has no
        # per-sample output, and its weight would take the (slower) whole-model path
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        x = self.wte(ids) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class ViT(nn.Module):
    """A small vision transformer from nn.TransformerEncoderLayer; class token and positions are
    bare Parameters of the root."""

    def __init__(self, width: int = 192, layers: int = 6, heads: int = 3, classes: int = 10):
        super().__init__()
        self.patch = nn.Conv2d(3, width, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, 65, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            4 * width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x)[:, 0]))


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(seconds, peak resident GiB) of one call."""
    reset_peak()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, peak_gib()


def forward_backward(model: nn.Module, data: Batches) -> None:
    for x, y in data:
        model.zero_grad(set_to_none=True)
        cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)


def bench(name: str, model: nn.Module, data: Batches, kinds: list[str]) -> dict:
    model.eval()
    count = sum(p.numel() for p in model.parameters())
    samples = sum(len(x) for x, _ in data)
    forward_backward(model, data[:1])  # warm-up
    base, base_peak = measure(lambda: forward_backward(model, data))
    print(f"\n{name}: {count / 1e6:.1f}M parameters, {samples} samples, batch {len(data[0][0])}")
    print(f"  forward+backward: {base:8.1f} s, peak RSS {base_peak:5.2f} GiB")
    figures = {"parameters": count, "samples": samples, "forward_backward_s": base}
    figures["forward_backward_peak_gib"] = base_peak
    for kind in kinds:
        gen = torch.Generator().manual_seed(0)
        seconds, peak = measure(
            lambda k=kind, g=gen: ewc.diagonal_fisher(model, data, k, generator=g)
        )
        print(
            f"  {kind:10s} Fisher: {seconds:8.1f} s = {seconds / base:5.2f}× fwd+bwd, "
            f"peak RSS {peak:5.2f} GiB"
        )
        figures[kind] = {"seconds": seconds, "ratio": seconds / base, "peak_gib": peak}
    return figures


def gpt_data(sequences: int, length: int, batch: int, vocab: int = 50257) -> Batches:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (sequences, length + 1), generator=gen)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, sequences, batch)]


def vit_data(images: int, batch: int) -> Batches:
    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(images, 3, 32, 32, generator=gen),
        torch.randint(0, 10, (images,), generator=gen),
    )
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, images, batch)]


def warm_up() -> None:
    """Load what the Fisher's first use of torch.func imports (seconds), outside any timing."""
    tiny = ViT(width=8, layers=1, heads=1)
    ewc.diagonal_fisher(tiny, vit_data(2, 2), "empirical")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vit,gpt2")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch (GPT)")
    parser.add_argument("--images", type=int, default=256, help="images (ViT)")
    parser.add_argument("--vit-kinds", default="sample,empirical")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warm_up()
    figures = {}
    for name in args.models.split(","):
        if name == "vit":
            figures["vit"] = bench(
                "ViT (6 × 192, 32×32 images)",
                ViT(),
                vit_data(args.images, 64),
                args.vit_kinds.split(","),
            )
        elif name == "gpt2":
            data = gpt_data(args.sequences, args.length, args.batch)
            figures["gpt2"] = bench(
                f"GPT-2-small-sized decoder, sequences of {args.length}", GPT(), data, ["sample"]
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
