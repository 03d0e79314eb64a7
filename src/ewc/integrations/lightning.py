"""EWC for PyTorch Lightning: a `Callback`, so any LightningModule and optimizer keeps working.

The user calls ``trainer.fit`` once per task, as usual, with this callback in the trainer's
callbacks (the same instance for every task). The callback

1. adds the penalty's gradient λ Ω (θ − θ̄) to ``.grad`` in ``on_before_optimizer_step``
   (`ewc.EWC.add_gradient_`): once per optimizer step, after all micro-batches of a gradient
   accumulation have been backpropagated and the gradients unscaled (mixed precision), and before
   Lightning clips them — so the update is the one of ``mean task loss + penalty()``, and gradient
   clipping sees the total gradient, penalty included;
2. logs the penalty's value as ``ewc_penalty`` (per optimizer step);
3. at the end of each ``fit`` (``on_train_end``) computes `ewc.diagonal_fisher` on the fit's train
   dataloader (or ``fisher_data``) and consolidates: the parameters now become the anchor θ*;
4. keeps the penalty's state in Lightning checkpoints (`state_dict` / `load_state_dict`), so
   ``trainer.fit(module, ckpt_path=...)`` resumes with every consolidated task.

The penalty is the one of Kirkpatrick et al. 2017, Eq. 3, (λ/2) Σ_i F_i (θ_i − θ*_i)², summed
over tasks (``mode="separate"``) or online (``mode="online"``, Schwarz et al. 2018).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch

from ewc._batches import OutputFn
from ewc.fisher import FisherKind, diagonal_fisher
from ewc.integrations._lazy_penalty import LazyPenalty
from ewc.penalties import EWC, PenaltyMode


class EWCCallback(pl.Callback):
    """Elastic Weight Consolidation around ``trainer.fit``, one fit per task.

    Args:
        strength: λ ≥ 0 of (λ/2) Σ_i F_i (θ_i − θ*_i)² (the penalty carries the 1/2).
        fisher: the Fisher kind (``"exact"``, ``"sample"``, ``"empirical"``, ``"argmax"`` or
            ``"batched"``; see `ewc.fisher.kinds`).
        mode: ``"separate"`` (one term per task) or ``"online"`` (F ← γ F + F_new).
        gamma: the online decay γ ∈ [0, 1] (0: the latest task only); 1 in separate mode.
        fisher_data: the ``(inputs, targets)`` batches the Fisher is computed on at the end of
            every fit; default: that fit's train dataloader, which must yield such pairs.
        num_samples: use at most this many inputs for each Fisher (default: all).
        output_fn: maps the LightningModule's ``forward`` output to the task's (N, C) logits.

    Example:
        >>> callback = EWCCallback(strength=100.0)
        >>> for task in tasks:
        ...     pl.Trainer(max_epochs=5, callbacks=[callback]).fit(module, task.train_loader)
    """

    def __init__(
        self,
        strength: float,
        *,
        fisher: FisherKind | str = "exact",
        mode: PenaltyMode | str = "separate",
        gamma: float = 1.0,
        fisher_data: Iterable[Any] | None = None,
        num_samples: int | None = None,
        output_fn: OutputFn | None = None,
    ):
        self.kind = FisherKind.parse(fisher)
        self.mode = PenaltyMode.parse(mode)
        self._holder = LazyPenalty(strength, self.mode, gamma, "LightningModule")
        self.strength, self.gamma = self._holder.strength, self._holder.gamma
        self.fisher_data = fisher_data
        self.num_samples = num_samples
        self.output_fn = output_fn

    @property
    def penalty(self) -> EWC | None:
        """The `ewc.EWC` penalty on the trained module (None before the first fit starts)."""
        return self._holder.penalty

    @property
    def state_key(self) -> str:
        """The checkpoint key: distinct for callbacks with different settings."""
        return self._generate_state_key(strength=self.strength, fisher=self.kind.value)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse a set-up in which the Fisher would silently differ between processes."""
        if trainer.world_size > 1 and self.fisher_data is None:
            raise ValueError(
                f"with {trainer.world_size} processes the Fisher would be all-reduced over the "
                "train dataloader's shards, which Lightning's DistributedSampler pads with "
                "repeated samples; pass fisher_data= (the same batches on every process, or an "
                "exact shard of the data from ewc.shard on each)"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Attach the penalty to the module (restoring a checkpoint's state if one was loaded).

        Raises:
            ValueError: an LBFGS optimizer: it re-evaluates the closure inside its step, where the
                gradient this callback adds is not in the loss it sees (its line search would
                compare losses without the penalty against gradients with it).
        """
        for optimizer in trainer.optimizers:
            if isinstance(_inner(optimizer), torch.optim.LBFGS):
                raise ValueError(
                    "EWCCallback cannot serve LBFGS: its closure's loss would leave the penalty "
                    "out while the gradient holds it; add ewc.EWC's penalty() to the loss in "
                    "training_step instead"
                )
        self._penalty_for(pl_module)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Add λ Ω (θ − θ̄) to ``.grad`` once per optimizer step and log the penalty's value.

        Only the parameters of the optimizer that steps get it (with several optimizers each adds
        its own part), and nothing when none of them has a gradient (``training_step`` returned
        None: Lightning still steps, which must not become a penalty-only step). A fused optimizer
        under 16-bit mixed precision unscales its gradients inside its step, after this hook: the
        penalty's gradient is scaled alike.
        """
        penalty = self._penalty_for(pl_module)
        scale = _pending_scale(trainer, optimizer)
        value = penalty.add_gradient_for(optimizer, value=True, loss_scale=scale)
        if value is not None:
            pl_module.log("ewc_penalty", value.detach().float(), on_step=True, on_epoch=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Compute this task's Fisher and consolidate: the parameters now are the new anchor."""
        data = self.fisher_data if self.fisher_data is not None else trainer.train_dataloader
        if data is None:
            raise ValueError(
                "the trainer has no train dataloader to compute the Fisher on; pass fisher_data="
            )
        fisher = diagonal_fisher(
            pl_module, data, self.kind, num_samples=self.num_samples, output_fn=self.output_fn
        )
        self._penalty_for(pl_module).consolidate(fisher)

    def state_dict(self) -> dict[str, Any]:
        """The penalty's `state_dict` (empty before the first fit), for Lightning checkpoints."""
        state = self._holder.state()
        return {"penalty": state} if state is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a `state_dict`; applied to the module when training starts."""
        state = state_dict.get("penalty")
        if state is not None:
            self._holder.load_state_dict(state)

    def _penalty_for(self, pl_module: pl.LightningModule) -> EWC:
        """The penalty on ``pl_module``, created on first use; one callback serves one module."""
        return self._holder.for_model(pl_module)


def _inner(optimizer: Any) -> Any:
    """The torch optimizer inside Lightning's wrapper (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def _pending_scale(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> float:
    """The loss scale still on the gradients at this hook, else 1.

    That of 16-bit mixed precision's GradScaler, for an optimizer that unscales inside its own
    step (a fused one).
    """
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    if scaler is None or not getattr(_inner(optimizer), "_step_supports_amp_scaling", False):
        return 1.0
    return float(scaler.get_scale())
