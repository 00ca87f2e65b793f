"""The one exception hierarchy of sealtensors.

Every error raised on purpose by the library is a :class:`SealError`. Where a builtin fits as well
(bad values are ``ValueError``, I/O trouble is ``OSError``), the class inherits it too, so callers that
already catch the builtin keep working.
"""

from __future__ import annotations


class SealError(Exception):
    """Base class of every sealtensors error."""


class FormatError(SealError, ValueError):
    """The input is not a well-formed sealed file (bad magic, impossible sizes, malformed index)."""


class UnsupportedFormatError(FormatError):
    """A well-formed preamble names a format version or cipher suite this build does not know."""


class IntegrityError(SealError, ValueError):
    """Authentication failed: the data was modified, truncated, extended, reordered or spliced.

    ``chunk_index`` is the lowest failing chunk of the chunked message when the failure is in a chunk,
    and ``None`` when it was found before any chunk was decrypted (header MAC, commitment, lengths).
    Any destination buffer the failing call was writing to has been wiped.
    """

    def __init__(self, message: str, chunk_index: int | None = None) -> None:
        super().__init__(message)
        self.chunk_index = chunk_index


class CommitmentError(IntegrityError):
    """The key commitment of a chunked message did not match.

    The key, the context or the message's salt/commitment is wrong; nothing was decrypted.
    """


class SignatureError(IntegrityError):
    """The file is not signed by an accepted publisher, or its content does not match what the
    publisher signed (a data chunk, the index, the file id), or it is older than a pinned
    generation. Raised only when the caller asked for a signer or a pin.
    """


class WrongKeyError(SealError, ValueError):
    """None of the given keys can open the file (no key slot belongs to them)."""


class PolicyError(SealError, PermissionError):
    """The application's open policy (``sealtensors.set_policy``) refused to open the file."""


class KeyProviderError(SealError, RuntimeError):
    """A key provider (KMS, HSM, TPM, plug-in) could not wrap or unwrap a data key: access
    denied, key disabled, token absent, policy (PCR) mismatch, network failure. The message is one
    line naming the provider and the cause; it never contains key material."""


class RecipientError(SealError, ValueError):
    """A rewrap request does not match the file: removing a recipient it does not have, or adding
    one it already has."""


class InvalidKeyError(SealError, ValueError):
    """A key is malformed: not 32 bytes, or an unreadable key file."""


class BackendError(SealError, RuntimeError):
    """The requested backend or AES provider is unavailable or misconfigured."""


__all__ = [
    "SealError",
    "FormatError",
    "UnsupportedFormatError",
    "IntegrityError",
    "CommitmentError",
    "SignatureError",
    "WrongKeyError",
    "RecipientError",
    "InvalidKeyError",
    "KeyProviderError",
    "PolicyError",
    "BackendError",
]
