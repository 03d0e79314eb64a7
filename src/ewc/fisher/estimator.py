"""`diagonal_fisher`: the driver that runs the model over data and applies the per-layer rules.

Per-sample kinds cost one forward pass and, per output-gradient vector (1, k or C − 1 of them, see
`ewc.fisher.cotangents`), one backward pass that asks autograd only for the gradients at the
outputs of parameter-owning modules. The rules turn those into Σ_n (per-sample gradient)² without
materialising per-sample gradients where a closed form exists (`ewc.fisher.rules`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ewc._batches import Batch, check_class_targets, iterate_batches, model_logits
from ewc._modes import evaluation_mode
from ewc.fisher.capture import CallRecorder, ModuleCall
from ewc.fisher.cotangents import score_vectors
from ewc.fisher.diagonal import DiagonalFisher
from ewc.fisher.kinds import FisherKind
from ewc.fisher.rules import rule_for
from ewc.fisher.rules.base import PER_SAMPLE_BUDGET

OutputFn = Callable[[Any], Tensor]


def diagonal_fisher(
    model: nn.Module,
    data: Iterable[Any],
    kind: FisherKind | str = "exact",
    *,
    num_samples: int | None = None,
    samples_per_input: int = 1,
    output_fn: OutputFn | None = None,
    generator: torch.Generator | None = None,
) -> DiagonalFisher:
    """Estimate the diagonal Fisher information of a classifier's trainable parameters.

    F_i is a mean over the N inputs of ``data`` (the formulas of each kind are in
    `ewc.fisher.kinds`); the result has one tensor per trainable parameter, keyed by its
    ``named_parameters()`` name. This is the F of EWC's penalty (λ/2) Σ_i F_i (θ_i − θ*_i)²
    (Kirkpatrick et al. 2017, Eq. 3).

    The model runs in eval mode (dropout off, BatchNorm on running statistics; its previous modes
    are restored) and the samples must be independent of each other, as they are in eval mode.
    No hook stays registered and no ``.grad`` is touched, also when an exception escapes.

    Args:
        model: a classifier whose output (after ``output_fn``) is (N, C) logits or log-probs.
        data: an iterable of ``(inputs, targets)`` batches, e.g. a DataLoader. Targets are only read
            by ``empirical`` and ``batched``; inputs are moved to the model's device.
        kind: ``"exact"`` (default), ``"sample"``, ``"empirical"``, ``"argmax"`` or ``"batched"``.
        num_samples: use at most this many inputs, the first ones in iteration order.
        samples_per_input: labels drawn per input for ``kind="sample"`` (the k of its formula).
        output_fn: maps the model output to logits, e.g. to select a task's head in a multi-head
            model or to mask classes; default: the output is the logits.
        generator: the random generator for ``kind="sample"``, for reproducible estimates.

    Returns:
        A `DiagonalFisher` with ``kind`` and ``num_samples`` (the number of inputs used).
    """
    kind = FisherKind.parse(kind)
    _check_options(kind, num_samples, samples_per_input)
    params = _trainable_parameters(model)
    device = next(iter(params.values())).device
    batches = iterate_batches(data, device=device, limit=num_samples)
    with evaluation_mode(model), torch.enable_grad():
        if kind is FisherKind.BATCHED:
            sums, count, divisor = _batched_sums(model, batches, params, output_fn)
        else:
            options = {"samples_per_input": samples_per_input, "generator": generator}
            sums, count = _per_sample_sums(model, batches, params, kind, output_fn, options)
            divisor = count
    if count == 0:
        raise ValueError("data yielded no samples: the Fisher is a mean over at least one input")
    values = {name: total / divisor for name, total in sums.items()}
    return DiagonalFisher(values, kind=kind, num_samples=count)


def _check_options(kind: FisherKind, num_samples: int | None, samples_per_input: int) -> None:
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise ValueError(f"num_samples must be a positive integer or None; got {num_samples!r}")
    if isinstance(samples_per_input, bool) or not isinstance(samples_per_input, int):
        raise ValueError(f"samples_per_input must be a positive integer; got {samples_per_input!r}")
    if samples_per_input < 1:
        raise ValueError(f"samples_per_input must be a positive integer; got {samples_per_input}")
    if samples_per_input != 1 and kind is not FisherKind.SAMPLE:
        raise ValueError(
            f"samples_per_input={samples_per_input} only applies to kind='sample'; "
            f"kind={kind.value!r} uses one label per input"
        )


def _trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters (none has requires_grad=True)")
    return params


def _batched_sums(
    model: nn.Module,
    batches: Iterable[Batch],
    params: dict[str, nn.Parameter],
    output_fn: OutputFn | None,
) -> tuple[dict[str, Tensor], int, int]:
    """Σ_batches (gradient of the batch-mean log-likelihood)², and the input and batch counts."""
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    count = num_batches = 0
    for batch in batches:
        logits = model_logits(model, batch, output_fn)
        check_class_targets(batch.targets, logits.shape[1], batch)
        loss = F.cross_entropy(logits, batch.targets)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for name, grad in zip(params, grads, strict=True):
            if grad is not None:
                sums[name].add_(grad.square())
        count, num_batches = count + batch.size, num_batches + 1
    return sums, count, num_batches


def _per_sample_sums(
    model: nn.Module,
    batches: Iterable[Batch],
    params: dict[str, nn.Parameter],
    kind: FisherKind,
    output_fn: OutputFn | None,
    options: dict[str, Any],
) -> tuple[dict[str, Tensor], int]:
    """Σ_n Σ_v (per-sample gradient for vector v)² per parameter, and the number of inputs."""
    owners = _owners(model, params)
    modules = {name: module for name, (module, _) in owners.items()}
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    count = 0
    static = [*model.parameters(), *model.buffers()]
    with CallRecorder(modules, static) as recorder:
        for batch in batches:
            recorder.calls.clear()
            logits = model_logits(model, batch, output_fn)
            if kind.uses_labels:
                check_class_targets(batch.targets, logits.shape[1], batch)
            vectors = score_vectors(logits, kind, targets=batch.targets, **options)
            _accumulate_batch(recorder, logits, list(vectors), owners, sums)
            count += batch.size
    return sums, count


def _owners(
    model: nn.Module, params: dict[str, nn.Parameter]
) -> dict[str, tuple[nn.Module, dict[str, str]]]:
    """Module name → (module, {local name: full name}) for modules owning trainable parameters."""
    full_names = {id(p): name for name, p in params.items()}
    owners = {}
    for module_name, module in model.named_modules():
        local = {
            local_name: full_names[id(p)]
            for local_name, p in module.named_parameters(recurse=False)
            if id(p) in full_names
        }
        if local:
            owners[module_name] = (module, local)
    return owners


def _accumulate_batch(
    recorder: CallRecorder,
    logits: Tensor,
    vectors: list[Tensor],
    owners: dict[str, tuple[nn.Module, dict[str, str]]],
    sums: dict[str, Tensor],
) -> None:
    """Back-propagate each vector to the recorded module outputs; add the rules' squares to sums.

    Parameters used by one call go through their rule's ``partial`` (summed over the vectors) and
    ``finalize``; a parameter shared by several calls sums its per-sample gradients first.
    """
    calls = recorder.calls
    for call in calls:
        call.check_inputs_unchanged()
    edges = [edge for call in calls for edge in call.edges]
    if not edges:
        return  # no trainable module reached the logits in this batch: it adds nothing
    uses = _parameter_uses(calls, owners)
    shared = {full for full, sites in uses.items() if len(sites) > 1}
    own = [_own_names(call, owners, shared) for call in calls]
    partials: list[dict[str, Tensor]] = [{} for _ in calls]
    for i, vector in enumerate(vectors):
        last = i + 1 == len(vectors)
        flat = torch.autograd.grad(logits, edges, vector, retain_graph=not last, allow_unused=True)
        grads = _split_per_call(calls, flat, logits)
        with recorder.paused(), torch.no_grad():
            for call, call_grads, names, partial in zip(calls, grads, own, partials, strict=True):
                if call_grads is not None and names:
                    _add_into(partial, rule_for(call.module).partial(call, call_grads, names))
            for full in shared:
                _add_into(sums, {full: _shared_squares(uses[full], calls, grads, logits.shape[0])})
    with recorder.paused(), torch.no_grad():
        for call, names, partial in zip(calls, own, partials, strict=True):
            if partial:
                finished = rule_for(call.module).finalize(call, partial, names)
                full_names = owners[call.name][1]
                _add_into(sums, {full_names[local]: value for local, value in finished.items()})


def _parameter_uses(
    calls: list[ModuleCall], owners: dict[str, tuple[nn.Module, dict[str, str]]]
) -> dict[str, list[tuple[int, str]]]:
    """Full parameter name → [(call position, local name)] over every recorded call that uses it."""
    uses: dict[str, list[tuple[int, str]]] = {}
    for position, call in enumerate(calls):
        for local, full in owners[call.name][1].items():
            uses.setdefault(full, []).append((position, local))
    return uses


def _own_names(
    call: ModuleCall, owners: dict[str, tuple[nn.Module, dict[str, str]]], shared: set[str]
) -> list[str]:
    """Local names of the call's parameters that no other call shares."""
    return [local for local, full in owners[call.name][1].items() if full not in shared]


def _split_per_call(
    calls: list[ModuleCall], flat: tuple[Tensor | None, ...], logits: Tensor
) -> list[list[Tensor] | None]:
    """Regroup autograd's flat answer per call; None for calls the vector does not reach."""
    grouped, start = [], 0
    for call in calls:
        part = flat[start : start + len(call.edges)]
        start += len(call.edges)
        if all(g is None for g in part):
            grouped.append(None)
        else:
            grouped.append(
                [
                    g if g is not None else logits.new_zeros(s)
                    for g, s in zip(part, call.shapes, strict=True)
                ]
            )
    return grouped


def _shared_squares(
    sites: list[tuple[int, str]],
    calls: list[ModuleCall],
    grads: list[list[Tensor] | None],
    size: int,
) -> Tensor:
    """Σ_n (Σ_uses per-sample gradient)² for a parameter used by several calls (tied weights)."""
    first_call, first_local = calls[sites[0][0]], sites[0][1]
    total = torch.zeros_like(getattr(first_call.module, first_local))
    reached = [(calls[i], grads[i], local) for i, local in sites if grads[i] is not None]
    chunk = max(1, PER_SAMPLE_BUDGET // total.numel())
    for start in range(0, size, chunk):
        stop = min(size, start + chunk)
        per_sample = torch.zeros(
            (stop - start, *total.shape), dtype=total.dtype, device=total.device
        )
        for call, call_grads, local in reached:
            part, sliced = call.narrow(start, stop, size), [g[start:stop] for g in call_grads]
            per_sample += rule_for(call.module).per_sample(part, sliced, [local])[local]
        total += per_sample.square().sum(0)
    return total


def _add_into(totals: dict[str, Tensor], values: dict[str, Tensor]) -> None:
    for name, value in values.items():
        if name in totals:
            totals[name].add_(value)
        else:
            totals[name] = value
