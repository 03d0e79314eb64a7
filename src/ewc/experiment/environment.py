"""The floating-point environment of a run: what can change its bits when the code does not.

Float32 training is deterministic for one code, one seed and one environment, but the sums inside
a matrix product are ordered by the kernel that computes them, and torch picks the kernel by the
CPU's instruction set (``torch.backends.cpu.get_cpu_capability()``: AVX2, AVX512, …), the BLAS
build and the number of threads. A last-bit difference in one step grows over thousands of
steps into a different trajectory, so the same seed can end a long run a point of accuracy away
on another machine or thread count (docs/reproduction.md measures it on permuted MNIST). So a
run records where it ran, next to the versions: ``config.json`` holds the environment of the
process that created the run directory, ``summary.json`` that of the process that finished it.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

# the keys that can change a run's bits for the same code and seed (the source is the code)
NUMERIC_KEYS = ("source", "torch", "cpu", "cpu_capability", "threads", "device")


def describe(threads: int, device: str) -> dict[str, Any]:
    """The environment of this process for cells that train with ``threads`` threads on ``device``.

    Keys: ``source`` (the ewc checkout's git commit, when ewc runs from one), ``torch``, ``cpu``
    (the processor's model name), ``cpu_capability`` (the instruction set torch's kernels use),
    ``machine`` and ``system``, ``threads``, ``device`` (a CUDA device's name, or ``cpu``).
    """
    return {
        "source": source_commit(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "system": platform.system(),
        "threads": threads,
        "device": _device_name(device),
    }


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``cpu_capability AVX2 → AVX512``, one per numeric key but threads whose value differs.

    The thread count is left out: a resumed cell trains on with the count its checkpoint
    recorded (`ewc.experiment.cell` notes it). A key that one side lacks (a run directory of an
    earlier version) is not a difference.
    """
    return [
        f"{key} {recorded[key]} → {current[key]}"
        for key in NUMERIC_KEYS
        if key != "threads" and key in recorded and key in current and recorded[key] != current[key]
    ]


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else `platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_commit(package: Path | None = None) -> str | None:
    """``git <commit>`` of the checkout holding ``package`` (default: ewc's), else None.

    ``+ uncommitted changes`` is added when the package's files differ from the commit. An
    installed package (None) has only its version, which ``config.json`` records beside this.

    Only a checkout that tracks this package's own files counts: a virtual environment inside
    some other git repository is not a source of ewc.
    """
    package = package or Path(__file__).resolve().parents[1]
    marker = package / "__init__.py"
    try:
        tracked = _git(package, "ls-files", "--error-unmatch", str(marker))
        if tracked is None:
            return None
        commit = _git(package, "rev-parse", "HEAD")
        changed = _git(package, "status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):  # no git here, or it hung
        return None
    if not commit:
        return None
    return f"git {commit[:12]}" + (" + uncommitted changes" if changed else "")


def _git(where: Path, *arguments: str) -> str | None:
    """The stripped output of a git command run in ``where``; None when it fails."""
    result = subprocess.run(
        ["git", "-C", str(where), *arguments],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _device_name(device: str) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)`` for a CUDA device."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return f"{device} ({torch.cuda.get_device_name(index)})"
    return device
