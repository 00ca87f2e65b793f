"""Keys and who may open a file: recipients and identities of every slot type, key files, signing keys, providers."""

from __future__ import annotations

from .hpke import PublicKeyIdentity, PublicKeyRecipient
from .keyfile import (
    KeyFilePermissionWarning,
    as_identities,
    as_recipients,
    generate_key,
    key_id,
    load_identity,
    parse_recipient,
    read_key_file,
    read_recipients_file,
    write_key_file,
)
from .passphrase import Passphrase
from .provider import KeyProvider
from .signing import SigningKey, VerifyingKey
from .slots import Identity, Recipient
from .symmetric import SymmetricKey


def _recipient_parse(text: str) -> Recipient:
    """A recipient from its public string (``st-x25519:...`` or ``st-xwing:...``)."""
    return parse_recipient(text)


def _identity_load(path) -> Identity:
    """The identity in a key or identity file (``-`` is not accepted here; the CLI reads stdin)."""
    return load_identity(path)


# The public spelling of the issue: sealtensors.Recipient.parse(str), sealtensors.Identity.load(path).
Recipient.parse = staticmethod(_recipient_parse)
Identity.load = staticmethod(_identity_load)


def generate_identity(kind: str) -> Identity:
    """A fresh identity: ``"symmetric"``, ``"x25519"`` or ``"xwing"``."""
    from .slots import X25519, XWING

    if kind == "symmetric":
        return SymmetricKey(generate_key())
    if kind in ("x25519", "xwing"):
        return PublicKeyIdentity.generate(X25519 if kind == "x25519" else XWING)
    raise ValueError(f"unknown identity type {kind!r} (symmetric, x25519, xwing)")


def identity_text(identity: Identity) -> str:
    """The text of an identity file for ``identity`` (with a comment naming its public part)."""
    from .keyfile import format_key

    if isinstance(identity, SymmetricKey):
        return f"# sealtensors symmetric key, name {identity.name().hex()}\n" + format_key(identity.secret)
    if isinstance(identity, PublicKeyIdentity):
        return f"# recipient: {identity.recipient().text()}\n{identity.text()}\n"
    raise TypeError(f"{type(identity).__name__} has no identity file")


__all__ = [
    "Recipient", "Identity", "SymmetricKey", "PublicKeyRecipient", "PublicKeyIdentity", "Passphrase",
    "KeyProvider", "SigningKey", "VerifyingKey", "KeyFilePermissionWarning", "as_identities",
    "as_recipients", "generate_key", "generate_identity", "identity_text", "key_id", "load_identity",
    "parse_recipient", "read_key_file", "read_recipients_file", "write_key_file",
]
