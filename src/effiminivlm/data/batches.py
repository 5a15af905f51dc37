"""The fast path's batch order, torch-free: rows sorted by text length (longest first) and cut into batches,
and the positions that put the outputs back in input order.

Why its own module: the PyTorch loader (`data.loader.LengthSortedBatches`) and the torch-free scorer
(`serving.lean`) must cut exactly the same batches, or a text is padded to another length and its score
moves by float rounding; both call these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence


def length_sorted_batches(lengths: Sequence[int], batch_size: int, window: int | None = None
                          ) -> list[list[int]]:
    """Row indices sorted by `lengths` (longest first; a stable sort keeps equal lengths in input order),
    cut every `batch_size` rows; `window` (rows, default: all) sorts only within consecutive windows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches: list[list[int]] = []
    n = len(lengths)
    step = n if window is None else max(window, batch_size)
    for start in range(0, n, max(step, 1)):
        rows = sorted(range(start, min(n, start + step)), key=lambda i: -lengths[i])
        batches += [rows[k:k + batch_size] for k in range(0, len(rows), batch_size)]
    return batches


def restore_order(rows: Sequence[int], n: int) -> list[int]:
    """Positions that put outputs made in `rows` order back in input order (every row must come once)."""
    rows = [int(r) for r in rows]
    if sorted(rows) != list(range(n)):
        raise ValueError(f"batches covered {len(rows)} rows ({len(set(rows))} distinct) of {n}")
    where = [0] * n
    for pos, r in enumerate(rows):
        where[r] = pos
    return where
