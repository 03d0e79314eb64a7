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
    try:  # the same kind, another option
        ewc.diagonal_fisher(model, share, "sample", samples_per_input=1 + rank)
    except ValueError as error:
        out["mismatch-option"] = {"message": torch.tensor(list(str(error).encode()))}
    other = fisher_model()
    with torch.no_grad():
        next(other.parameters()).mul_(1 + 2 * rank)  # rank 1 holds other weights
    for name, estimate in (("weights", ewc.diagonal_fisher), ("kfac-weights", ewc.kfac_fisher)):
        try:
            estimate(other, share, "exact")
        except ValueError as error:
            out[f"mismatch-{name}"] = {"message": torch.tensor(list(str(error).encode()))}
    torch.save(out, Path(folder) / f"rank{rank}.pt")


class _RankStrategy:
    """A strategy whose state after a task is its rank: what a shard not all-reduced gives."""

    def __init__(self, rank: int):
        self.state = {"importance": torch.tensor([0.0])}
        self.rank = rank

    def penalty(self):
        return None

    def after_task(self, context):
        self.state["importance"] += self.rank + sum(len(x) for x, _ in context.train_batches)
        return []

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def _shared_strategy_error(rank: int) -> str:
    """The error `SharedStrategy` raises on this rank when the ranks' states differ."""
    from ewc.experiment.config import Optimizer
    from ewc.experiment.distributed import SharedStrategy
    from ewc.experiment.storage.rundir import Cell
    from ewc.experiment.strategies import TaskContext
    from ewc.experiment.team import DistributedError, Team

    batches = fisher_batches(3, 4)  # 12 samples: 6 on each rank, so only the rank term differs
    context = TaskContext(
        nn.Linear(1, 1), 0, batches, None, torch.Generator(), Optimizer.ADAM, 1e-3
    )
    team = Team.current()
    SharedStrategy(_RankStrategy(0), team, Cell(0, "same")).after_task(context)  # agrees
    try:
        SharedStrategy(_RankStrategy(rank), team, Cell(0, "ranked")).after_task(context)
    except DistributedError as error:
        return str(error)
    return ""


class _RowRecorder:
    """A strategy that records the rows ``context.batches`` hands it, at two batch sizes."""

    def __init__(self, batched: bool):
        from ewc.experiment.strategies import EWCSettings
        from ewc.fisher import FisherKind

        kind = FisherKind.BATCHED if batched else FisherKind.EXACT
        self.settings = EWCSettings(fisher=kind)
        self.rows: dict[int, list[list[float]]] = {}

    def penalty(self):
        return None

    def after_task(self, context):
        for size in (4, 5):
            self.rows[size] = [x[:, 0].tolist() for x, _ in context.batches(size)]
        return []

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def rebatched_rows(rank: int | None) -> dict[str, dict[int, list[list[float]]]]:
    """The rows a strategy sees through ``context.batches`` on this rank (None: one process).

    12 samples whose first input is their index, batched at 4 and at 5 by the shared generator.
    """
    from ewc.experiment.config import Optimizer
    from ewc.experiment.distributed import SharedStrategy
    from ewc.experiment.storage.rundir import Cell
    from ewc.experiment.strategies import TaskContext
    from ewc.experiment.streams.benchmarks import TensorBatches
    from ewc.experiment.team import Team

    inputs = torch.arange(12.0)[:, None].repeat(1, 6)
    targets = torch.zeros(12, dtype=torch.long)
    out = {}
    for name, batched in (("per-sample", False), ("batched", True)):
        shuffle = torch.Generator().manual_seed(5)

        def batches(size, shuffle=shuffle):
            return TensorBatches(inputs, targets, batch_size=size, shuffle=True, generator=shuffle)

        context = TaskContext(
            nn.Linear(6, 1), 0, batches(4), None, torch.Generator(), Optimizer.ADAM, 1e-3, batches
        )
        recorder = _RowRecorder(batched)
        strategy = (
            recorder if rank is None else SharedStrategy(recorder, Team.current(), Cell(0, name))
        )
        strategy.after_task(context)
        out[name] = recorder.rows
    return out


def dropout_masks() -> dict[str, torch.Tensor]:
    """The dropout masks of two DDP steps on a global batch of 8 (4 per rank), twice from the
    same seed, and a draw from the global generator after them."""
    from ewc._batches import Batch
    from ewc.experiment.distributed import DistributedStep
    from ewc.experiment.team import Team

    out = {}
    for attempt in ("first", "again"):
        torch.manual_seed(11)  # the same global state on every rank, as at a cell's start
        model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 4))
        masks: list[torch.Tensor] = []
        model[1].register_forward_hook(lambda m, i, o, masks=masks: masks.append(o != 0))
        step = DistributedStep(model, Team.current())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for index, (x, y) in enumerate(fisher_batches(2, 8)):
            step(model, Batch(index, x, y), optimizer)
        out[f"{attempt} masks"] = torch.stack(masks)
        out[f"{attempt} global draw"] = torch.rand(3)
    return out


def _encoded(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode()), dtype=torch.uint8)


def penalty_case():
    """A model away from its EWC anchor, its penalty, and a global batch of 5 (split 2 / 3)."""
    torch.manual_seed(3)
    trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
    model = nn.Sequential(trunk, nn.Linear(8, 4))
    data = fisher_batches(2, 5)
    penalty = ewc.EWC(model, strength=50.0)
    penalty.consolidate(ewc.diagonal_fisher(model, data, "exact", all_reduce=False))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model, penalty, data[1]


PENALTY_PATHS = ("add_gradient_", "in the loss", "none", "rank 0 only, in the loss")


def penalty_for(path: str, penalty: ewc.EWC, rank: int):
    """The penalty as each path hands it to the step (a plain callable has no add_gradient_)."""
    if path == "add_gradient_":
        return penalty
    if path == "in the loss" or (path.startswith("rank 0") and rank == 0):
        return lambda: penalty()
    return None


def one_process_gradients() -> dict[str, dict[str, torch.Tensor]]:
    """Each path's gradient from `ewc.training.train_step` in one process."""
    from ewc._batches import Batch
    from ewc.training import train_step

    out = {}
    for path in PENALTY_PATHS[:3]:
        model, penalty, (x, y) = penalty_case()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # keeps θ, leaves .grad
        train_step(model, Batch(0, x, y), optimizer, penalty=penalty_for(path, penalty, 0))
        out[path] = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out


def gradient_rank(rank: int, world_size: int, folder: str) -> None:
    """Each path's gradient from `DistributedStep` on this rank's share of the global batch."""
    from ewc._batches import Batch
    from ewc.experiment.distributed import DistributedStep
    from ewc.experiment.team import Team

    out = {}
    for path in PENALTY_PATHS:
        model, penalty, (x, y) = penalty_case()
        step = DistributedStep(model, Team.current())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        loss = step(model, Batch(0, x, y), optimizer, penalty=penalty_for(path, penalty, rank))
        out[path] = {n: p.grad.clone() for n, p in model.named_parameters()}
        out[path]["loss"] = torch.tensor(loss.total)
    out["strategy check"] = {"message": _encoded(_shared_strategy_error(rank))}
    try:
        DistributedStep(nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8)), Team.current())
    except ValueError as error:
        out["batch norm"] = {"message": _encoded(str(error))}
    out["rebatched"] = rebatched_rows(rank)
    out["dropout"] = dropout_masks()
    torch.save(out, Path(folder) / f"rank{rank}.pt")
