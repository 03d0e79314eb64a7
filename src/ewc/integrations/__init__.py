"""Callbacks that add EWC to training frameworks: the user keeps their framework's loop.

- `ewc.integrations.lightning.EWCCallback` for PyTorch Lightning (``pip install 'ewc[lightning]'``).
- `ewc.integrations.transformers.EWCCallback` for the Hugging Face ``Trainer``
  (``pip install 'ewc[transformers]'``).

Each module imports its framework, so import the one you use; this package imports neither. Both
callbacks do the same three things around the framework's own loop: before every optimizer step
they add the penalty's gradient λ Ω (θ − θ̄) to ``.grad`` (`ewc.EWC.add_gradient_`, once per
optimizer step, whatever the gradient accumulation); at the end of each task's training they
compute `ewc.diagonal_fisher` and consolidate; and they keep the penalty's state in the
framework's checkpoints.
"""
