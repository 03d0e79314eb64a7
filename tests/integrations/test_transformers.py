"""The Hugging Face callback: its updates are those of a hand-written loop with ``penalty()``.

Tiny randomly initialised BERT and GPT-2 configurations (nothing is downloaded), float64, plain
SGD without clipping, one batch per step (the Trainer shuffles; a mean over the whole batch does
not care), two tasks of synthetic token sequences. The reference Fisher is computed by
`ewc.diagonal_fisher` through a wrapper written here, independently of the callback's batching.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

import ewc

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="needs pip install 'ewc[transformers]'")
from ewc.integrations.transformers import EWCCallback, infer_task  # noqa: E402

LR, STRENGTH, VOCAB, LENGTH, SEQUENCES = 0.3, 50.0, 13, 6, 8


def bert_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=LENGTH,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    return transformers.BertForSequenceClassification(config).double()


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=LENGTH,
        n_embd=8,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    model = transformers.GPT2LMHeadModel(config).double()
    # transformers 5.24 leaves GPT-2's loss_type None, and its Trainer then divides the summed
    # token loss by all N·T labels instead of the N·(T−1) the model scores (the model's own
    # .loss divides by N·(T−1)); naming the loss makes the two agree.
    model.loss_type = "ForCausalLM"
    return model


def bert_masked_lm() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=LENGTH,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    return transformers.BertForMaskedLM(config).double()


def sequences(seed: int, labels: str) -> list[dict[str, torch.Tensor]]:
    """Synthetic token sequences; labels: a class per sequence, the tokens, or masked tokens."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (SEQUENCES, LENGTH), generator=generator)
    examples = []
    for row in ids:
        example = {"input_ids": row, "attention_mask": torch.ones_like(row)}
        if labels == "class":
            example["labels"] = torch.tensor(int(row[0]) % 3)
        elif labels == "tokens":
            example["labels"] = row.clone()
        else:  # masked: positions 1 and 3 replaced by token 0 and scored, the rest ignored
            example["labels"] = torch.full_like(row, -100)
            example["labels"][[1, 3]] = row[[1, 3]]
            example["input_ids"] = row.clone().index_fill_(0, torch.tensor([1, 3]), 0)
        examples.append(example)
    return examples


def train(model, dataset, callback, output_dir, **options) -> transformers.Trainer:
    settings = {
        "per_device_train_batch_size": SEQUENCES,
        "max_steps": 3,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        **options,
    }
    args = transformers.TrainingArguments(output_dir=str(output_dir), **settings)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    trainer = transformers.Trainer(
        model, args, train_dataset=dataset, callbacks=[callback], optimizers=(optimizer, None)
    )
    trainer.train(resume_from_checkpoint=options.get("resume_from_checkpoint"))
    return trainer


class Logits(torch.nn.Module):
    """The reference's own view of the model for `ewc.diagonal_fisher`: input_ids in, logits out."""

    def __init__(self, model, shift):
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, ids):
        logits = self.model(input_ids=ids).logits
        return logits[:, :-1] if self.shift else logits


def reference_fisher(model, dataset, shift):
    ids = torch.stack([e["input_ids"] for e in dataset])
    labels = torch.stack([e["labels"] for e in dataset])
    targets = labels[:, 1:] if shift else labels
    fisher = ewc.diagonal_fisher(Logits(model, shift), [(ids, targets)], kind="exact")
    return {name.removeprefix("model."): value for name, value in fisher.items()}


def reference_train(model, dataset, penalty, steps=3) -> None:
    """The loop the callback must reproduce: the model's own loss + penalty(), SGD, no clipping."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    batch = {key: torch.stack([e[key] for e in dataset]) for key in dataset[0]}
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss + penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def assert_same_parameters(a, b) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12, msg=name)


def check_two_tasks(make_model, labels, shift, tmp_path) -> None:
    model, callback = make_model(), EWCCallback(strength=STRENGTH)
    reference = copy.deepcopy(model)
    penalty = ewc.EWC(reference, strength=STRENGTH)
    for seed in (1, 2):
        dataset = sequences(seed, labels)
        train(model, dataset, callback, tmp_path / f"task{seed}")
        reference_train(reference, dataset, penalty)
        assert_same_parameters(model, reference)
        penalty.consolidate(reference_fisher(reference, dataset, shift))
        for name, value in penalty.importance.items():
            torch.testing.assert_close(callback.penalty.importance[name], value, msg=name)
    assert callback.penalty.num_tasks == 2


def test_a_sequence_classifier_updates_as_a_hand_written_loop(tmp_path):
    check_two_tasks(bert_classifier, "class", False, tmp_path)


def test_a_causal_lm_updates_as_a_hand_written_loop(tmp_path):
    check_two_tasks(gpt2, "tokens", True, tmp_path)


def test_a_masked_lm_updates_as_a_hand_written_loop(tmp_path):
    check_two_tasks(bert_masked_lm, "masked", False, tmp_path)


def test_the_penalty_is_logged_and_resumed_from_a_checkpoint(tmp_path):
    model, callback = bert_classifier(), EWCCallback(strength=STRENGTH)
    train(model, sequences(1, "class"), callback, tmp_path / "task1")
    resumed_model, resumed = copy.deepcopy(model), EWCCallback(strength=STRENGTH)
    resumed.load_state_dict(callback.state_dict())  # as if task 1 had run in this process
    task2, options = sequences(2, "class"), {"save_strategy": "steps", "save_steps": 1}
    trainer = train(model, task2, callback, tmp_path / "task2", **options)
    assert (tmp_path / "task2" / "checkpoint-2" / "ewc_penalty.safetensors").is_file()
    assert all("ewc_penalty" in log for log in trainer.state.log_history if "loss" in log)
    fresh = EWCCallback(strength=STRENGTH)  # a new process: the state comes from checkpoint-2
    checkpoint = str(tmp_path / "task2" / "checkpoint-2")
    train(resumed_model, task2, fresh, tmp_path / "task2", resume_from_checkpoint=checkpoint)
    assert_same_parameters(resumed_model, model)
    assert fresh.penalty.num_tasks == callback.penalty.num_tasks == 2


def test_resuming_without_the_saved_state_is_refused(tmp_path):
    model, callback = bert_classifier(), EWCCallback(strength=STRENGTH)
    options = {"save_strategy": "steps", "save_steps": 1}
    train(model, sequences(1, "class"), callback, tmp_path, **options)
    (tmp_path / "checkpoint-2" / "ewc_penalty.safetensors").unlink()
    checkpoint = str(tmp_path / "checkpoint-2")
    with pytest.raises(FileNotFoundError, match=r"ewc_penalty\.safetensors does not exist"):
        train(
            model,
            sequences(1, "class"),
            EWCCallback(strength=1.0),
            tmp_path,
            resume_from_checkpoint=checkpoint,
            **options,
        )


def test_the_task_is_read_from_the_model_class():
    assert infer_task(bert_classifier()).value == "sequence-classification"
    assert infer_task(gpt2()).value == "causal-lm"
    assert infer_task(bert_masked_lm()).value == "masked-lm"
    with pytest.raises(ValueError, match="pass task="):
        infer_task(torch.nn.Linear(2, 2))


def test_bad_settings_fail_when_the_callback_is_made():
    with pytest.raises(ValueError, match="strength must be ≥ 0"):
        EWCCallback(strength=-1.0)
    with pytest.raises(ValueError, match="model task"):
        EWCCallback(strength=1.0, task="translation")


def test_gradient_accumulation_that_the_trainer_leaves_undivided_is_refused(tmp_path):
    """transformers 5 sums, not averages, the micro-batches of a model whose forward takes
    **kwargs: the penalty, added once, would be the strength divided by the accumulation steps."""
    accumulate = {"per_device_train_batch_size": SEQUENCES // 2, "gradient_accumulation_steps": 2}
    dataset = sequences(1, "class")
    with pytest.raises(ValueError, match="leaves the loss of this model undivided"):
        train(bert_classifier(), dataset, EWCCallback(strength=STRENGTH), tmp_path, **accumulate)
    model, callback = bert_classifier(), EWCCallback(strength=STRENGTH)
    model.accepts_loss_kwargs = False  # the Trainer divides: the mean of the two micro-batches
    reference = copy.deepcopy(model)
    penalty = ewc.EWC(reference, strength=STRENGTH)
    for seed in (1, 2):
        dataset = sequences(seed, "class")
        train(model, dataset, callback, tmp_path / f"task{seed}", **accumulate)
        reference_train(reference, dataset, penalty)
        assert_same_parameters(model, reference)
        penalty.consolidate(reference_fisher(reference, dataset, False))
