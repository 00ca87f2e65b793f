"""Strict JSON for hostile headers: UTF-8 only, no duplicate keys, no NaN/Infinity, bounded nesting.

Every failure is a FormatError naming what was being parsed.
"""

from __future__ import annotations

import json

from ..errors import FormatError


def loads(raw: bytes, what: str):
    """Parse ``raw`` (bytes) as JSON; ``what`` names it in error messages ("the index", ...)."""

    def reject_duplicates(pairs):
        result = {}
        for key, value in pairs:
            if key in result:
                raise FormatError(f"duplicate key {key!r} in {what}")
            result[key] = value
        return result

    def reject_constant(name):
        raise FormatError(f"non-standard JSON constant {name} in {what}")

    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=reject_duplicates, parse_constant=reject_constant)
    except RecursionError:
        raise FormatError(f"{what} nests too deeply") from None
    except FormatError:
        raise
    except ValueError as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from None
