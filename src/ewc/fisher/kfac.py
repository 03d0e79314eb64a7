"""`kfac_fisher`: Kronecker-factored Fisher blocks of Linear and Conv2d layers (K-FAC).

One forward pass per batch records each layer's input; one backward pass per output-gradient
vector of the kind (C − 1 for ``exact``, k for ``sample``, 1 for ``empirical``/``argmax``, the same
vectors as `ewc.fisher.cotangents`) asks autograd only for the gradients at the layers' outputs.
The factors (`ewc.fisher.kronecker`) are then

    A += Σ_n Σ_t ã_nt ã_ntᵀ,    G += Σ_n (1/T) Σ_t Σ_v g_ntv g_ntvᵀ,    both divided by N at the end

with t over the positions sharing the weight: the rows of a Linear input with leading dimensions
(tokens), or the output locations of a convolution, whose ã_nt is the input patch (Grosse &
Martens 2016, "KFC"). With one position and one input the block is exact: the Fisher block of
one datum is Σ_v (g_v ⊗ ã)(g_v ⊗ ã)ᵀ = (Σ_v g_v g_vᵀ) ⊗ ã ãᵀ.

Never silently wrong: every batch's autograd graph must show each factored weight and bias used
only inside its layer's single call (`ewc.fisher.coverage`), and the first batch checks that, for
one vector, the weight gradients the recorded calls imply (Σ_n Σ_t g_nt ã_ntᵀ) equal autograd's;
a weight also used outside its layer (tied, functional) fails either with an error naming it.
Parameters without a Kronecker rule (other module types, Conv2d with groups, a weight shared by
several modules) get a diagonal Fisher of the same kind over the same inputs, computed by
`ewc.diagonal_fisher` in a second pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ewc._batches import (
    Batch,
    OutputFn,
    check_class_targets,
    check_finite,
    iterate_batches,
    model_logits,
)
from ewc._chunks import sample_ranges
from ewc._modes import evaluation_mode
from ewc.fisher.capture import CallRecorder, ModuleCall
from ewc.fisher.cotangents import score_vectors
from ewc.fisher.coverage import plan_batch
from ewc.fisher.diagonal import DiagonalFisher
from ewc.fisher.distributed import AllReduce, all_reduce_factor_sums
from ewc.fisher.estimator import check_options, diagonal_fisher
from ewc.fisher.independence import check_coupling
from ewc.fisher.kinds import FisherKind
from ewc.fisher.kronecker import KroneckerFactors, KroneckerFisher
from ewc.fisher.verify import TOLERANCE

#: Entries (floats) one temporary of per-position patches may hold before it is cut in chunks.
_PATCH_BUDGET = 1 << 22


@dataclass(frozen=True)
class _Layer:
    """A module with a Kronecker rule: its weight's and bias's full parameter names."""

    module: nn.Linear | nn.Conv2d
    weight: str
    bias: str | None


def kfac_fisher(
    model: nn.Module,
    data: Iterable[Any],
    kind: FisherKind | str = "exact",
    *,
    num_samples: int | None = None,
    samples_per_input: int = 1,
    output_fn: OutputFn | None = None,
    generator: torch.Generator | None = None,
    all_reduce: AllReduce = True,
) -> KroneckerFisher:
    """Estimate a K-FAC Fisher (Martens & Grosse 2015): G ⊗ A per Linear / Conv2d layer.

    The arguments mean what they mean for `ewc.diagonal_fisher`; ``kind`` is one of the
    per-sample kinds (``exact``, ``sample``, ``empirical``, ``argmax``): a Kronecker factor needs
    per-sample output gradients, so ``batched`` has no K-FAC form. The model runs in eval mode.
    Inside an initialised process group the factors' sums and counts are all-reduced before the
    division, as the diagonal's are (``all_reduce``; `ewc.fisher.distributed`).

    Returns:
        A `KroneckerFisher`: ``blocks`` for the Linear and Conv2d layers, ``diagonal`` (same kind,
        same inputs) for every other trainable parameter, which the result lists in ``fallback``.
    """
    kind = FisherKind.parse(kind)
    if not kind.per_sample:
        raise ValueError(
            "kind='batched' squares mini-batch gradients and has no Kronecker factors; "
            "use 'exact', 'sample', 'empirical' or 'argmax'"
        )
    check_options(kind, num_samples, samples_per_input)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    layers = _kronecker_layers(model, params)
    if not layers:
        raise ValueError("the model has no trainable Linear or Conv2d layer for K-FAC to factor")
    fallback = sorted(set(params) - {n for layer in layers.values() for n in _names(layer)})
    device = next(iter(params.values())).device
    batches = iterate_batches(data, device=device, limit=num_samples)
    kept: list[Batch] | None = [] if fallback else None
    options = {"samples_per_input": samples_per_input, "generator": generator}
    with evaluation_mode(model), torch.enable_grad():
        factors, count = _factor_sums(model, batches, layers, kind, output_fn, options, kept)
    factors = {name: factors.get(name) or _zero_sums(layer) for name, layer in layers.items()}
    settings = f"{kind.value} spi={samples_per_input}"
    count = all_reduce_factor_sums(
        factors, count, settings, all_reduce, weights=list(params.values())
    )
    if count == 0:
        raise ValueError("data yielded no samples: the Fisher is a mean over at least one input")
    blocks = {name: _block(layer, factors[name], count) for name, layer in layers.items()}
    diagonal = _fallback_diagonal(
        model, kept, fallback, kind, output_fn, {**options, "all_reduce": all_reduce}
    )
    return KroneckerFisher(blocks, diagonal, kind, count)


def _kronecker_layers(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, _Layer]:
    """Modules with a Kronecker rule whose trainable weight (and bias, if any) they own alone."""
    full_names = {id(p): name for name, p in params.items()}
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    layers = {}
    for name, module in model.named_modules():
        if not _has_rule(module) or id(module.weight) not in full_names:
            continue
        bias = module.bias
        if bias is not None and id(bias) not in full_names:
            continue  # a frozen bias beside a trainable weight: the diagonal handles the weight
        shared = [p for p in (module.weight, bias) if p is not None and owners[id(p)] > 1]
        if shared:
            continue  # tied to another module: the diagonal's shared-parameter path handles it
        bias_name = None if bias is None else full_names[id(bias)]
        layers[name] = _Layer(module, full_names[id(module.weight)], bias_name)
    return layers


def _has_rule(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    return type(module) is nn.Conv2d and module.groups == 1


def _names(layer: _Layer) -> tuple[str, ...]:
    return (layer.weight,) if layer.bias is None else (layer.weight, layer.bias)


def _factor_sums(
    model: nn.Module,
    batches: Iterable[Batch],
    layers: dict[str, _Layer],
    kind: FisherKind,
    output_fn: OutputFn | None,
    options: dict[str, Any],
    kept: list[Batch] | None,
) -> tuple[dict[str, tuple[Tensor, Tensor]], int]:
    """Σ_n of both factors' terms per layer, and the number of inputs."""
    sums: dict[str, tuple[Tensor, Tensor]] = {}
    count = 0
    modules = {name: layer.module for name, layer in layers.items()}
    static = [*model.parameters(), *model.buffers()]
    independent = False  # the row checks ran on a batch of two or more samples
    with CallRecorder(modules, static) as recorder:
        for batch in batches:
            recorder.calls.clear()
            logits = _class_logits(model_logits(model, batch, output_fn), batch)
            check_finite(batch, logits)
            if kind.uses_labels:
                check_class_targets(batch.targets, logits.shape[1], batch)
            _check_uses(logits, recorder.calls, layers, batch)
            calls = _one_call_each(recorder.calls)
            vectors = list(score_vectors(logits, kind, targets=batch.targets, **options))
            for call in recorder.calls:
                call.check_inputs_unchanged()
            with recorder.paused():
                if count == 0:
                    _check_complete(logits, vectors[0], calls, layers)
                if not independent and batch.size >= 2:
                    tolerance = TOLERANCE.get(logits.dtype, 1e-4)
                    check_coupling(model, batch.inputs, output_fn, logits, tolerance)
                    independent = True
                _accumulate(sums, logits, vectors, calls, layers)
            count += batch.size
            if kept is not None:
                kept.append(batch)
    return sums, count


def _class_logits(logits: Tensor, batch: Batch) -> Tensor:
    """The (N, C) logits K-FAC takes; sequence logits (N, T, C) are the diagonal's."""
    if logits.dim() != 2:
        raise ValueError(
            f"batch {batch.index}: kfac_fisher takes (N, classes) logits; got shape "
            f"{tuple(logits.shape)} (for sequence outputs use ewc.diagonal_fisher)"
        )
    return logits


def _check_uses(
    logits: Tensor, calls: list[ModuleCall], layers: dict[str, _Layer], batch: Batch
) -> None:
    """Raise unless the graph shows every factored parameter used only in its layer's call."""
    params = {name: p for layer in layers.values() for name, p in _named(layer)}
    plan = plan_batch(logits, calls, params, batch.size)
    for name, reason in plan.whole_model.items():
        raise ValueError(
            f"batch {batch.index}: parameter {name!r} is {reason}; a Kronecker block covers a "
            "weight used only through its layer's single call (use ewc.diagonal_fisher, which "
            "covers such parameters)"
        )
    for name, sites in plan.sites.items():
        owner = next(layer_name for layer_name, layer in layers.items() if name in _names(layer))
        if [calls[i].name for i, _ in sites] != [owner]:
            raise ValueError(
                f"batch {batch.index}: parameter {name!r} is not used by exactly one call of "
                f"{owner!r}; a Kronecker block needs that (use ewc.diagonal_fisher)"
            )


def _named(layer: _Layer) -> list[tuple[str, nn.Parameter]]:
    return list(zip(_names(layer), _parameters(layer), strict=True))


def _one_call_each(calls: list[ModuleCall]) -> dict[str, ModuleCall]:
    """The recorded calls by module name; a layer that ran twice has no single Kronecker block."""
    by_name: dict[str, ModuleCall] = {}
    for call in calls:
        if call.name in by_name:
            raise ValueError(
                f"module {call.name!r} ran more than once in one forward pass; K-FAC factors one "
                "use per layer (use ewc.diagonal_fisher for this model)"
            )
        by_name[call.name] = call
    return by_name


def _accumulate(
    sums: dict[str, tuple[Tensor, Tensor]],
    logits: Tensor,
    vectors: list[Tensor],
    calls: dict[str, ModuleCall],
    layers: dict[str, _Layer],
) -> None:
    """Add this batch's Σ_n ã ãᵀ and Σ_n (1/T) Σ_v g gᵀ to the sums of each layer that ran."""
    with torch.no_grad():
        for name, call in calls.items():
            input_term = _input_gram(call, layers[name])
            if name not in sums:
                outputs = layers[name].module.weight.shape[0]
                sums[name] = (input_term, input_term.new_zeros(outputs, outputs))
            else:
                sums[name][0].add_(input_term)
    edges = [call.edges[0] for call in calls.values()]
    for i, vector in enumerate(vectors):
        last = i + 1 == len(vectors)
        grads = torch.autograd.grad(logits, edges, vector, retain_graph=not last, allow_unused=True)
        with torch.no_grad():
            for (name, call), grad in zip(calls.items(), grads, strict=True):
                if grad is not None:
                    rows = _accurate(_output_rows(call, grad))
                    sums[name][1].addmm_(rows.T, rows, alpha=1.0 / _positions(call))


def _output_rows(call: ModuleCall, grad: Tensor) -> Tensor:
    """The output gradients as rows, one per (sample, position): (N·T, O)."""
    if isinstance(call.module, nn.Conv2d):
        return grad.flatten(2).transpose(1, 2).reshape(-1, grad.shape[1])
    return grad.reshape(-1, grad.shape[-1])


def _positions(call: ModuleCall) -> int:
    """T, the number of positions per sample that share the weight (from the output's shape)."""
    shape = call.shapes[0]
    if isinstance(call.module, nn.Conv2d):
        return math.prod(shape[2:])
    return math.prod(shape[1:-1])


def _accurate(rows: Tensor) -> Tensor:
    """Rows in at least float32: half-precision sums of squares overflow and lose small terms."""
    return rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows


def _input_gram(call: ModuleCall, layer: _Layer) -> Tensor:
    """Σ_n Σ_t ã_nt ã_ntᵀ over the batch, in chunks of samples that fit the patch budget."""
    size = call.input.shape[0]
    total = None
    for start, stop in _chunks(call, size):
        rows = _accurate(_input_rows(call, start, stop, with_bias=layer.bias is not None))
        part = rows.T @ rows
        total = part if total is None else total.add_(part)
    return total


def _input_rows(call: ModuleCall, start: int, stop: int, *, with_bias: bool) -> Tensor:
    """ã for samples ``start:stop`` as rows, one per (sample, position): (n·T, J[+1])."""
    module, x = call.module, call.input[start:stop]
    if isinstance(module, nn.Conv2d):
        rows = _patches(module, x).transpose(1, 2).reshape(-1, module.weight[0].numel())
    else:
        rows = x.reshape(-1, x.shape[-1])
    if with_bias:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def _patches(module: nn.Conv2d, x: Tensor) -> Tensor:
    """(n, I·kh·kw, L): the input patch of every output location, padded as the module pads."""
    pads = module._reversed_padding_repeated_twice
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    return F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)


def _chunks(call: ModuleCall, size: int) -> list[tuple[int, int]]:
    """Sample ranges whose patch rows (T · J entries per sample) stay under the budget."""
    per_sample = _positions(call) * call.module.weight[0].numel()
    return sample_ranges(size, per_sample, _PATCH_BUDGET)


def _check_complete(
    logits: Tensor, vector: Tensor, calls: dict[str, ModuleCall], layers: dict[str, _Layer]
) -> None:
    """Raise unless the recorded calls explain autograd's weight gradients for one vector.

    A weight used anywhere besides its layer's single call (a functional weight tying, a reuse
    inside another module) adds a term the Kronecker block cannot hold; so does a layer whose
    output never reaches the logits while its weight does.
    """
    params = [p for layer in layers.values() for p in _parameters(layer)]
    expected = torch.autograd.grad(logits, params, vector, retain_graph=True, allow_unused=True)
    edges = {name: call.edges[0] for name, call in calls.items()}
    at_outputs = torch.autograd.grad(
        logits, list(edges.values()), vector, retain_graph=True, allow_unused=True
    )
    outputs = dict(zip(edges, at_outputs, strict=True))
    position = 0
    for name, layer in layers.items():
        count = len(_parameters(layer))
        wanted = expected[position : position + count]
        position += count
        implied = _implied_gradient(calls.get(name), outputs.get(name), layer)
        _compare(layer, wanted, implied)


def _parameters(layer: _Layer) -> list[nn.Parameter]:
    module = layer.module
    return [module.weight] if layer.bias is None else [module.weight, module.bias]


def _implied_gradient(call: ModuleCall | None, grad: Tensor | None, layer: _Layer) -> Tensor | None:
    """Σ_n Σ_t g_nt ã_ntᵀ as an O × (J[+1]) matrix, or None where the layer got no gradient."""
    if call is None or grad is None:
        return None
    with torch.no_grad():
        size = call.input.shape[0]
        total = None
        for start, stop in _chunks(call, size):
            rows = _accurate(_input_rows(call, start, stop, with_bias=layer.bias is not None))
            part = _accurate(_output_rows(call, grad[start:stop])).T @ rows
            total = part if total is None else total.add_(part)
        return total


def _compare(layer: _Layer, wanted: tuple[Tensor | None, ...], implied: Tensor | None) -> None:
    """Raise with the parameter's name if autograd's gradient differs from the implied one."""
    module = layer.module
    actual = [
        g if g is not None else torch.zeros_like(p)
        for g, p in zip(wanted, _parameters(layer), strict=True)
    ]
    flat = actual[0].reshape(actual[0].shape[0], -1)
    stacked = flat if layer.bias is None else torch.cat([flat, actual[1].reshape(-1, 1)], 1)
    stacked = _accurate(stacked)
    implied = torch.zeros_like(stacked) if implied is None else implied
    scale = float(stacked.abs().max())
    tolerance = 10 * torch.finfo(stacked.dtype).eps ** 0.5 * max(scale, float(implied.abs().max()))
    error = float((stacked - implied).abs().max())
    if error > tolerance:
        raise ValueError(
            f"parameter {layer.weight!r} of {type(module).__name__} reaches the output other than "
            f"through that layer's single call (e.g. tied or used functionally): its gradient "
            f"differs by {error:.3g} from what the layer's inputs and outputs imply, so it has no "
            "Kronecker block; use ewc.diagonal_fisher, which covers such parameters"
        )


def _zero_sums(layer: _Layer) -> tuple[Tensor, Tensor]:
    """The factor sums of a layer that never ran (on this rank): zero."""
    weight = layer.module.weight
    columns = weight[0].numel() + (layer.bias is not None)
    zeros = _accurate(weight.new_zeros(()))
    return zeros.new_zeros(columns, columns), zeros.new_zeros(weight.shape[0], weight.shape[0])


def _block(layer: _Layer, sums: tuple[Tensor, Tensor], count: int) -> KroneckerFactors:
    """The layer's factors as means over the inputs."""
    shape = tuple(layer.module.weight.shape)
    return KroneckerFactors(layer.weight, layer.bias, sums[0] / count, sums[1] / count, shape)


def _fallback_diagonal(
    model: nn.Module,
    kept: list[Batch] | None,
    fallback: list[str],
    kind: FisherKind,
    output_fn: OutputFn | None,
    options: dict[str, Any],
) -> DiagonalFisher | None:
    """The diagonal Fisher of the parameters without a Kronecker rule, over the same inputs."""
    if not fallback or kept is None:
        return None
    data = [(batch.inputs, batch.targets) for batch in kept]
    full = diagonal_fisher(model, data, kind, output_fn=output_fn, **options)
    values = {name: full[name] for name in fallback}
    return DiagonalFisher(values, kind=kind, num_samples=full.num_samples)
