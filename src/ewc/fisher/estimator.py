"""`diagonal_fisher`: the driver that runs the model over data and applies the per-layer rules.

Per-sample kinds cost one forward pass and, per output-gradient vector (1, k or C − 1 of them, see
`ewc.fisher.cotangents`), one backward pass that asks autograd only for the gradients at the
outputs of parameter-owning modules. The rules turn those into Σ_n (per-sample gradient)² without
materialising per-sample gradients where a closed form exists (`ewc.fisher.rules`).

Before any of that, each batch's autograd graph decides which path accounts for each parameter
(`ewc.fisher.coverage`: its rule, an ancestor's functional rule, or per-sample gradients of the
whole model, `ewc.fisher.whole_model`), and the first batch of each shape proves the plan
numerically (`ewc.fisher.verify`). Gradients are cast to at least float32 before they are squared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ewc._batches import (
    IGNORE_INDEX,
    Batch,
    OutputFn,
    check_finite,
    check_finite_sums,
    check_targets,
    iterate_batches,
    model_logits,
    sequence_log_likelihood_loss,
)
from ewc._chunks import sample_ranges
from ewc._modes import evaluation_mode
from ewc.fisher.capture import CallRecorder, ModuleCall
from ewc.fisher.cotangents import score_vectors
from ewc.fisher.coverage import Plan, plan_batch
from ewc.fisher.diagonal import DiagonalFisher
from ewc.fisher.distributed import AllReduce, all_reduce_sums
from ewc.fisher.kinds import FisherKind
from ewc.fisher.rules import rule_for
from ewc.fisher.rules.base import PER_SAMPLE_BUDGET, Partial
from ewc.fisher.verify import check_plan
from ewc.fisher.whole_model import whole_model_sums


@dataclass(frozen=True)
class Checks:
    """Which proofs run: both by default. Only the benchmarks switch them off, to time them.

    Attributes:
        graph: inspect each batch's autograd graph and route uses the rules cannot see
            (`ewc.fisher.coverage`); without it the rules are trusted, as before this check.
        numeric: compare the rules' summed gradients with autograd's, and check that their
            rows are the samples, on the first batch of each shape (`ewc.fisher.verify`,
            `ewc.fisher.independence`).
    """

    graph: bool = True
    numeric: bool = True


@dataclass(frozen=True)
class _Setting:
    """What every batch of one estimate shares."""

    kind: FisherKind
    output_fn: OutputFn | None
    ignore_index: int
    dtype: torch.dtype
    checks: Checks
    samples_per_input: int
    generator: torch.Generator | None


def diagonal_fisher(
    model: nn.Module,
    data: Iterable[Any],
    kind: FisherKind | str = "exact",
    *,
    num_samples: int | None = None,
    samples_per_input: int = 1,
    output_fn: OutputFn | None = None,
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
    all_reduce: AllReduce = True,
) -> DiagonalFisher:
    """Estimate the diagonal Fisher information of a classifier's or sequence model's parameters.

    F_i is a mean over the N samples of ``data`` (the formulas of each kind are in
    `ewc.fisher.kinds`); the result has one tensor per trainable parameter, keyed by its
    ``named_parameters()`` name. This is the F of EWC's penalty (λ/2) Σ_i F_i (θ_i − θ*_i)²
    (Kirkpatrick et al. 2017, Eq. 3).

    A sample is one row of the logits: (N, C) logits are N classified inputs; (N, T, C) logits
    are N sequences of T tokens, and the sample's log-likelihood is the sequence's,
    log p(y|x) = Σ_t log p(y_t | x, y_<t) over the tokens whose label is not ``ignore_index``.

    The model runs in eval mode (dropout off, BatchNorm on running statistics; its previous modes
    are restored) and the samples must be independent of each other, as they are in eval mode.
    Every use of every trainable parameter is accounted for: uses that no per-layer rule sees
    (functional weight tying, parameters read outside their module's forward) are found on each
    batch's autograd graph and take a per-sample ``torch.func`` path, and on the first batch the
    rules' summed gradients are checked against autograd's (`ewc.fisher.coverage`,
    `ewc.fisher.verify`). No hook stays registered and no ``.grad`` is touched, also when an
    exception escapes. The result is on the model's device, in float32 for a float16 or
    bfloat16 model (squares of half-precision gradients overflow and underflow) and in the
    parameters' dtype otherwise.

    Args:
        model: a classifier or sequence model whose output (after ``output_fn``) is (N, C) or
            (N, T, C) logits (or log-probabilities).
        data: an iterable of ``(inputs, targets)`` batches, e.g. a DataLoader. Targets are read by
            ``empirical`` and ``batched``, and for sequences by every kind (for the padding);
            inputs are moved to the model's device.
        kind: ``"exact"`` (default), ``"sample"``, ``"empirical"``, ``"argmax"`` or ``"batched"``.
        num_samples: use at most this many samples, the first ones in iteration order.
        samples_per_input: labels drawn per sample for ``kind="sample"`` (the k of its formula).
        output_fn: maps the model output (a tensor, tuple, dict or dataclass) to the logits, e.g.
            to select a task's head; default: the output is the logits.
        ignore_index: the label of tokens to leave out of a sequence's log-likelihood.
        generator: the random generator for ``kind="sample"``, for reproducible estimates.
        all_reduce: inside an initialised process group (``True``, the default) every rank passes
            its shard of the data and gets the Fisher of the union of the shards
            (`ewc.fisher.distributed`; ``num_samples`` then counts this rank's samples); a
            ``ProcessGroup`` reduces over that group; ``False`` estimates on this rank's data only.

    Returns:
        A `DiagonalFisher` with ``kind`` and ``num_samples`` (the number of samples used, on all
        ranks together).
    """
    return estimate(
        model,
        data,
        kind,
        num_samples=num_samples,
        samples_per_input=samples_per_input,
        output_fn=output_fn,
        ignore_index=ignore_index,
        generator=generator,
        all_reduce=all_reduce,
    )


def estimate(
    model: nn.Module,
    data: Iterable[Any],
    kind: FisherKind | str = "exact",
    *,
    num_samples: int | None = None,
    samples_per_input: int = 1,
    output_fn: OutputFn | None = None,
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
    checks: Checks = Checks(),
    all_reduce: AllReduce = True,
) -> DiagonalFisher:
    """`diagonal_fisher` with the choice of ``checks`` (for measuring their cost)."""
    kind = FisherKind.parse(kind)
    check_options(kind, num_samples, samples_per_input)
    params = _trainable_parameters(model)
    device = next(iter(params.values())).device
    dtype = accumulation_dtype(params.values())
    setting = _Setting(kind, output_fn, ignore_index, dtype, checks, samples_per_input, generator)
    batches = iterate_batches(data, device=device, limit=num_samples)
    with evaluation_mode(model), torch.enable_grad():
        if kind is FisherKind.BATCHED:
            sums, count, divisor = _batched_sums(model, batches, params, setting)
        else:
            sums, count = _per_sample_sums(model, batches, params, setting)
            divisor = count
    settings = f"{kind.value} spi={samples_per_input} ignore={ignore_index} {dtype}"
    sums, count, divisor = all_reduce_sums(
        sums, count, divisor, settings, all_reduce, weights=list(params.values())
    )
    if count == 0:
        raise ValueError("data yielded no samples: the Fisher is a mean over at least one input")
    check_finite_sums(sums)
    values = {name: total / divisor for name, total in sums.items()}
    return DiagonalFisher(values, kind=kind, num_samples=count)


def accumulation_dtype(params: Iterable[Tensor]) -> torch.dtype:
    """The widest parameter dtype, and at least float32: what the Fisher is formed in."""
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def check_options(kind: FisherKind, num_samples: int | None, samples_per_input: int) -> None:
    """Refuse a ``num_samples`` or ``samples_per_input`` that is not a positive integer."""
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
    setting: _Setting,
) -> tuple[dict[str, Tensor], int, int]:
    """Σ_batches (gradient of the batch-mean log-likelihood)², and the input and batch counts."""
    sums = {name: torch.zeros_like(p, dtype=setting.dtype) for name, p in params.items()}
    count = num_batches = 0
    for batch in batches:
        logits = model_logits(model, batch, setting.output_fn)
        check_finite(batch, logits)
        check_targets(logits, batch.targets, batch, setting.ignore_index)
        loss = sequence_log_likelihood_loss(logits, batch.targets, setting.ignore_index)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for name, grad in zip(params, grads, strict=True):
            if grad is not None:
                sums[name].add_(grad.to(setting.dtype).square())
        count, num_batches = count + batch.size, num_batches + 1
    return sums, count, num_batches


def _per_sample_sums(
    model: nn.Module,
    batches: Iterable[Batch],
    params: dict[str, nn.Parameter],
    setting: _Setting,
) -> tuple[dict[str, Tensor], int]:
    """Σ_n Σ_v (per-sample gradient for vector v)² per parameter, and the number of samples."""
    sums = {name: torch.zeros_like(p, dtype=setting.dtype) for name, p in params.items()}
    static = [*model.parameters(), *model.buffers()]
    moved: dict[str, str] = {}  # parameters the numeric check sent to the whole-model path
    checked: set[tuple] = set()  # the shapes of the batches checked so far
    count = 0
    with CallRecorder(_owner_modules(model, params), static) as recorder:
        for batch in batches:
            recorder.calls.clear()
            logits = model_logits(model, batch, setting.output_fn)
            check_finite(batch, logits)
            vectors = _vectors(logits, batch, setting)
            shapes = _shapes(recorder.calls, batch)
            plan = _plan(
                model, recorder, logits, batch, params, setting, moved, shapes not in checked
            )
            checked.add(shapes)
            _accumulate_batch(recorder, logits, vectors, plan, sums, setting.dtype)
            if plan.whole_model:
                with recorder.paused():
                    names = list(plan.whole_model)
                    _add_into(
                        sums,
                        whole_model_sums(
                            model, batch.inputs, vectors, names, setting.output_fn, setting.dtype
                        ),
                    )
            count += batch.size
    return sums, count


def _shapes(calls: list[ModuleCall], batch: Batch) -> tuple:
    """What the numeric check depends on besides values: the shapes of every recorded call.

    A call's argument counts as one row per sample when its first dimension is the batch size
    (`ModuleCall.is_batched`), so that dimension is written as ``"N"``: a last, smaller batch
    with the same calls is not checked again, while any shape whose reading could change with
    the batch size (a first dimension that equals one batch size and not another) makes a new
    key and is checked again, as is another sequence length or another set of calls.
    """
    size = batch.size

    def key(shape: torch.Size) -> tuple:
        return ("N", *shape[1:]) if len(shape) and shape[0] == size else tuple(shape)

    return (
        size >= 2,  # the row checks need two samples: a batch of one leaves the key unchecked
        key(batch.inputs.shape),
        tuple((call.name, *(key(a.shape) for a in call.tensor_arguments())) for call in calls),
    )


def _owner_modules(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, nn.Module]:
    """Module name → module, for the modules that own trainable parameters (hooked)."""
    trainable = {id(p) for p in params.values()}
    return {
        name: module
        for name, module in model.named_modules()
        if any(id(p) in trainable for p in module.parameters(recurse=False))
    }


def _vectors(logits: Tensor, batch: Batch, setting: _Setting) -> list[Tensor]:
    """The output-gradient vectors of this batch (the labels are checked where they are read)."""
    mask = None
    if logits.dim() == 3 or setting.kind.uses_labels:
        mask = check_targets(logits, batch.targets, batch, setting.ignore_index)
    vectors = score_vectors(
        logits,
        setting.kind,
        targets=batch.targets,
        mask=mask,
        samples_per_input=setting.samples_per_input,
        generator=setting.generator,
        dtype=setting.dtype,
    )
    return list(vectors)


def _plan(
    model: nn.Module,
    recorder: CallRecorder,
    logits: Tensor,
    batch: Batch,
    params: dict[str, nn.Parameter],
    setting: _Setting,
    moved: dict[str, str],
    check: bool,
) -> Plan:
    """This batch's plan: from its graph, corrected by the numeric check (run if ``check``)."""
    for call in recorder.calls:
        call.check_inputs_unchanged()
    if setting.checks.graph:
        plan = plan_batch(logits, recorder.calls, params, batch.size)
    else:
        plan = owner_plan(recorder.calls, params)
    plan.route_to_whole_model({n: r for n, r in moved.items() if n in plan.sites})
    if check and setting.checks.numeric:
        moved.update(
            check_plan(
                plan,
                recorder,
                logits,
                model,
                batch.inputs,
                params,
                setting.output_fn,
                setting.dtype,
            )
        )
    return plan


def _accumulate_batch(
    recorder: CallRecorder,
    logits: Tensor,
    vectors: list[Tensor],
    plan: Plan,
    sums: dict[str, Tensor],
    dtype: torch.dtype,
) -> None:
    """Back-propagate each vector to the planned calls' outputs; add the rules' squares to sums.

    Parameters with one site go through their rule's ``partial`` (summed over the vectors) and
    ``finalize``; a parameter with several sites (tied weights, a module called twice) sums its
    per-sample gradients over the sites first.
    """
    calls = recorder.calls
    own, shared = _split_sites(plan)
    positions = sorted({i for sites in plan.sites.values() for i, _ in sites})
    edges = [edge for i in positions for edge in calls[i].edges]
    if not edges:
        return  # no planned module reached the logits in this batch
    partials = {i: Partial() for i in own}
    rules = {i: (rule_for(calls[i].module), list(names)) for i, names in own.items()}
    with recorder.paused(), torch.no_grad():  # the gradients need no graph of their own
        for flat in _vector_gradients(
            logits, edges, vectors, _batches_vectors(calls, positions, len(vectors))
        ):
            grads = _split_per_call(calls, positions, flat, dtype)
            for i, (rule, locals_) in rules.items():
                if grads[i] is not None:
                    partials[i].add_(rule.partial(calls[i], grads[i], locals_))
            for full, sites in shared.items():
                _add_into(sums, {full: _shared_squares(sites, calls, grads, dtype)})
        for i, names in own.items():
            if not partials[i].is_empty:
                finished = rule_for(calls[i].module).finalize(calls[i], partials[i], list(names))
                _add_into(sums, {names[local]: value for local, value in finished.items()})


#: At most this many numbers in the gradients of one batched backward over all vectors.
BATCHED_BACKWARD_ENTRIES = 2**24


def _batches_vectors(calls: list[ModuleCall], positions: list[int], vectors: int) -> bool:
    """Whether the vectors go through one batched backward rather than one backward each.

    Only where every planned call is a Linear on (N, features) inputs, where one product of V·N
    rows beats V products of N rows (benchmarks/README.md; through convolutions it is slower, so
    they keep the loop), and the V gradients fit `BATCHED_BACKWARD_ENTRIES`.
    """
    if vectors < 2:
        return False
    if not all(type(calls[i].module) is nn.Linear and calls[i].input.dim() == 2 for i in positions):
        return False
    entries = sum(math.prod(shape) for i in positions for shape in calls[i].shapes)
    return vectors * entries <= BATCHED_BACKWARD_ENTRIES


def _vector_gradients(
    logits: Tensor, edges: list, vectors: list[Tensor], batched: bool
) -> Iterator[tuple[Tensor | None, ...]]:
    """Per vector v, the gradients of ⟨v, logits⟩ at ``edges`` (None where not reached).

    ``batched``: all at once, ``torch.autograd.grad(..., is_grads_batched=True)`` (a vmap over
    the backward graph), then split; else, or when the vmap cannot go through the graph (a
    backward with data-dependent Python control flow, such as a custom `torch.autograd.Function`
    that checks its gradient, raises), one backward per vector. The batched call keeps the graph,
    so that the loop can still run after it fails.
    """
    if batched:
        stacked = torch.stack(vectors).to(logits.dtype)
        try:
            flat = torch.autograd.grad(
                logits, edges, stacked, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
        except RuntimeError:
            flat = None
        if flat is not None:
            for j in range(len(vectors)):
                yield tuple(None if g is None else g[j] for g in flat)
            return
    for j, vector in enumerate(vectors):
        last = j + 1 == len(vectors)
        yield torch.autograd.grad(
            logits, edges, vector.to(logits.dtype), retain_graph=not last, allow_unused=True
        )


def owner_plan(calls: list[ModuleCall], params: dict[str, nn.Parameter]) -> Plan:
    """The plan that trusts the rules: every parameter at the calls of the module owning it."""
    full_names = {id(p): name for name, p in params.items()}
    plan = Plan()
    for position, call in enumerate(calls):
        for local, identity in call.own.items():
            if identity in full_names:
                plan.sites.setdefault(full_names[identity], []).append((position, local))
    return plan


def _split_sites(
    plan: Plan,
) -> tuple[dict[int, dict[str, str]], dict[str, list[tuple[int, str]]]]:
    """Split the plan's sites into parameters with one site and parameters with several.

    Returns ({call position: {local name: full name}} for one-site parameters, {full: sites} for
    the parameters with several sites).
    """
    own: dict[int, dict[str, str]] = {}
    shared = {}
    for full, sites in plan.sites.items():
        if len(sites) == 1:
            position, local = sites[0]
            own.setdefault(position, {})[local] = full
        else:
            shared[full] = sites
    return own, shared


def _split_per_call(
    calls: list[ModuleCall],
    positions: list[int],
    flat: tuple[Tensor | None, ...],
    dtype: torch.dtype,
) -> dict[int, list[Tensor] | None]:
    """Regroup autograd's flat answer per call, in ``dtype``; None where the vector misses it."""
    grouped, start = {}, 0
    for i in positions:
        call = calls[i]
        part = flat[start : start + len(call.edges)]
        start += len(call.edges)
        if all(g is None for g in part):
            grouped[i] = None
        else:
            grouped[i] = [
                _as_dtype(g, dtype)
                if g is not None
                else torch.zeros(s, dtype=dtype, device=_device(part))
                for g, s in zip(part, call.shapes, strict=True)
            ]
    return grouped


def _as_dtype(g: Tensor, dtype: torch.dtype) -> Tensor:
    """``g`` in ``dtype``, without the cost of a ``.to`` call when it is already."""
    return g if g.dtype == dtype else g.to(dtype)


def _device(part: tuple[Tensor | None, ...]) -> torch.device:
    return next(g.device for g in part if g is not None)


def _shared_squares(
    sites: list[tuple[int, str]],
    calls: list[ModuleCall],
    grads: dict[int, list[Tensor] | None],
    dtype: torch.dtype,
) -> Tensor:
    """Σ_n (Σ_sites per-sample gradient)² for a parameter used by several calls (tied weights)."""
    first_call, first_local = calls[sites[0][0]], sites[0][1]
    shape = first_call.module.get_parameter(first_local).shape
    reached = [(calls[i], grads[i], local) for i, local in sites if grads[i] is not None]
    if not reached:
        return torch.zeros(
            shape, dtype=dtype, device=first_call.module.get_parameter(first_local).device
        )
    size = reached[0][1][0].shape[0]
    total = reached[0][1][0].new_zeros(shape)
    for start, stop in sample_ranges(size, total.numel(), PER_SAMPLE_BUDGET):
        per_sample = total.new_zeros((stop - start, *shape))
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
