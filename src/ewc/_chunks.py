"""Cutting a batch into ranges of samples whose per-sample temporaries fit a memory budget."""

from __future__ import annotations


def chunk_length(budget: int, per_sample: int) -> int:
    """How many samples fit ``budget`` entries at ``per_sample`` entries each (at least one)."""
    return max(1, budget // max(1, per_sample))


def sample_ranges(size: int, per_sample: int, budget: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(size)`` in chunks of `chunk_length` samples."""
    step = chunk_length(budget, per_sample)
    return [(start, min(size, start + step)) for start in range(0, size, step)]
