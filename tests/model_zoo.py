"""Small float64 models covering every per-layer rule, the fallback and the awkward cases."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Case:
    """A model, a batch of inputs with labels, and how to read logits from its output."""

    name: str
    model: nn.Module
    inputs: Tensor
    targets: Tensor
    output_fn: Callable | None = None


class Gated(nn.Module):
    """A raw nn.Parameter used in a custom forward, around a child Linear (no rule: fallback)."""

    def __init__(self, width: int):
        super().__init__()
        self.gate = nn.Parameter(torch.randn(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x) * torch.sigmoid(self.gate) + self.gate


class Mixer(nn.Module):
    """A raw parameter with an unbatched tensor argument and a keyword argument (fallback)."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, width) / width**0.5)

    def forward(self, x: Tensor, mix: Tensor, *, gain: float = 1.0) -> Tensor:
        return gain * torch.tanh(x @ self.weight) @ mix


class MixerModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.mixer = Mixer(5)
        self.register_buffer("mix", torch.randn(5, 5))
        self.out = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.mixer(self.inp(x), self.mix, gain=1.5))


class PairOut(nn.Module):
    """A parameter-owning module that returns a tuple (the fallback handles several outputs)."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.scale, torch.tanh(x * self.scale.square())


class PairModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.pair = PairOut(8)
        self.out = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.pair(torch.tanh(self.inp(x)))
        return self.out(torch.cat([a, b], dim=1))


class SequenceModel(nn.Module):
    """Embedding with a padding row, LayerNorm and Linear over (N, T, D), then a mean over T."""

    def __init__(self, vocab: int = 11, dim: int = 6, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.rms = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: Tensor) -> Tensor:
        h = torch.tanh(self.mix(self.norm(self.embed(ids))))
        return self.head(self.rms(h).mean(dim=1))


class TiedModel(nn.Module):
    """A language-model-style head tied to the embedding: one parameter used by two modules."""

    def __init__(self, vocab: int = 9, dim: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(torch.tanh(self.embed(ids).mean(dim=1)))


class ReusedModel(nn.Module):
    """The same Linear called twice in one forward."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 7)
        self.shared = nn.Linear(7, 7)
        self.out = nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.shared(h)))


class MultiHead(nn.Module):
    """A trunk with one head per task; the output is the list of every head's logits."""

    def __init__(self, heads: int = 3):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(8, 2) for _ in range(heads))

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.trunk(x)
        return [head(h) for head in self.heads]


def _randomize_norm_statistics(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
        if getattr(m, "weight", None) is not None and isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.3)


def _labels(n: int, classes: int) -> Tensor:
    return torch.randint(0, classes, (n,))


def mlp(n: int = 7) -> Case:
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 10),
        nn.ReLU(inplace=True),
        nn.Linear(10, 9),
        nn.Tanh(),
        nn.Linear(9, 5),
    )
    return Case("mlp", model, torch.randn(n, 3, 4), _labels(n, 5))


def cnn(n: int = 5) -> Case:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(6, 4, 2, dilation=2, bias=False),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 5),
    )
    return Case("cnn", model, torch.randn(n, 2, 16, 16), _labels(n, 5))


def conv1d(n: int = 5) -> Case:
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3, padding="same"),
        nn.Tanh(),
        nn.Conv1d(4, 4, 2, dilation=2, stride=2, padding_mode="circular", padding=1),
        nn.Flatten(),
        nn.Linear(4 * 5, 3),
    )
    return Case("conv1d", model, torch.randn(n, 3, 10), _labels(n, 3))


def norms(n: int = 6) -> Case:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.GroupNorm(2, 4),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8),
        nn.BatchNorm1d(8),
        nn.Tanh(),
        nn.LayerNorm(8),
        nn.Linear(8, 4),
    )
    _randomize_norm_statistics(model)
    return Case("norms", model, torch.randn(n, 2, 6, 6), _labels(n, 4))


def sequence(n: int = 6) -> Case:
    ids = torch.randint(0, 11, (n, 7))
    ids[:, 0] = ids[:, 1]  # repeated ids inside a sample: gradients sum before squaring
    ids[0, 2] = 0  # the padding row
    model = SequenceModel()
    _randomize_norm_statistics(model)
    return Case("sequence", model, ids, _labels(n, 4))


def frozen(n: int = 6) -> Case:
    case = mlp(n)
    case.model[1].weight.requires_grad_(False)
    case.model[3].bias.requires_grad_(False)
    return Case("frozen", case.model, case.inputs, case.targets)


def multi_head(n: int = 6) -> Case:
    return Case(
        "multi_head", MultiHead(), torch.randn(n, 6), _labels(n, 2), output_fn=lambda out: out[1]
    )


def fallback(n: int = 5) -> Case:
    model = nn.Sequential(nn.Linear(4, 6), Gated(6), nn.Tanh(), nn.Linear(6, 3))
    return Case("fallback", model, torch.randn(n, 4), _labels(n, 3))


def fallback_with_arguments(n: int = 5) -> Case:
    return Case("fallback_with_arguments", MixerModel(), torch.randn(n, 4), _labels(n, 3))


def tuple_output(n: int = 5) -> Case:
    return Case("tuple_output", PairModel(), torch.randn(n, 6), _labels(n, 4))


def tied(n: int = 5) -> Case:
    return Case("tied", TiedModel(), torch.randint(0, 9, (n, 4)), _labels(n, 9))


def reused(n: int = 5) -> Case:
    return Case("reused", ReusedModel(), torch.randn(n, 5), _labels(n, 3))


class FunctionallyTied(nn.Module):
    """The usual language-model tying: the output projection reads the embedding matrix itself."""

    def __init__(self, vocab: int = 7, dim: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)

    def forward(self, ids: Tensor) -> Tensor:
        h = torch.tanh(self.mix(self.embed(ids).mean(dim=1)))
        return h @ self.embed.weight.T


class RootParameter(nn.Module):
    """A learned positional embedding held as a bare nn.Parameter of the root module."""

    def __init__(self, length: int = 4, dim: int = 5, classes: int = 3):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.5)
        self.inp = nn.Linear(3, dim)
        self.out = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.inp(x) + self.pos).mean(dim=1))


class FusedBlock(nn.Module):
    """Owns nothing, and uses its children's weights without calling them (like a fused fast
    path): no hook of the children fires."""

    def __init__(self, dim: int = 6):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        h = F.linear(x, self.lin.weight, self.lin.bias)
        return F.layer_norm(torch.tanh(h), (x.shape[-1],), self.norm.weight, self.norm.bias)


class FusedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.block = FusedBlock(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.block(self.inp(x)))


class FuncInside(nn.Module):
    """A parameter used inside a torch.func call in the forward of a module without a rule."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        params = {"weight": self.inner.weight * 1.5, "bias": self.inner.bias}
        h = torch.func.functional_call(self.inner, params, (x,))
        return self.out(torch.tanh(h))


class Encoder(nn.Module):
    """A transformer encoder classifier over token ids, with a padding mask (id 0 is padding)."""

    def __init__(self, vocab: int = 9, dim: int = 8, classes: int = 3, norm_first: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.layer = nn.TransformerEncoderLayer(
            dim, 2, 12, dropout=0.1, batch_first=True, norm_first=norm_first
        )
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: Tensor) -> Tensor:
        pad = ids == 0
        h = self.layer(self.embed(ids), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


class Decoder(nn.Module):
    """A transformer decoder layer over a memory from its own input, with a causal mask."""

    def __init__(self, dim: int = 8, classes: int = 3):
        super().__init__()
        self.inp = nn.Linear(3, dim)
        self.layer = nn.TransformerDecoderLayer(dim, 2, 12, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=h.dtype)
        return self.head(self.layer(h, torch.tanh(h), tgt_mask=causal)[:, -1])


class Attention(nn.Module):
    """nn.MultiheadAttention alone, with bias_k/bias_v and a key padding mask."""

    def __init__(self, dim: int = 6, classes: int = 3):
        super().__init__()
        self.inp = nn.Linear(2, dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True, add_bias_kv=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        pad = x[..., 0] > 1.0
        out, _ = self.attn(h, h, h, key_padding_mask=pad)
        return self.head(out.mean(1))


@dataclass
class LMOutput:
    logits: Tensor
    hidden: Tensor


class TinyLM(nn.Module):
    """A decoder-only language model: token embedding tied functionally to the output, a learned
    positional embedding as a bare root parameter, a causal encoder layer, RMSNorm; it returns a
    dataclass (``output_fn`` reads ``.logits``), one row of vocabulary logits per token."""

    def __init__(self, vocab: int = 3, dim: int = 6, length: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.3)
        self.block = nn.TransformerEncoderLayer(
            dim, 2, 10, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.RMSNorm(dim)

    def forward(self, ids: Tensor) -> LMOutput:
        t = ids.shape[1]
        h = self.embed(ids) + self.pos[:t]
        causal = nn.Transformer.generate_square_subsequent_mask(t, dtype=h.dtype)
        h = self.norm(self.block(h, src_mask=causal, is_causal=True))
        return LMOutput(logits=h @ self.embed.weight.T, hidden=h)


class TokenTagger(nn.Module):
    """Per-token logits of a small sequence model, returned in a dict."""

    def __init__(self, vocab: int = 6, dim: int = 5, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Conv1d(dim, dim, 3, padding=1)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: Tensor) -> dict[str, Tensor]:
        h = self.norm(self.embed(ids))
        h = torch.tanh(self.mix(h.transpose(1, 2)).transpose(1, 2))
        return {"logits": self.head(h), "ids": ids}


def functional_tying(n: int = 5) -> Case:
    return Case("functional_tying", FunctionallyTied(), torch.randint(0, 7, (n, 3)), _labels(n, 7))


def root_parameter(n: int = 5) -> Case:
    return Case("root_parameter", RootParameter(), torch.randn(n, 4, 3), _labels(n, 3))


def fused(n: int = 5) -> Case:
    model = FusedModel()
    _randomize_norm_statistics(model)
    return Case("fused", model, torch.randn(n, 4), _labels(n, 3))


def func_inside(n: int = 5) -> Case:
    return Case("func_inside", FuncInside(), torch.randn(n, 4), _labels(n, 3))


def _padded_ids(n: int, length: int, vocab: int) -> Tensor:
    ids = torch.randint(1, vocab, (n, length))
    for row in range(n):
        ids[row, length - row % length :] = 0  # from 0 to length − 1 padding tokens
    return ids


def encoder(n: int = 5) -> Case:
    return Case("encoder", Encoder(), _padded_ids(n, 5, 9), _labels(n, 3))


def encoder_norm_first(n: int = 5) -> Case:
    return Case("encoder_norm_first", Encoder(norm_first=True), _padded_ids(n, 4, 9), _labels(n, 3))


def decoder(n: int = 5) -> Case:
    return Case("decoder", Decoder(), torch.randn(n, 4, 3), _labels(n, 3))


def attention(n: int = 5) -> Case:
    x = torch.randn(n, 5, 2)
    x[:, 0, 0] = 0.0  # at least one key is never masked
    return Case("attention", Attention(), x, _labels(n, 3))


def _token_targets(ids: Tensor, classes: int, pad: Tensor) -> Tensor:
    return torch.randint(0, classes, ids.shape).masked_fill(pad, -100)


def language_model(n: int = 4) -> Case:
    ids = torch.randint(0, 3, (n, 3))
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100  # no next token
    targets[1, 1:] = -100  # a shorter sequence
    return Case("language_model", TinyLM(), ids, targets, output_fn=lambda out: out.logits)


def tagger(n: int = 4) -> Case:
    ids = _padded_ids(n, 3, 6)
    targets = _token_targets(ids, 3, ids == 0)
    return Case("tagger", TokenTagger(), ids, targets, output_fn=lambda out: out["logits"])


CLASSIFIERS = [
    mlp,
    cnn,
    conv1d,
    norms,
    sequence,
    frozen,
    multi_head,
    fallback,
    fallback_with_arguments,
    tuple_output,
    tied,
    reused,
    functional_tying,
    root_parameter,
    fused,
    func_inside,
    encoder,
    encoder_norm_first,
    decoder,
    attention,
]

SEQUENCES = [language_model, tagger]

ALL = CLASSIFIERS + SEQUENCES


def build(factory: Callable[[], Case], seed: int = 0) -> Case:
    """The case in float64, with parameters and data drawn from ``seed``."""
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.float64)
    try:
        case = factory()
    finally:
        torch.set_default_dtype(torch.float32)
    case.model.double()
    if case.inputs.is_floating_point():
        case.inputs = case.inputs.double()
    return case
