"""``python -m ewc``: the ``ewc`` command, also as ``torchrun ... -m ewc run ...``."""

from ewc.cli import main

raise SystemExit(main())
