"""The open policy hook: an application callable that may refuse to open a file before any key is used.

``sealtensors.set_policy(callable)`` installs it process-wide (``None`` removes it). It is called
once per open, after the header has been parsed and before any slot is unwrapped (so before a KMS,
HSM or TPM is asked for anything), with a :class:`OpenRequest`. Returning normally allows the open;
raising :class:`~sealtensors.errors.PolicyError` (or returning ``False``) refuses it, and the refusal
is audited. Typical uses: a licence window, an allow-list of file ids, a maintenance freeze.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import PolicyError


@dataclass(frozen=True)
class OpenRequest:
    """What a policy sees: public facts only (no key material, no plaintext)."""

    file_id: str          # hex
    slot_types: tuple[str, ...]
    signed: bool
    path: Optional[str]   # None for in-memory data


_lock = threading.Lock()
_policy: Optional[Callable[[OpenRequest], object]] = None


def set_policy(policy: Optional[Callable[[OpenRequest], object]]) -> None:
    """Install (or with None, remove) the process-wide open policy."""
    if policy is not None and not callable(policy):
        raise TypeError("the policy must be callable (or None)")
    global _policy
    with _lock:
        _policy = policy


def check(request: OpenRequest) -> None:
    """Apply the installed policy; PolicyError when it refuses."""
    policy = _policy
    if policy is None:
        return
    try:
        verdict = policy(request)
    except PolicyError:
        raise
    except Exception as exc:  # a broken policy must fail closed, with its reason
        raise PolicyError(f"the open policy failed ({type(exc).__name__}: {exc}); refusing") from exc
    if verdict is False:
        raise PolicyError(f"the open policy refused file {request.file_id}")
