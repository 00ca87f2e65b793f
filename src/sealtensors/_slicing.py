"""Row-range planning for ``get_slice``: which rows of dimension 0 an index touches, and the same
index re-expressed relative to the first of those rows, under safetensors' rules for each framework.

safetensors 0.8 slices differently per framework, and so do we:

* ``framework="np"``: only integers, slices (positive step) and one ellipsis; every bound must lie
  inside its dimension (``[:20]`` on 10 rows is an IndexError, as safetensors' SafetensorError).
* ``framework="pt"``: torch's own indexing: slices clamp (``[:20]`` on 10 rows gives the 10 rows),
  lists, integer arrays/tensors, booleans and ``None`` work, negative steps are a ValueError.
"""

from __future__ import annotations

import numpy as np

_BASIC = (int, np.integer, slice)


def _is_int(item) -> bool:
    return isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_))


def _as_tuple(index) -> tuple:
    return index if isinstance(index, tuple) else (index,)


def _expand(index: tuple, rank: int) -> tuple:
    """Replace the ellipsis by full slices; IndexError for two ellipses or too many indices."""
    ellipses = sum(1 for item in index if item is Ellipsis)
    if ellipses > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if ellipses:
        at = index.index(Ellipsis)
        fill = rank - (len(index) - 1)
        index = index[:at] + (slice(None),) * max(fill, 0) + index[at + 1:]
    if len(index) > rank:
        raise IndexError(f"too many indices for tensor of dimension {rank}")
    return index


def _rows_of_slice(head: slice, rows: int, rest: tuple) -> tuple[int, int, tuple]:
    selected = range(*head.indices(rows))
    if len(selected) == 0:
        return 0, 0, (slice(0, 0),) + rest
    first, stop = selected[0], selected[-1] + 1
    return first, stop, (slice(0, stop - first, selected.step),) + rest


def _strict_bound(value, size: int, dim: int) -> int:
    if not _is_int(value):
        raise TypeError(f"slice bounds must be integers, not {type(value).__name__}")
    bound = int(value)
    position = bound + size if bound < 0 else bound
    if not 0 <= position <= size:
        raise IndexError(f"slice bound {bound} is out of bounds for dimension {dim} of size {size}")
    return position


def plan_numpy(index, shape: tuple[int, ...]) -> tuple[int, int, tuple]:
    """(first row, stop row, index relative to the first row) under safetensors' numpy rules."""
    rank = len(shape)
    items = _as_tuple(index)
    for position, item in enumerate(items):
        if item is not Ellipsis and not (_is_int(item) or isinstance(item, slice)):
            raise IndexError(f"unsupported index at position {position} ({type(item).__name__}): "
                             "get_slice with framework='np' takes integers, slices and an "
                             "ellipsis, as safetensors does")
    items = _expand(items, rank)
    checked = []
    for dim, item in enumerate(items):
        size = shape[dim]
        if isinstance(item, slice):
            step = 1 if item.step is None else item.step
            if not _is_int(step) or step <= 0:
                raise ValueError(f"slice step must be a positive integer, got {item.step!r}")
            start = 0 if item.start is None else _strict_bound(item.start, size, dim)
            stop = size if item.stop is None else _strict_bound(item.stop, size, dim)
            checked.append(slice(start, max(start, stop), int(step)))
        else:
            value = int(item)
            if not -size <= value < size:
                raise IndexError(f"index {value} is out of bounds for dimension {dim} of size "
                                 f"{size}")
            checked.append(value % size)
    if rank == 0 or not checked:
        return 0, (shape[0] if rank else 1), tuple(checked)
    head, rest = checked[0], tuple(checked[1:])
    if isinstance(head, slice):
        return _rows_of_slice(head, shape[0], rest)
    return head, head + 1, (0,) + rest


def plan_torch(index, shape: tuple[int, ...], *, basic_only: bool = False):
    """(first row, stop row, index relative to the first row) for torch indexing.

    Rows are narrowed only when dimension 0 is indexed by an integer, a slice or a list of
    integers; anything else (None, booleans, masks) reads every row and lets torch apply the index
    as given. torch itself raises for what it refuses (negative steps, out-of-range integers), so
    the errors are torch's. ``basic_only`` (packed dtypes) allows integers, slices and an ellipsis
    that leave the last dimension whole."""
    import torch

    rank = len(shape)
    items = _as_tuple(index)
    simple = all(item is Ellipsis or _is_int(item) or isinstance(item, slice) for item in items)
    if basic_only:
        if not simple:
            raise IndexError("a packed (F4) tensor can be indexed with integers, slices and an "
                             "ellipsis only")
        expanded = _expand(items, rank)
        if len(expanded) == rank and rank and expanded[-1] != slice(None):
            raise IndexError("F4 packs two values per byte along the last dimension: that "
                             "dimension cannot be indexed, take whole rows")
    if rank == 0:
        return 0, 1, index
    if any(item is None or isinstance(item, (bool, np.bool_)) for item in items):
        return 0, shape[0], index
    try:
        expanded = _expand(items, rank) if simple or any(item is Ellipsis for item in items) else items
    except IndexError:
        if simple:
            raise
        return 0, shape[0], index  # a mask spans several dimensions: torch counts them
    if not expanded:
        return 0, shape[0], index
    head, rest = expanded[0], tuple(expanded[1:])
    rows = shape[0]
    if isinstance(head, slice):
        step = 1 if head.step is None else head.step
        if _is_int(step) and step <= 0:
            raise ValueError("step must be greater than zero")
        return _rows_of_slice(head, rows, rest)
    if _is_int(head):
        row = int(head)
        if not -rows <= row < rows:
            raise IndexError(f"index {row} is out of bounds for dimension 0 with size {rows}")
        row %= rows
        return row, row + 1, (0,) + rest
    selection = head
    if isinstance(selection, (list, tuple, np.ndarray, torch.Tensor)):
        picked = torch.as_tensor(np.asarray(selection) if isinstance(selection, (list, tuple))
                                 else selection)
        if picked.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8) \
                and picked.numel() and picked.dtype != torch.uint8:
            picked = picked.to(torch.int64)
            if int(picked.max()) >= rows or int(picked.min()) < -rows:
                bad = int(picked.max()) if int(picked.max()) >= rows else int(picked.min())
                raise IndexError(f"index {bad} is out of bounds for dimension 0 with size {rows}")
            picked = picked % rows
            first, stop = int(picked.min()), int(picked.max()) + 1
            return first, stop, (picked - first,) + rest
    # Masks, empty selections and anything else: every row, torch decides.
    return 0, rows, index
