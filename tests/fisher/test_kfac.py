"""K-FAC factors against float64 one-sample-at-a-time definitions; exact where K-FAC is exact."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from ewc import diagonal_fisher
from ewc.fisher.kfac import kfac_fisher

torch.manual_seed(0)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3, bias=False)).double()


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(3, 2, 2, dilation=2, padding_mode="reflect", padding=1),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 4),
    ).double()


class _Tokens(nn.Module):
    """A Linear over a sequence's positions (N, T, I), then a mean over positions."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 5)
        self.out = nn.Linear(5, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.proj(x)).mean(1))


CASES = {
    "mlp": (_mlp, (7, 5), 3),
    "cnn": (_cnn, (6, 2, 5, 5), 4),
    "tokens": (lambda: _Tokens().double(), (6, 4, 3), 4),
}


def _case(name):
    factory, shape, classes = CASES[name]
    model = factory()
    inputs = torch.randn(*shape, dtype=torch.float64)
    return model, inputs, torch.randint(0, classes, (shape[0],))


def _layer_io(model: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """The log-probabilities of one input and, per Linear/Conv2d, its (input, output) tensors."""
    seen: dict[str, tuple[Tensor, Tensor]] = {}
    handles = [
        m.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, (a[0], out)))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    try:
        log_p = model(x)[0].log_softmax(-1)
    finally:
        for h in handles:
            h.remove()
    return log_p, seen


def _rows(module: nn.Module, value: Tensor, *, is_input: bool) -> Tensor:
    """Positions as rows for one sample: ã (with the bias 1) for inputs, g for outputs."""
    if isinstance(module, nn.Conv2d):
        if is_input:
            pads = module._reversed_padding_repeated_twice
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            value = torch.nn.functional.pad(value, pads, mode=mode)
            value = torch.nn.functional.unfold(
                value, module.kernel_size, dilation=module.dilation, stride=module.stride
            )
            value = value[0].T
        else:
            value = value[0].flatten(1).T
    else:
        value = value.reshape(-1, value.shape[-1])
    if is_input and module.bias is not None:
        value = torch.cat([value, torch.ones(value.shape[0], 1, dtype=value.dtype)], 1)
    return value


def _reference_factors(model, inputs, targets, kind):
    """A = (1/N) Σ_n Σ_t ã ãᵀ and G = (1/N) Σ_n (1/T) Σ_t Σ_labels w g gᵀ, one sample at a time."""
    model.eval()
    sums: dict[str, list[Tensor]] = {}
    for n in range(inputs.shape[0]):
        log_p, seen = _layer_io(model, inputs[n : n + 1])
        p = log_p.exp().detach()
        labels = {
            "exact": [(c, float(p[c])) for c in range(p.shape[0])],
            "empirical": [(int(targets[n]), 1.0)],
            "argmax": [(int(p.argmax()), 1.0)],
        }[kind]
        for name, (a, out) in seen.items():
            module = model.get_submodule(name)
            rows_a = _rows(module, a.detach(), is_input=True)
            entry = sums.setdefault(name, [0.0, 0.0])
            entry[0] = entry[0] + rows_a.T @ rows_a
            for label, weight in labels:
                (g,) = torch.autograd.grad(log_p[label], out, retain_graph=True)
                rows_g = _rows(module, g, is_input=False)
                entry[1] = entry[1] + weight * rows_g.T @ rows_g / rows_g.shape[0]
    return {name: (a / inputs.shape[0], g / inputs.shape[0]) for name, (a, g) in sums.items()}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("kind", ["exact", "empirical", "argmax"])
def test_factors_match_their_definition_one_sample_at_a_time(name, kind):
    model, inputs, targets = _case(name)
    fisher = kfac_fisher(model, [(inputs[:4], targets[:4]), (inputs[4:], targets[4:])], kind)
    reference = _reference_factors(model, inputs, targets, kind)
    assert set(fisher.blocks) == set(reference)
    for layer, (a, g) in reference.items():
        block = fisher.blocks[layer]
        torch.testing.assert_close(block.input_factor, a, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(block.output_factor, g, rtol=1e-10, atol=1e-12)
    assert fisher.num_samples == inputs.shape[0]
    assert fisher.fallback == []


def _dense_block(model: nn.Module, x: Tensor, weight: str, bias: str | None) -> Tensor:
    """The exact Fisher block of [W, b] for one input: Jᵀ (diag p − p pᵀ) J, J by jacrev."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    jac = jacrev(lambda q: functional_call(model, q, (x,))[0])(params)
    parts = [jac[weight].reshape(jac[weight].shape[0], params[weight].shape[0], -1)]
    if bias is not None:
        parts.append(jac[bias].unsqueeze(-1))
    j = torch.cat(parts, dim=2).flatten(1)  # row-major order of W̃ = [W, b]
    p = model(x)[0].softmax(-1).detach()
    return j.T @ (torch.diag(p) - torch.outer(p, p)) @ j


def test_one_datum_block_is_the_exact_fisher_block():
    model, inputs, targets = _case("mlp")
    x = inputs[:1]
    fisher = kfac_fisher(model, [(x, targets[:1])], "exact")
    for block in fisher.blocks.values():
        dense = _dense_block(model, x, block.weight, block.bias)
        torch.testing.assert_close(block.dense(), dense, rtol=1e-10, atol=1e-13)


def test_sample_kind_averages_to_exact_for_many_draws():
    model, inputs, targets = _case("mlp")
    exact = kfac_fisher(model, [(inputs, targets)], "exact")
    sampled = kfac_fisher(
        model,
        [(inputs, targets)],
        "sample",
        samples_per_input=4000,
        generator=torch.Generator().manual_seed(1),
    )
    for name, block in exact.blocks.items():
        other = sampled.blocks[name]
        torch.testing.assert_close(other.input_factor, block.input_factor)
        error = (other.output_factor - block.output_factor).abs().max()
        assert error < 0.05 * block.output_factor.abs().max()


def test_diagonal_of_a_block_is_kron_of_the_factor_diagonals():
    model, inputs, targets = _case("cnn")
    fisher = kfac_fisher(model, [(inputs, targets)], "exact")
    block = fisher.blocks["0"]
    flat = torch.diagonal(block.dense()).reshape(block.output_factor.shape[0], -1)
    torch.testing.assert_close(block.diagonal(), flat)
    approximation = fisher.diagonal_approximation()
    assert approximation["0.weight"].shape == model[0].weight.shape
    torch.testing.assert_close(approximation["0.bias"], flat[:, -1])


class _WithNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.inp(x))))


def test_layers_without_a_rule_keep_the_diagonal_of_the_same_kind_and_inputs():
    model = _WithNorm().double()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    data = [(x[:5], y[:5]), (x[5:], y[5:])]
    fisher = kfac_fisher(model, iter(data), "empirical", num_samples=7)
    assert sorted(fisher.fallback) == ["norm.bias", "norm.weight"]
    assert sorted(fisher.covered) == ["inp.bias", "inp.weight", "out.bias", "out.weight"]
    diagonal = diagonal_fisher(model, data, "empirical", num_samples=7)
    for name in fisher.fallback:
        torch.testing.assert_close(fisher.diagonal[name], diagonal[name], rtol=1e-12, atol=0)
    assert fisher.diagonal.num_samples == fisher.num_samples == 7


class _FunctionallyTied(nn.Module):
    """Logits through the embedding matrix: h @ emb.weightᵀ, besides a Linear that owns it."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 5)
        self.dec = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        return self.dec(h) + h @ self.dec.weight.T


def test_a_weight_used_outside_its_layer_is_an_error_naming_it():
    model = _FunctionallyTied().double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    with pytest.raises(ValueError, match=r"'dec.weight'.*diagonal_fisher"):
        kfac_fisher(model, [(x, y)], "exact")


def test_a_weight_shared_by_two_modules_falls_back_to_the_diagonal():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
    model[2].weight = model[0].weight
    model = model.double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    fisher = kfac_fisher(model, [(x, y)], "exact")
    assert "0.weight" in fisher.fallback
    assert list(fisher.blocks) == ["4"]


def test_a_layer_run_twice_is_an_error():
    layer = nn.Linear(3, 3).double()
    model = nn.Sequential(layer, nn.Tanh(), layer)
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 3, (4,))
    with pytest.raises(ValueError, match=r"exactly one call|ran more than once"):
        kfac_fisher(model, [(x, y)], "exact")


def test_batched_has_no_kronecker_form():
    model, inputs, targets = _case("mlp")
    with pytest.raises(ValueError, match="batched"):
        kfac_fisher(model, [(inputs, targets)], "batched")


def test_half_precision_model_gets_float32_factors():
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(torch.bfloat16)
    x, y = torch.randn(8, 5, dtype=torch.bfloat16), torch.randint(0, 3, (8,))
    fisher = kfac_fisher(model, [(x, y)], "exact")
    reference = kfac_fisher(model.double(), [(x.double(), y)], "exact")
    for name, block in fisher.blocks.items():
        assert block.input_factor.dtype == torch.float32
        ref = reference.blocks[name]
        torch.testing.assert_close(
            block.output_factor.double(), ref.output_factor, rtol=0.05, atol=1e-3
        )
