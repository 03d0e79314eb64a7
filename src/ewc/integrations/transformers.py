"""EWC for the Hugging Face ``Trainer``: a `TrainerCallback`, so the Trainer's loop stays as it is.

The user calls ``trainer.train()`` once per task (a new ``Trainer`` per task, or the same one with
a new ``train_dataset``), with the same callback instance in ``callbacks``. The callback

1. adds the penalty's gradient λ Ω (θ − θ̄) to ``.grad`` in ``on_pre_optimizer_step``
   (`ewc.EWC.add_gradient_`): once per optimizer step, after all micro-batches of a gradient
   accumulation — so the update is the one of ``task loss + penalty()``. The Trainer calls this
   hook *after* it clips the gradients: ``max_grad_norm`` clips the task gradient only, and the
   penalty's gradient is added unclipped;
2. reports the penalty's mean value since the last log as ``ewc_penalty`` in the training logs
   (``trainer.state.log_history`` and the callbacks after this one);
3. at the end of each ``train()`` computes `ewc.diagonal_fisher` of the model on the run's train
   dataloader (or ``fisher_data``) and consolidates: the parameters now are the new anchor θ*;
4. writes the penalty's state to ``ewc_penalty.safetensors`` in every checkpoint directory and reads
   it back when ``trainer.train(resume_from_checkpoint=...)`` resumes from ``output_dir``.

The Fisher is that of the model's own predictive distribution for its task: a sequence classifier
p(y|x); a causal LM p(x_t|x_<t) with targets the next tokens; a masked LM p(x_t|x_masked) at the
masked positions (label −100 elsewhere, as Hugging Face's collators write them). For the language
models the log-likelihood of a sample is the sum over its scored tokens (the sequence Fisher of
`ewc.diagonal_fisher`). Penalty: Kirkpatrick et al. 2017, Eq. 3; online mode: Schwarz et al. 2018.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import transformers
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from transformers.models.auto import modeling_auto as auto

from ewc._atomic import write_bytes_atomic
from ewc._choices import Choice
from ewc.fisher import DiagonalFisher, FisherKind, diagonal_fisher
from ewc.integrations._lazy_penalty import LazyPenalty
from ewc.penalties import EWC, PenaltyMode

STATE_FILE = "ewc_penalty.safetensors"
IGNORE_INDEX = -100

if not hasattr(transformers.TrainerCallback, "on_pre_optimizer_step"):
    raise ImportError(
        f"ewc.integrations.transformers needs the Trainer's on_pre_optimizer_step hook; "
        f"transformers {transformers.__version__} lacks it: pip install 'ewc[transformers]'"
    )


class ModelTask(Choice):
    """Which predictive distribution the Fisher is of (see the module docstring)."""

    __noun__ = ("model task", "tasks")

    CAUSAL_LM = "causal-lm"
    MASKED_LM = "masked-lm"
    SEQUENCE_CLASSIFICATION = "sequence-classification"


_TASK_CLASSES = {  # model type → class name(s), e.g. "gpt2" → "GPT2LMHeadModel"
    ModelTask.CAUSAL_LM: auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    ModelTask.MASKED_LM: auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    ModelTask.SEQUENCE_CLASSIFICATION: auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
}


class EWCCallback(transformers.TrainerCallback):
    """Elastic Weight Consolidation around ``Trainer.train``, one ``train()`` per task.

    Args:
        strength: λ ≥ 0 of (λ/2) Σ_i F_i (θ_i − θ*_i)² (the penalty carries the 1/2).
        fisher: the Fisher kind (``"exact"``, ``"sample"``, ``"empirical"``, ``"argmax"`` or
            ``"batched"``; see `ewc.fisher.kinds`).
        mode: ``"separate"`` (one term per task) or ``"online"`` (F ← γ F + F_new).
        gamma: the online decay γ ∈ [0, 1] (0: the latest task only); 1 in separate mode.
        fisher_data: what the Fisher is computed on at the end of every ``train()``: a DataLoader
            (or any iterable) of batches as the Trainer's collator makes them (dicts with
            ``input_ids``, ``attention_mask``, ``labels``, ...), or a dataset of such examples,
            batched with ``data_collator``; default: the run's train dataloader.
        num_samples: use at most this many sequences for each Fisher (default: all).
        task: ``"causal-lm"``, ``"masked-lm"`` or ``"sequence-classification"``; default: read
            from the model's class (e.g. ``GPT2LMHeadModel`` is a causal LM).
        data_collator: batches a ``fisher_data`` dataset (default:
            ``transformers.default_data_collator``).
        batch_size: the batch size for a ``fisher_data`` dataset.

    Example:
        >>> callback = EWCCallback(strength=1e3)
        >>> for dataset in tasks:
        ...     Trainer(model, args, train_dataset=dataset, callbacks=[callback]).train()
    """

    def __init__(
        self,
        strength: float,
        *,
        fisher: FisherKind | str = "exact",
        mode: PenaltyMode | str = "separate",
        gamma: float = 1.0,
        fisher_data: Iterable[Any] | Dataset | None = None,
        num_samples: int | None = None,
        task: ModelTask | str | None = None,
        data_collator: Callable[[list[Any]], Mapping[str, Tensor]] | None = None,
        batch_size: int = 8,
    ):
        self.kind = FisherKind.parse(fisher)
        self.mode = PenaltyMode.parse(mode)
        # The penalty's own checks of strength and gamma, now rather than when training starts:
        self._holder = LazyPenalty(strength, self.mode, gamma, "model")
        self.strength, self.gamma = self._holder.strength, self._holder.gamma
        self.task = ModelTask.parse(task) if task is not None else None
        self.fisher_data = fisher_data
        self.num_samples = num_samples
        self.data_collator = data_collator or transformers.default_data_collator
        self.batch_size = batch_size
        self._loaded_by_user = False
        self._values: list[float] = []

    @property
    def penalty(self) -> EWC | None:
        """The `ewc.EWC` penalty on the trained model (None before the first ``train()``)."""
        return self._holder.penalty

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Attach the penalty to the model; when resuming, read it from the checkpoint."""
        if args.fp16 and not (args.max_grad_norm or 0) > 0:
            raise ValueError(
                "with fp16 and max_grad_norm=0 the Trainer hands the optimizer-step hook scaled "
                "gradients, to which the penalty's gradient cannot be added; set max_grad_norm > 0 "
                "(the Trainer then unscales them first) or use bf16"
            )
        if args.gradient_accumulation_steps > 1 and _trainer_skips_its_division(model):
            raise ValueError(
                f"with gradient_accumulation_steps={args.gradient_accumulation_steps} the Trainer "
                "leaves the loss of this model undivided (its forward takes **kwargs, so the "
                "Trainer expects it to divide by num_items_in_batch, which most models' losses "
                "do not): the task loss would be the sum over the micro-batches while the penalty "
                "is added once, a strength divided by the accumulation steps. Set "
                "model.accepts_loss_kwargs = False (the Trainer then divides) or accumulate over "
                "one step"
            )
        if state.global_step > 0 and not self._loaded_by_user:
            self.load(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        self._loaded_by_user = False
        self._penalty_for(model)
        self._values.clear()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        """Add λ Ω (θ − θ̄) to ``.grad``, once per optimizer step (after clipping)."""
        penalty = self._penalty_for(model)
        if penalty.num_tasks:
            self._values.append(float(penalty.add_gradient_()))

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Add the mean penalty since the last log to the training logs as ``ewc_penalty``."""
        if not self._values or logs is None or "loss" not in logs:
            return
        value = sum(self._values) / len(self._values)
        self._values.clear()
        logs["ewc_penalty"] = value
        if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
            state.log_history[-1]["ewc_penalty"] = value

    def on_save(self, args, state, control, **kwargs):
        """Write the penalty's state beside the checkpoint the Trainer has just saved."""
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and args.should_save and directory.is_dir():
            self.save(directory)

    def on_train_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        """Compute this task's Fisher and consolidate: the parameters now are the new anchor."""
        data = self.fisher_data if self.fisher_data is not None else train_dataloader
        if data is None:
            raise ValueError(
                "the Trainer has no train dataloader for the Fisher; pass fisher_data="
            )
        self._penalty_for(model).consolidate(self.compute_fisher(model, data))

    def compute_fisher(self, model: nn.Module, data: Iterable[Any] | Dataset) -> DiagonalFisher:
        """The diagonal Fisher of ``model`` on ``data`` (batches or a dataset), keyed as the model.

        Each batch's ``labels`` say which tokens are scored (−100: not scored); without labels, a
        causal LM scores every token its ``attention_mask`` keeps.
        """
        task = self.task or infer_task(model)
        if isinstance(data, Dataset) and not isinstance(data, DataLoader):
            data = DataLoader(data, batch_size=self.batch_size, collate_fn=self.data_collator)
        keys, batches = _input_keys_and_batches(data)
        pairs = (_inputs_and_targets(batch, keys, task, self.kind) for batch in batches)
        wrapped = _KeywordModel(model, keys, shift=task is ModelTask.CAUSAL_LM)
        fisher = diagonal_fisher(wrapped, pairs, self.kind, num_samples=self.num_samples)
        prefix = "model."
        values = {name.removeprefix(prefix): value for name, value in fisher.items()}
        return DiagonalFisher(values, kind=fisher.kind, num_samples=fisher.num_samples)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the penalty's state to ``directory/ewc_penalty.safetensors`` (atomically)."""
        state = self.state_dict()
        tensors = {"constant": state["constant"]}
        for part in ("importance", "anchor"):
            tensors.update({f"{part}/{n}": t.contiguous() for n, t in state[part].items()})
        settings = {k: state[k] for k in ("mode", "strength", "gamma", "num_tasks", "fisher_kind")}
        path = Path(directory) / STATE_FILE
        data = safetensors.torch.save(tensors, metadata={"ewc": json.dumps(settings)})
        write_bytes_atomic(path, data)
        return path

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Read the state `save` wrote in ``directory``; call before ``train()`` to use it."""
        path = Path(directory) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: resuming needs the EWC state saved with the checkpoint; "
                "call callback.load(<checkpoint directory>) before trainer.train(...) when the "
                "checkpoint is not in output_dir"
            )
        with safetensors.safe_open(str(path), framework="pt") as file:
            settings = json.loads(file.metadata()["ewc"])
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
        state = {**settings, "constant": tensors.pop("constant")}
        for part in ("importance", "anchor"):
            start = f"{part}/"
            state[part] = {n[len(start) :]: t for n, t in tensors.items() if n.startswith(start)}
        self.load_state_dict(state)
        self._loaded_by_user = True

    def state_dict(self) -> dict[str, Any]:
        """The penalty's `state_dict`; before the first ``train()``, that of an empty penalty."""
        state = self._holder.state()
        if state is not None:
            return dict(state)
        return EWC(
            nn.Linear(1, 1), strength=self.strength, mode=self.mode, gamma=self.gamma
        ).state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict`; applied to the model when training starts."""
        self._holder.load_state_dict(state)

    def _penalty_for(self, model: nn.Module | None) -> EWC:
        """The penalty on ``model``, created on first use; one callback serves one model."""
        if model is None:
            raise ValueError("the Trainer passed no model to the EWC callback")
        return self._holder.for_model(model)


def infer_task(model: nn.Module) -> ModelTask:
    """The task of a Transformers model from its class (e.g. ``BertForMaskedLM``: masked LM)."""
    name = type(model).__name__
    for task, classes in _TASK_CLASSES.items():
        names = {n for v in classes.values() for n in ((v,) if isinstance(v, str) else v)}
        if name in names:
            return task
    raise ValueError(
        f"cannot tell which distribution {name} models; pass task= one of "
        f"{[t.value for t in ModelTask]}"
    )


class _KeywordModel(nn.Module):
    """Calls a Transformers model on inputs packed as one (N, K, T) tensor, returns its logits.

    `ewc.diagonal_fisher` takes ``(inputs, targets)`` tensor pairs; the K model inputs of a batch
    (``input_ids``, ``attention_mask``, ...) travel stacked along dimension 1. For a causal LM the
    last position, which predicts no target, is dropped.
    """

    def __init__(self, model: nn.Module, keys: tuple[str, ...], *, shift: bool):
        super().__init__()
        self.model, self.keys, self.shift = model, keys, shift

    def forward(self, packed: Tensor) -> Tensor:
        inputs = {key: packed[:, i] for i, key in enumerate(self.keys)}
        if self.shift:
            inputs["use_cache"] = False
        logits = self.model(**inputs).logits
        return logits[:, :-1] if self.shift else logits


def _input_keys_and_batches(
    data: Iterable[Any],
) -> tuple[tuple[str, ...], Iterator[Mapping[str, Any]]]:
    """The model-input keys of the first batch, and all batches (the first one included)."""
    iterator = iter(data)
    first = next(iterator, None)
    if first is None:
        raise ValueError("the Fisher data yielded no batch")
    if not isinstance(first, Mapping) or "input_ids" not in first:
        raise TypeError(
            "the Fisher data must yield dict batches with 'input_ids' (as the Trainer's collators "
            f"make them); got {type(first).__name__}"
        )
    keys = tuple(k for k in first if k != "labels")
    return keys, itertools.chain([first], iterator)


def _inputs_and_targets(
    batch: Mapping[str, Any], keys: tuple[str, ...], task: ModelTask, kind: FisherKind
) -> tuple[Tensor, Tensor]:
    """One batch as ``(packed model inputs, targets)`` for `ewc.diagonal_fisher`."""
    ids = batch["input_ids"]
    if tuple(k for k in batch if k != "labels") != keys:
        raise ValueError(f"every Fisher batch must have the keys {list(keys)}; got {list(batch)}")
    for key in keys:
        value = batch[key]
        if not isinstance(value, Tensor) or value.shape != ids.shape or value.is_floating_point():
            raise ValueError(
                f"Fisher batch entry {key!r} must be an integer tensor shaped like input_ids "
                f"{tuple(ids.shape)}; got {getattr(value, 'dtype', type(value).__name__)} "
                f"{tuple(getattr(value, 'shape', ()))}"
            )
    packed = torch.stack([batch[key].to(ids.dtype) for key in keys], dim=1)
    return packed, _targets(batch, task, kind)


def _targets(batch: Mapping[str, Any], task: ModelTask, kind: FisherKind) -> Tensor:
    """The labels the Fisher reads: which tokens are scored, and the class for ``empirical``."""
    labels = batch.get("labels")
    ids = batch["input_ids"]
    if task is ModelTask.CAUSAL_LM:
        if labels is None:
            mask = batch.get("attention_mask")
            labels = ids if mask is None else ids.masked_fill(mask == 0, IGNORE_INDEX)
        return labels[:, 1:]
    if labels is not None:
        return labels
    if task is ModelTask.SEQUENCE_CLASSIFICATION and not kind.uses_labels:
        return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
    raise ValueError(
        f"a {task.value} Fisher batch needs 'labels' (for a masked LM: the masked tokens, −100 "
        "elsewhere, as DataCollatorForLanguageModeling makes them)"
    )


def _trainer_skips_its_division(model: Any) -> bool:
    """Whether `transformers.Trainer` leaves the loss undivided under gradient accumulation.

    It does for a model that "accepts loss kwargs" (``model.accepts_loss_kwargs``, or else a
    ``**kwargs`` in its forward), expecting the model to normalise by ``num_items_in_batch``
    (transformers 5, ``Trainer.__init__`` and ``training_step``).
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    if hasattr(model, "accepts_loss_kwargs"):
        return bool(model.accepts_loss_kwargs)
    parameters = inspect.signature(model.forward).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
