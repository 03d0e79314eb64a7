"""Let ``destroy_process_group`` end the default group: an import-order defect of torch, avoided.

``torch.distributed.nn.functional`` binds ``group=group.WORLD`` as default arguments when it is
first imported. ``DistributedDataParallel`` imports it (through ``torch._dynamo``) the first time
it is built, which is after ``init_process_group``: those defaults then hold the default process
group for the rest of the process, ``destroy_process_group`` cannot free it, and its gloo worker
threads outlive the script. A worker that drops the last reference to a collective's tensor while
the interpreter shuts down asks for the GIL; a finalising interpreter ends any thread that does,
and ending a C++ thread that way aborts the process ("terminate called without an active
exception", SIGABRT) after the script has done all its work: ``torchrun`` reports a failed run.

Imported before any group exists, the defaults are ``None``; ``destroy_process_group`` then frees
the group, whose destructor finishes the queued work and joins the worker threads while Python is
still whole. ``import ewc`` does that import (`import_before_any_group`). With torch 2.13 (CPU,
gloo), docs/distributed.md's two-rank example aborted in 2 of 150 launches without it and in none
of 150 with it (``benchmarks/torchrun_exit.py``, three launches at a time on two cores); the core
dump of an abort showed the main thread in ``Py_FinalizeEx`` and a gloo worker ended inside
``~AsyncWork`` while it took the GIL to release a tensor.
"""

from __future__ import annotations

import importlib
import sys

import torch

#: The module whose import-time defaults capture the default process group.
CAPTURING_MODULE = "torch.distributed.nn.functional"


def import_before_any_group() -> None:
    """Import `CAPTURING_MODULE` now, while it cannot capture a group.

    Does nothing where torch has no distributed support, where the module is already imported,
    and inside an initialised group (importing it there would capture that group).
    """
    distributed = torch.distributed
    if not distributed.is_available() or distributed.is_initialized():
        return
    if CAPTURING_MODULE not in sys.modules:
        importlib.import_module(CAPTURING_MODULE)
