"""The Lightning callback: its updates are those of a hand-written loop with ``loss + penalty()``.

Float64 and plain SGD (no momentum) so that equal updates are equal to rounding; two synthetic
tasks; the reference loop is written out here, step by step.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import ewc

pl = pytest.importorskip("lightning.pytorch", reason="needs pip install 'ewc[lightning]'")
from ewc.integrations.lightning import EWCCallback  # noqa: E402

pytestmark = [
    # Lightning 2.6 with torch 2.13: its own use of a torch API that torch now deprecates.
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*is smaller than the logging interval:UserWarning"),
]

LR, STRENGTH = 0.5, 30.0


class Classifier(pl.LightningModule):
    """A two-layer float64 classifier trained with plain SGD."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
        ).double()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_index):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def task(seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=6, shuffle=False)


def fit(module, loader, callback, *, ckpt_path=None, **trainer_options) -> pl.Trainer:
    options = {"max_epochs": 1, "enable_checkpointing": False, **trainer_options}
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **options,
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer


def reference_fit(model, loader, penalty, *, accumulate=1, clip=None) -> None:
    """The loop the callback must reproduce: mean task loss of the micro-batches + penalty()."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    batches = list(loader)
    for start in range(0, len(batches), accumulate):
        group = batches[start : start + accumulate]
        loss = sum(F.cross_entropy(model(x), y) for x, y in group) / accumulate
        optimizer.zero_grad()
        (loss + penalty()).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    ("options", "loop"),
    [
        ({}, {}),
        ({"accumulate_grad_batches": 2}, {"accumulate": 2}),
        ({"gradient_clip_val": 0.05}, {"clip": 0.05}),
    ],
    ids=["plain", "accumulate-2", "clip-norm"],
)
def test_updates_equal_a_hand_written_loop_with_the_penalty(options, loop):
    module, callback = Classifier(), EWCCallback(strength=STRENGTH)
    reference = copy.deepcopy(module.net)
    penalty = ewc.EWC(reference, strength=STRENGTH)
    for seed in (1, 2, 3):
        fit(module, task(seed), callback, **options)
        reference_fit(reference, task(seed), penalty, **loop)
        assert_same_parameters(module.net, reference)
        penalty.consolidate(ewc.diagonal_fisher(reference, task(seed), kind="exact"))
    assert callback.penalty.num_tasks == penalty.num_tasks == 3
    assert callback.penalty.fisher_kind == "exact"


def test_the_penalty_value_is_logged_once_there_is_an_old_task():
    module, callback = Classifier(), EWCCallback(strength=STRENGTH)
    trainer = fit(module, task(1), callback)
    assert "ewc_penalty" not in trainer.callback_metrics
    trainer = fit(module, task(2), callback)
    logged = trainer.callback_metrics["ewc_penalty"]  # the value before the last step of task 2
    assert logged.numel() == 1
    assert 0 < float(logged) < float("inf")


def test_the_penalty_is_restored_from_a_lightning_checkpoint(tmp_path):
    module, callback = Classifier(), EWCCallback(strength=STRENGTH, mode="online", gamma=0.9)
    trainer = fit(module, task(1), callback)
    path = tmp_path / "after-task-1.ckpt"
    trainer.save_checkpoint(path)
    resumed_module, resumed = Classifier(), EWCCallback(strength=STRENGTH, mode="online", gamma=0.9)
    fit(resumed_module, task(2), resumed, max_epochs=2, ckpt_path=path)
    fit(module, task(2), callback)
    assert_same_parameters(resumed_module, module)
    assert resumed.penalty.num_tasks == callback.penalty.num_tasks == 2
    for name, value in callback.penalty.importance.items():
        torch.testing.assert_close(resumed.penalty.importance[name], value, rtol=0, atol=0)


def test_the_fisher_uses_fisher_data_and_num_samples_when_given():
    module = Classifier()
    callback = EWCCallback(strength=1.0, fisher="empirical", fisher_data=task(9), num_samples=10)
    fit(module, task(1), callback)
    expected = ewc.diagonal_fisher(module, task(9), kind="empirical", num_samples=10)
    for name, value in expected.items():
        torch.testing.assert_close(callback.penalty.importance[name], value)


def test_one_callback_refuses_a_second_module():
    callback = EWCCallback(strength=1.0)
    fit(Classifier(), task(1), callback)
    with pytest.raises(ValueError, match="another LightningModule"):
        fit(Classifier(), task(2), callback)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strength": -1.0}, "strength must be ≥ 0"),
        ({"strength": 1.0, "fisher": "diag"}, "Fisher kind"),
        ({"strength": 1.0, "gamma": 0.5}, "only applies to mode='online'"),
    ],
)
def test_bad_settings_fail_when_the_callback_is_made(options, message):
    with pytest.raises(ValueError, match=message):
        EWCCallback(**options)


class SkipsOddBatches(Classifier):
    """Returns None for odd batches: Lightning still steps, which must not move a thing."""

    def training_step(self, batch, batch_index):
        return None if batch_index % 2 else super().training_step(batch, batch_index)


class WithLBFGS(Classifier):
    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=LR)


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`:UserWarning")
def test_a_skipped_batch_is_not_a_penalty_only_step():
    module, callback = SkipsOddBatches(), EWCCallback(strength=STRENGTH)
    reference = copy.deepcopy(module.net)
    penalty = ewc.EWC(reference, strength=STRENGTH)
    for seed in (1, 2):
        loader = task(seed)
        fit(module, loader, callback)
        kept = [batch for index, batch in enumerate(loader) if index % 2 == 0]
        reference_fit(reference, kept, penalty)
        assert_same_parameters(module.net, reference)
        penalty.consolidate(ewc.diagonal_fisher(reference, loader))


def test_lbfgs_is_refused():
    with pytest.raises(ValueError, match="cannot serve LBFGS"):
        fit(WithLBFGS(), task(1), EWCCallback(strength=STRENGTH))
