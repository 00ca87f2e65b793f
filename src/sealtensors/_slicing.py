"""Row-range planning for ``get_slice``: which rows of dimension 0 an index touches, and the same
index re-expressed relative to the first of those rows."""

from __future__ import annotations

import numpy as np


def _expand(index, rank: int) -> tuple:
    if not isinstance(index, tuple):
        index = (index,)
    if any(item is None for item in index):
        raise IndexError("get_slice does not support None / np.newaxis")
    ellipses = sum(1 for item in index if item is Ellipsis)
    if ellipses > 1:
        raise IndexError("an index can only have a single ellipsis")
    if ellipses:
        at = index.index(Ellipsis)
        fill = rank - (len(index) - 1)
        index = index[:at] + (slice(None),) * fill + index[at + 1:]
    if len(index) > rank:
        raise IndexError(f"too many indices for a tensor of rank {rank}")
    return index


def plan_rows(index, shape: tuple[int, ...]) -> tuple[int, int, tuple]:
    """Return (first row, stop row, index relative to the first row) for a tensor of ``shape``."""
    rank = len(shape)
    index = _expand(index, rank)
    if rank == 0 or not index:
        return 0, (shape[0] if rank else 1), index
    rows = shape[0]
    head, rest = index[0], index[1:]
    if isinstance(head, slice):
        selected = range(*head.indices(rows))
        if len(selected) == 0:
            return 0, 0, (slice(0, 0),) + rest
        first, stop = min(selected), max(selected) + 1
        if selected.step > 0:
            relative = slice(selected.start - first, selected.stop - first, selected.step)
        else:
            # Still a basic slice (an index array would change how numpy combines the other
            # dimensions' advanced indices): walk down from the start to row 0 of the block, which
            # is the lowest selected row.
            relative = slice(selected.start - first, None, selected.step)
        return first, stop, (relative,) + rest
    if isinstance(head, (bool, np.bool_)) or not isinstance(head, (int, np.integer)):
        raise IndexError("get_slice supports integers, slices and an ellipsis")
    row = int(head)
    if not -rows <= row < rows:
        raise IndexError(f"index {row} is out of bounds for dimension 0 of size {rows}")
    row %= rows
    return row, row + 1, (0,) + rest
