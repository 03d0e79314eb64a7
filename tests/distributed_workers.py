"""What each rank runs in the distributed tests (importable by name from spawned processes)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import ewc

KINDS = ("exact", "sample", "empirical", "argmax", "batched")
KFAC_KINDS = ("exact", "empirical", "argmax")  # K-FAC's sample: see fisher_rank
SEED = 7


def fisher_model() -> nn.Module:
    """A float32 MLP with a LayerNorm, which K-FAC leaves to its diagonal fallback."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 4))


def fisher_batches(batches: int = 7, size: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded (inputs, targets) batches; 7 of them split 3 / 4 over two contiguous ranks."""
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(size, 6, generator=generator),
            torch.randint(0, 4, (size,), generator=generator),
        )
        for _ in range(batches)
    ]


def one_process_fishers() -> dict[str, dict[str, torch.Tensor]]:
    """Every kind's diagonal and K-FAC Fisher over all batches, in one process (no group)."""
    model, batches = fisher_model(), fisher_batches()
    out = {}
    for kind in KINDS:
        generator = torch.Generator().manual_seed(SEED)
        out[kind] = dict(ewc.diagonal_fisher(model, batches, kind, generator=generator))
    for kind in KFAC_KINDS:
        generator = torch.Generator().manual_seed(SEED)
        out[f"kfac-{kind}"] = _kfac_tensors(
            ewc.kfac_fisher(model, batches, kind, generator=generator)
        )
    return out


def _kfac_tensors(fisher) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, block in fisher.blocks.items():
        tensors[f"{name}.A"], tensors[f"{name}.G"] = block.input_factor, block.output_factor
    for name, value in (fisher.diagonal or {}).items():
        tensors[name] = value
    tensors["num_samples"] = torch.tensor(fisher.num_samples)
    return tensors


def _arranged_generator(model: nn.Module, earlier: list, kind: str) -> torch.Generator:
    """The one-process generator's state after the samples of the ranks before this one.

    A local estimate (``all_reduce=False``) over those samples consumes exactly what the
    one-process estimate consumes for them: one multinomial draw per sample.
    """
    generator = torch.Generator().manual_seed(SEED)
    if earlier and kind == "sample":
        ewc.diagonal_fisher(model, earlier, kind, generator=generator, all_reduce=False)
    return generator


def fisher_rank(rank: int, world_size: int, folder: str) -> None:
    """Each kind's Fisher on this rank's contiguous shard of the batches, all-reduced."""
    model, batches = fisher_model(), fisher_batches()
    share = list(ewc.shard(batches))
    earlier = batches[: ewc.sharding.shard_range(len(batches), rank, world_size).start]
    out = {}
    for kind in KINDS:
        generator = _arranged_generator(model, earlier, kind)
        out[kind] = dict(ewc.diagonal_fisher(model, share, kind, generator=generator))
        per_rank = torch.Generator().manual_seed(SEED + rank)
        out[f"{kind}-seed+rank"] = dict(ewc.diagonal_fisher(model, share, kind, generator=per_rank))
        out[f"{kind}-local"] = dict(ewc.diagonal_fisher(model, share, kind, all_reduce=False))
    for kind in KFAC_KINDS:
        out[f"kfac-{kind}"] = _kfac_tensors(ewc.kfac_fisher(model, share, kind))
    # K-FAC's sample draws the factors' labels, then the fallback diagonal's, from one generator:
    # no cut of the one-process stream matches that order, so only the ranks' agreement is checked
    per_rank = torch.Generator().manual_seed(SEED + rank)
    out["kfac-sample-seed+rank"] = _kfac_tensors(
        ewc.kfac_fisher(model, share, "sample", generator=per_rank)
    )
    empty = [] if rank == 1 else batches[:1]  # rank 1 holds no sample at all
    out["empty-rank"] = dict(ewc.diagonal_fisher(model, empty, "exact"))
    out["empty-rank-n"] = {
        "n": torch.tensor(ewc.diagonal_fisher(model, empty, "exact").num_samples)
    }
    try:
        ewc.diagonal_fisher(model, share, "exact" if rank == 0 else "empirical")
    except ValueError as error:
        out["mismatch"] = {"message": torch.tensor(list(str(error).encode()))}
    torch.save(out, Path(folder) / f"rank{rank}.pt")
