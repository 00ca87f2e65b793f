"""Pin files: what a deployment commits next to its config to accept only one publisher's recent weights.

A pin file is a JSON object (UTF-8, at most 1 MiB)::

    {"signers": ["st-sign:..."], "min_generation": 1733000000, "file_id": "<32 hex digits>"}

``signers`` is required (one or more verifying keys); ``min_generation`` (an integer) and
``file_id`` are optional. Unknown keys are an error, so a typo never silently weakens a pin.
"""

from __future__ import annotations

import os
import re

from ..errors import InvalidKeyError
from ..format import strict_json
from .signing import VerifyingKey, as_verifying_keys

_KEYS = {"signers", "min_generation", "file_id"}


def read_pin_file(path) -> dict:
    """The reader options a pin file stands for: signer, min_generation, expect_file_id."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read((1 << 20) + 1)
    except OSError as exc:
        raise InvalidKeyError(f"cannot read pin file {where!r}: {exc.strerror or exc}") from None
    if len(raw) > 1 << 20:
        raise InvalidKeyError(f"pin file {where!r} is larger than 1 MiB")
    try:
        document = strict_json.loads(raw, "pin file")
    except ValueError as exc:
        raise InvalidKeyError(f"pin file {where!r} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidKeyError(f"pin file {where!r} must hold a JSON object")
    unknown = set(document) - _KEYS
    if unknown:
        raise InvalidKeyError(f"pin file {where!r}: unknown field(s) {sorted(unknown)}")
    signers = document.get("signers")
    if not isinstance(signers, list) or not signers or not all(isinstance(s, str) for s in signers):
        raise InvalidKeyError(f"pin file {where!r}: 'signers' must be a non-empty list of st-sign: strings")
    try:
        keys = [VerifyingKey.parse(s) for s in signers]
    except InvalidKeyError as exc:
        raise InvalidKeyError(f"pin file {where!r}: {exc}") from None
    options: dict = {"signer": keys}
    if "min_generation" in document:
        value = document["min_generation"]
        if type(value) is not int or not 0 <= value < 2**63:
            raise InvalidKeyError(f"pin file {where!r}: 'min_generation' must be an integer >= 0")
        options["min_generation"] = value
    if "file_id" in document:
        value = document["file_id"]
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{32}", value):
            raise InvalidKeyError(f"pin file {where!r}: 'file_id' must be 32 lower-case hex digits")
        options["expect_file_id"] = bytes.fromhex(value)
    return options


def verification_options(*, signer=None, pin=None, min_generation: int | None = None,
                         expect_file_id=None) -> dict:
    """Merge explicit options with a pin file's (explicit ones win; signers add up)."""
    options: dict = {}
    if pin is not None:
        options.update(read_pin_file(pin))
    if signer is not None:
        options["signer"] = as_verifying_keys(signer) + list(options.get("signer", []))
    if min_generation is not None:
        options["min_generation"] = min_generation
    if expect_file_id is not None:
        options["expect_file_id"] = expect_file_id
    return options
