"""The Fisher of the union of the ranks' shards: all-reduce the sums, then divide once.

Every estimator forms Σ_n (per-sample term) and a count, and divides at the end. Inside an
initialised process group (`torch.distributed`, e.g. a script started by ``torchrun``) each rank
holds those sums for its own shard of the data; `all_reduce_sums` adds them over the ranks, in
float64, before the division:

    F_i = (Σ_r S_r,i) / (Σ_r N_r)       (``batched``: divided by Σ_r M_r, the batches)

so every rank ends with the same Fisher, that of the union of the shards, equal to one process's
over the same samples up to the rounding of the float32 per-rank sums (about 1e-7 relative). The
K-FAC factors' sums (Σ ã ãᵀ and Σ g gᵀ) and input counts are all-reduced the same way
(`all_reduce_factor_sums`). One all-reduce of one flat float64 buffer per estimate, after one
small all-reduce that checks that every rank estimated the same parameters and kind.

What the ranks must agree on. Every rank of the group calls the estimator (a collective), with the
same model, kind and options, on its own shard: `ewc.shard` splits a data set exactly (no
padding, no repeated sample, unlike `DistributedSampler`'s default). ``batched`` squares each
batch's mean gradient, so its unit is the batch: shard whole batches (a list of batches) to get
the one-process value. ``num_samples`` limits each rank's own shard. An error raised on one rank
before the all-reduce (a NaN in its data) leaves the others waiting until the process group's
timeout; ``torchrun`` stops every worker once one fails.

``kind="sample"`` draws labels from each rank's ``generator``. Seed it per rank, e.g.
``torch.Generator().manual_seed(seed + rank)``: the estimate is then equal *in distribution* to
one process's (the union's draws are independent, each from the model's p(·|x_n)), but not equal
to it draw by draw. With the same seed on every rank the estimate stays unbiased, but the ranks'
i-th inputs share their random numbers. Draw-by-draw equality needs the one-process stream cut
at the shard boundaries: with contiguous shards, rank r's generator in the state the one-process
generator reaches after the earlier ranks' samples (how the tests check it).

Without an initialised group, with a group of one rank, or with ``all_reduce=False``, nothing is
communicated and the estimate is this process's alone.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

#: ``True``: the default process group when one is initialised (else no communication);
#: ``False``: this process's data only; a ``ProcessGroup``: that group.
AllReduce = Union[bool, "ProcessGroup"]


def reduction_group(all_reduce: AllReduce) -> ProcessGroup | None:
    """The process group an estimate is all-reduced over, or None for a local estimate.

    Raises:
        ValueError: ``all_reduce`` is neither a bool nor a process group, or names a group while
            ``torch.distributed`` is not initialised.
    """
    if isinstance(all_reduce, bool):
        if not all_reduce or not _initialised():
            return None
        group = torch.distributed.group.WORLD
    elif _initialised() and isinstance(all_reduce, torch.distributed.ProcessGroup):
        group = all_reduce
    else:
        raise ValueError(
            "all_reduce must be True (the default process group, when one is initialised), "
            f"False (this process's data only) or a torch.distributed.ProcessGroup; got "
            f"{all_reduce!r}" + ("" if _initialised() else " outside an initialised process group")
        )
    return group if torch.distributed.get_world_size(group) > 1 else None


def all_reduce_sums(
    sums: dict[str, Tensor],
    count: int,
    divisor: int,
    kind: str,
    all_reduce: AllReduce,
    weights: Sequence[Tensor] = (),
) -> tuple[dict[str, Tensor], int, int]:
    """Σ over the ranks of the diagonal's per-parameter sums, sample count and divisor.

    Args:
        sums: Σ_n (per-sample term) per parameter, for this rank's shard (modified in place).
        count: this rank's number of samples.
        divisor: what the sums are divided by (the samples; for ``batched`` the batches).
        kind: the Fisher kind and its options, which every rank must share.
        all_reduce: see `AllReduce`.
        weights: the model's parameters, which every rank must hold with the same values.

    Returns:
        The summed ``sums`` (same tensors and dtype), count and divisor; unchanged when there is
        no group to reduce over.
    """
    group = reduction_group(all_reduce)
    if group is None:
        return sums, count, divisor
    layout = [f"{kind}", *(f"{name}:{tuple(t.shape)}" for name, t in sums.items())]
    _check_same_weights(weights, group)
    totals = _all_reduce_flat(list(sums.values()), [count, divisor], layout, group)
    return sums, totals[0], totals[1]


def all_reduce_factor_sums(
    sums: dict[str, tuple[Tensor, Tensor]],
    count: int,
    kind: str,
    all_reduce: AllReduce,
    weights: Sequence[Tensor] = (),
) -> int:
    """Σ over the ranks of K-FAC's factor sums (Σ ã ãᵀ, Σ g gᵀ) in place; return Σ_r N_r.

    ``sums`` must hold every layer on every rank (zeros for a layer that saw no input here).
    """
    group = reduction_group(all_reduce)
    if group is None:
        return count
    layout = [
        f"kfac-{kind}",
        *(f"{n}:{tuple(a.shape)}:{tuple(g.shape)}" for n, (a, g) in sums.items()),
    ]
    tensors = [t for pair in sums.values() for t in pair]
    _check_same_weights(weights, group)
    return _all_reduce_flat(tensors, [count], layout, group)[0]


def _all_reduce_flat(
    tensors: Sequence[Tensor], counts: list[int], layout: list[str], group: ProcessGroup
) -> list[int]:
    """All-reduce ``tensors`` (in place) and ``counts`` in one float64 buffer; return the counts."""
    device = tensors[0].device if tensors else torch.device("cpu")
    _check_same_layout(layout, sum(t.numel() for t in tensors), device, group)
    flat = torch.cat(
        [t.detach().reshape(-1).to(torch.float64) for t in tensors]
        + [torch.tensor(counts, dtype=torch.float64, device=device)]
    )
    torch.distributed.all_reduce(flat, group=group)
    position = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[position : position + t.numel()].view_as(t))
            position += t.numel()
    return [int(c) for c in flat[position:].tolist()]


def _check_same_layout(
    layout: list[str], numel: int, device: torch.device, group: ProcessGroup
) -> None:
    """Raise on every rank unless every rank estimates the same parameters, shapes and kind.

    One all-reduce (MAX) of (v, −v) gives both the largest and the smallest v over the ranks.
    """
    code = zlib.crc32("\n".join(layout).encode())
    local = torch.tensor([numel, code, -numel, -code], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.MAX, group=group)
    high, low = local[:2].tolist(), [-v for v in local[2:].tolist()]
    if high != low:
        raise ValueError(
            f"the {torch.distributed.get_world_size(group)} ranks estimated different Fishers "
            f"(this rank: kind {layout[0]!r}, {len(layout) - 1} parameters, {numel} entries; "
            "another rank differs in kind or options, parameter names or shapes): every rank "
            "must call the estimator with the same model, kind and options"
        )


def _check_same_weights(weights: Sequence[Tensor], group: ProcessGroup) -> None:
    """Raise on every rank unless every rank holds the same parameter values (to 1e-9).

    Each parameter's Σ θ and Σ θ² in float64: one all-reduce (MAX) of (v, −v) compares them.
    """
    if not weights:
        return
    device = weights[0].device
    with torch.no_grad():
        values = (
            torch.stack(
                [torch.stack([w.double().sum(), w.double().square().sum()]) for w in weights]
            )
            .reshape(-1)
            .to(device)
        )
    both = torch.cat([values, -values])
    torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX, group=group)
    high, low = both[: len(values)], -both[len(values) :]
    spread = float((high - low).abs().max())
    scale = max(float(high.abs().max()), float(low.abs().max()), 1.0)
    if spread > 1e-9 * scale:
        raise ValueError(
            f"the {torch.distributed.get_world_size(group)} ranks hold different parameter "
            "values: every rank must estimate the Fisher of the same model (broadcast or load "
            "the same weights first)"
        )


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
