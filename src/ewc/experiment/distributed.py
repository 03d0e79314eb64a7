"""One cell trained by several processes: DistributedDataParallel under ``torchrun``.

``torchrun --standalone --nproc-per-node=2 -m ewc run ...`` starts two processes (ranks); the CLI
joins the process group that ``torchrun`` describes (`ewc.experiment.team`) and the runner
trains every cell with all ranks together (`run_team_cell`), reusing the cell's loop
(`ewc.experiment.cell`) with these parts swapped in:

- **The global batch is the one-process batch.** Every rank draws the same shuffled order from the
  same seeded generator, takes the same batch of B samples, and trains on its contiguous share of
  it (`ewc.sharding.shard_range`: exact, no padding, no repeat; each sample of an epoch on exactly
  one rank). Rank r's loss is its sum of per-sample losses times W/B, so DDP's average over the W
  ranks, (1/W) Σ_r (W/B) ∇Σ_{n∈r} ℓ_n = ∇(1/B) Σ_n ℓ_n, is the one-process gradient of the batch
  mean, however unevenly the batch splits (`DistributedStep`).
- **The penalty is added once per rank, unscaled.** ``add_gradient_`` runs after the backward
  pass, when DDP has already averaged the task gradients: each rank adds the same λ Ω (θ − θ̄)
  (Ω and θ̄ are identical on every rank) to the same averaged gradient. A penalty without
  ``add_gradient_`` enters each rank's loss before the backward pass; DDP then averages W equal
  copies of its gradient, which is one copy. Scaling it by 1/W, or adding it on rank 0 only,
  would give 1/W of the penalty (tests/experiment/test_distributed.py checks all of this).
- **The Fisher is that of the whole task.** After a task each rank gets its contiguous share of
  every one-process Fisher batch (whole batches r, r + W, … for ``batched``, whose unit is the
  batch) and `ewc.diagonal_fisher` / `ewc.kfac_fisher` all-reduce their sums, so every rank
  consolidates the same Fisher; for every kind but ``sample`` it is the one-process Fisher up to
  rounding. ``sample`` draws labels from a per-rank generator seeded from (seed, rank, task)
  (equal in distribution, not draw by draw; `ewc.fisher.distributed`). Afterwards the ranks
  compare a digest of the strategy's state: a strategy that does not all-reduce what it computes
  from its shard (``mas``) stops with an error.
- **Each rank's random draws are its own.** Before each step every rank draws the same number
  from the shared generator and runs its forward pass on a stream seeded from (that number,
  rank), so dropout masks differ between the ranks' shares as between the rows of one process's
  batch (equal in distribution) and the shared generator stays in step (a checkpoint holds it,
  so a resume repeats the masks). A model whose samples interact in training (BatchNorm's batch
  statistics) would see W small batches instead of one: it is refused (`check_rank_independent`).
- **Evaluation all-reduces counts.** Each rank counts correct answers on its exact shard of each
  test set; the accuracy is Σ correct / Σ counted, the one-process accuracy, never a mean of the
  ranks' accuracies (`ShardedEvaluator`).
- **Rank 0 writes.** Only rank 0 writes events, checkpoints, matrices and the summary; the others
  wait at a barrier after each checkpoint. A resume restores every rank from the checkpoint rank
  0 loads, so ``torchrun ... -m ewc run --resume DIR`` continues a killed run. Several machines
  need the run directory on a file system they share.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ewc._atomic import write_json_atomic
from ewc._batches import Batch, check_targets, model_logits
from ewc.experiment.cell import (
    CellLog,
    CellState,
    CheckpointPolicy,
    _initial_state,
    _Parts,
    _train_cell_and_close,
    derived_seed,
)
from ewc.experiment.evaluation import Evaluator
from ewc.experiment.outcome import CellOutcome, Divergence
from ewc.experiment.progress import Progress
from ewc.experiment.storage.checkpoint import CheckpointStore, load_checkpoint
from ewc.experiment.storage.digest import state_digest
from ewc.experiment.storage.events import Event, EventLog
from ewc.experiment.storage.rundir import Cell, RunDirectory
from ewc.experiment.strategies import Strategy, StrategyFactory, TaskContext
from ewc.experiment.streams.benchmarks import TaskStream, TensorBatches
from ewc.experiment.team import DistributedError, Team
from ewc.experiment.tensorboard import open_event_log
from ewc.fisher import FisherKind
from ewc.sharding import shard_range
from ewc.training import (
    GradientPenalty,
    NonFiniteLossError,
    StepLoss,
    accuracy_counts,
    non_finite_message,
)


def run_team_cell(
    team: Team,
    config: Any,
    stream: TaskStream,
    run_dir: RunDirectory,
    cell: Cell,
    factories: Mapping[str, StrategyFactory],
    progress: Progress,
) -> CellOutcome:
    """`ewc.experiment.cell.run_cell` with every rank of ``team`` training the one cell."""
    marker = run_dir.diverged_path(cell)
    if marker.exists():
        record = json.loads(marker.read_text(encoding="utf-8"))
        return CellOutcome(cell, divergence=Divergence.from_json(record))
    state = _initial_state(config, stream, cell, factories)
    state.strategy = SharedStrategy(state.strategy, team, cell)
    tensorboard = config.output.tensorboard
    events = open_event_log(run_dir, cell, tensorboard) if team.is_main else _NoEvents()
    store = CheckpointStore(run_dir.checkpoint_dir(cell), keep=2)
    checkpoints = TeamCheckpoints(store, config.checkpoint_every, config.hash(), cell, team)
    checkpoints.start(state.model)
    evaluator = ShardedEvaluator(
        stream,
        config.training.eval_batch_size,
        team,
        subset=config.training.eval_samples or None,
        seed=derived_seed(cell.seed, "evaluation subset"),
    )
    log = CellLog(events, cell, progress)
    step = DistributedStep(state.model, team)  # refuses a model that couples its samples
    parts = _Parts(config, stream, state, evaluator, log, checkpoints, progress, step)
    outcome = _train_cell_and_close(parts, store, events)  # rank 0's checkpoints on disk
    if outcome.divergence is not None and team.is_main:
        write_json_atomic(marker, outcome.divergence.to_json())
    team.barrier()
    return outcome


class DistributedStep:
    """`ewc.training.train_step` for one rank's share of the global batch, under DDP.

    Args:
        model: the cell's model (its parameters are the ones the optimizer and penalty hold).
            Every parameter must take part in each forward pass, as in the experiment's models
            (a multi-head model stacks all heads' outputs, and the heads not selected get zero
            gradients, as in one process); DDP names a parameter that does not.
        team: the ranks.
    """

    def __init__(self, model: nn.Module, team: Team):
        check_rank_independent(model)
        self.team = team
        self.ddp = DistributedDataParallel(model)

    def __call__(
        self,
        model: nn.Module,
        batch: Batch,
        optimizer: torch.optim.Optimizer,
        *,
        penalty: Callable[[], Tensor] | None = None,
        output_fn: Callable[[Any], Tensor] | None = None,
    ) -> StepLoss:
        """One optimizer step on ``batch`` (the global batch): its loss is the global batch's."""
        if model is not self.ddp.module:
            raise ValueError("DistributedStep was built for another model than the one it steps")
        rows = shard_range(batch.size, self.team.rank, self.team.size)
        local = Batch(
            batch.index, batch.inputs[rows.start : rows.stop], batch.targets[rows.start : rows.stop]
        )
        with _own_random_stream(self.team, model):
            task_sum = self._task_loss_sum(local, output_fn)
        scale = self.team.size / batch.size  # DDP averages: Σ_r (W/B)·∇(sum on r) / W = ∇ mean
        optimizer.zero_grad(set_to_none=True)
        if isinstance(penalty, GradientPenalty):
            (task_sum * scale).backward()  # the ranks' task gradients are averaged here
            extra = penalty.add_gradient_()  # the same full gradient on every rank, once
        else:
            extra = penalty() if penalty is not None else None
            loss = task_sum * scale
            (loss if extra is None else loss + extra).backward()  # mean of W equal copies
        task_loss = self.team.sum_float(float(task_sum.detach())) / batch.size
        penalty_value = None if extra is None else float(extra.detach())
        total = task_loss + (penalty_value or 0.0)
        if not math.isfinite(total):
            raise NonFiniteLossError(non_finite_message(batch.index, task_loss, penalty_value))
        optimizer.step()
        return StepLoss(total, penalty_value)

    def _task_loss_sum(self, local: Batch, output_fn: Callable[[Any], Tensor] | None) -> Tensor:
        """Σ of the per-sample cross-entropies of this rank's rows (0 for no rows)."""
        logits = model_logits(self.ddp, local, output_fn)
        if logits.dim() != 2:
            raise ValueError(
                f"distributed training takes (N, classes) logits; got shape {tuple(logits.shape)}"
            )
        check_targets(logits, local.targets, local)
        return F.cross_entropy(logits, local.targets, reduction="sum")


def check_rank_independent(model: nn.Module) -> None:
    """Refuse a model whose training forward pass mixes its samples (BatchNorm).

    BatchNorm normalises with the statistics of the batch it sees: on W ranks that is each rank's
    share, so the W-rank run would be that of W small batches, not of the one-process batch (and
    a share of one sample fails). Layer, group and instance norms act per sample and are fine.

    Raises:
        ValueError: naming the first batch-norm module.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"the model's {name or 'root'} ({type(module).__name__}) normalises with the "
                "statistics of each rank's share of the batch, so several ranks would not train "
                "as one process; use LayerNorm or GroupNorm, or train with one process"
            )


@contextlib.contextmanager
def _own_random_stream(team: Team, model: nn.Module) -> Iterator[None]:
    """Run the block on a random stream of this rank's own, seeded from the shared one.

    Every rank draws one number from the shared (global) generator, so the ranks stay in step,
    and seeds a forked stream with (number, rank): dropout masks then differ between the ranks'
    shares as between rows of one batch. The global state after the block is the one after the
    draw, on every rank.
    """
    shared = int(torch.randint(0, 2**62, (1,)).item())
    device = next(model.parameters(), torch.empty(0)).device
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derived_seed(shared, f"rank {team.rank}"))
        yield


class ShardedEvaluator:
    """Test accuracy on every task: each rank counts on its exact shard, the counts are summed.

    The accuracy is Σ_r correct_r / Σ_r counted_r, the one-process accuracy on the whole test
    set (a mean of per-rank accuracies would weigh unequal shards wrongly). One all-reduce per
    evaluation, for all tasks. The curve points on a subset (`Evaluator.curve`) are measured
    whole on every rank: the ranks hold the same weights, so they get the same numbers without
    communicating.
    """

    def __init__(
        self,
        stream: TaskStream,
        batch_size: int,
        team: Team,
        *,
        subset: int | None = None,
        seed: int = 0,
    ):
        self.stream, self.batch_size, self.team = stream, batch_size, team
        self._local = Evaluator(stream, batch_size, subset=subset, seed=seed)
        self.subset = self._local.subset

    def __call__(self, model: nn.Module) -> list[float]:
        """One accuracy in [0, 1] per task, the same on every rank."""
        counts: list[int] = []
        for j, task in enumerate(self.stream.tasks):
            rows = shard_range(task.test_targets.shape[0], self.team.rank, self.team.size)
            batches = TensorBatches(
                task.test_images[rows.start : rows.stop],
                task.test_targets[rows.start : rows.stop],
                batch_size=self.batch_size,
                transform=task.transform,
            )
            counts += accuracy_counts(model, batches, output_fn=self.stream.output_fn(j))
        totals = self.team.sum(counts)
        if any(seen == 0 for seen in totals[1::2]):
            raise ValueError("cannot evaluate on a task whose test set is empty")
        return [correct / seen for correct, seen in zip(totals[::2], totals[1::2], strict=True)]

    def curve(self, model: nn.Module) -> list[float]:
        """The curve point: on the subsets, or sharded on the full test sets without them."""
        return self(model) if self.subset is None else self._local.curve(model)


class SharedStrategy:
    """A strategy whose ``after_task`` sees this rank's share of the task, checked to agree.

    The context's batches (``train_batches`` and the re-batching ``batches``) become this rank's
    share of the one-process Fisher batches (the order
    drawn from the shared generator, so every rank draws the same and the generator stays in
    step), cut at the strategy's ``fisher_samples`` as one process cuts them: a contiguous share
    of every batch, or for ``fisher = "batched"``, whose unit is the batch, whole batches
    (rank r: batches r, r + W, …). The context's generator becomes a per-rank one seeded from
    (seed, rank, task). Afterwards the ranks compare a SHA-256 of the strategy's state: equal, or
    `DistributedError`.
    """

    def __init__(self, inner: Strategy, team: Team, cell: Cell):
        self.inner, self.team, self.cell = inner, team, cell

    def penalty(self) -> Callable[[], Tensor] | None:
        """The wrapped strategy's penalty."""
        return self.inner.penalty()

    def after_task(self, context: TaskContext) -> list[str]:
        """Consolidate on this rank's share; raise unless every rank reached the same state."""
        settings = getattr(self.inner, "settings", None)  # EWCSettings, for the Fisher's data
        limit = getattr(settings, "fisher_samples", None)
        whole = getattr(settings, "fisher", None) == FisherKind.BATCHED
        generator = torch.Generator(device=context.generator.device)
        purpose = f"rank {self.team.rank} task {context.task}"
        generator.manual_seed(derived_seed(self.cell.seed, purpose))
        shared = replace(
            context,
            train_batches=_BatchShare(context.train_batches, limit, self.team, whole=whole),
            batches=None
            if context.batches is None
            else self._share_of(context.batches, limit, whole),
            generator=generator,
        )
        notes = self.inner.after_task(shared)
        if not self.team.same(state_digest(self.inner.state_dict())):
            raise DistributedError(
                f"after task {context.task + 1} the {self.team.size} ranks hold different "
                f"states of strategy {self.cell.strategy!r}: it computes its "
                "importance from each rank's shard without all-reducing it (ewc.diagonal_fisher "
                "and ewc.kfac_fisher all-reduce; ewc.mas_importance does not); train it with one "
                "process"
            )
        return notes

    def _share_of(
        self, batches: Callable[[int], Iterable[Any]], limit: int | None, whole: bool
    ) -> Callable[[int], Iterable[Any]]:
        """``context.batches`` as this rank's share, cut like ``train_batches``.

        Those are the task re-batched at a size: ``fisher_batch_size``, the ``batched`` Fisher's
        batches, MAS's batch-mean batches.
        """
        return lambda size: _BatchShare(batches(size), limit, self.team, whole=whole)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped strategy's state (the same on every rank)."""
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the wrapped strategy."""
        self.inner.load_state_dict(state)


class _BatchShare:
    """Rank r's share of ``batches`` cut at ``limit`` samples: of each batch, or whole batches."""

    def __init__(self, batches: Iterable[Any], limit: int | None, team: Team, *, whole: bool):
        self.batches, self.limit, self.team, self.whole = batches, limit, team, whole

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        seen = 0
        for index, (inputs, targets) in enumerate(self.batches):
            if self.limit is not None:
                if seen >= self.limit:
                    return
                inputs, targets = inputs[: self.limit - seen], targets[: self.limit - seen]
            seen += inputs.shape[0]
            if not self.whole:
                rows = shard_range(inputs.shape[0], self.team.rank, self.team.size)
                yield inputs[rows.start : rows.stop], targets[rows.start : rows.stop]
            elif index % self.team.size == self.team.rank:
                yield inputs, targets


class TeamCheckpoints(CheckpointPolicy):
    """Rank 0 saves (the others wait at a barrier); a restore loads its checkpoint on every rank."""

    def __init__(
        self, store: CheckpointStore, every: int, config_hash: str, cell: Cell, team: Team
    ):
        super().__init__(store, every, config_hash, cell)
        self.team = team

    def save(self, state: CellState, log: EventLog) -> None:
        """Rank 0 saves ``state``; every rank then waits for the others."""
        if self.team.is_main:
            super().save(state, log)
        self.team.barrier()

    def restore(self, state: CellState, log: EventLog) -> bool:
        """Load the checkpoint rank 0 finds newest and readable into every rank's ``state``."""
        found = self.store.load_latest() if self.team.is_main else None
        step = self.team.from_main(None if found is None else found[0])
        if step is None:
            return False
        tree = found[1] if found is not None else load_checkpoint(self.store.path(step))
        self._apply(step, tree, state, log if self.team.is_main else None)
        return True


class _NoEvents:
    """The event log of ranks other than 0: they write nothing."""

    def append(self, event: Event) -> None:
        """Drop ``event`` (rank 0 writes it)."""

    def durable_length(self) -> int:
        """0: nothing is written here."""
        return 0

    def truncate(self, length: int) -> None:
        """Nothing to cut."""

    def close(self) -> None:
        """Nothing to close."""
