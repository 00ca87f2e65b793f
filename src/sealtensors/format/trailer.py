"""The signature trailer: a publisher's signed statement about one sealed file, and the digest of every data chunk.

Layout (docs/FORMAT.md section 7a)::

    statement (264 bytes) || verifying key (1984) || signature (3373) || chunk digests (32 per chunk)

The statement binds the file id, a publisher-chosen generation, the exact index and data messages
(the index message's SHA-512, the data message's salt and commitment, the SHA-512 of the chunk
digest table) — all ciphertext, so anyone can check a signature without a key, and a holder of the
data key cannot change one byte of content without the publisher's signing key.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from dataclasses import dataclass, field

from ..crypto import chunked
from ..errors import FormatError, SignatureError
from ..keys.signing import PUBLIC_SIZE, SIGNATURE_SIZE, SigningKey, VerifyingKey

STATEMENT_LABEL = b"sealtensors/v2/signed-statement\x00"
STATEMENT = struct.Struct("<32s16sQQQQ64s56s64s")
STATEMENT_SIZE = STATEMENT.size  # 264
DIGEST_SIZE = 32
FIXED_SIZE = STATEMENT_SIZE + PUBLIC_SIZE + SIGNATURE_SIZE
MAX_GENERATION = 2**63 - 1

assert len(STATEMENT_LABEL) == 32 and STATEMENT_SIZE == 264


def trailer_length(data_message_length: int) -> int:
    return FIXED_SIZE + DIGEST_SIZE * chunked.chunk_count(chunked.plaintext_length(data_message_length))


def check_trailer_length(length: int, data_message_length: int) -> None:
    """FormatError unless ``length`` is 0 (unsigned) or exactly what a signature of this data
    message takes."""
    if length and length != trailer_length(data_message_length):
        raise FormatError(f"signature trailer length {length} does not match the data message "
                          f"(expected 0 or {trailer_length(data_message_length)})")


@dataclass(frozen=True)
class Statement:
    file_id: bytes
    generation: int
    signed_at: int
    index_length: int
    data_length: int
    index_digest: bytes
    data_header: bytes
    table_digest: bytes

    def to_bytes(self) -> bytes:
        return STATEMENT.pack(STATEMENT_LABEL, self.file_id, self.generation, self.signed_at,
                              self.index_length, self.data_length, self.index_digest,
                              self.data_header, self.table_digest)

    @classmethod
    def parse(cls, raw: bytes) -> "Statement":
        label, *fields = STATEMENT.unpack(raw)
        # The trailer is only examined for a caller who asked for a signature: anything wrong in
        # it is a signature failure.
        if label != STATEMENT_LABEL:
            raise SignatureError("the signature trailer does not hold a sealtensors statement")
        statement = cls(*fields)
        if statement.generation > MAX_GENERATION:
            raise SignatureError("the signed generation is out of range")
        return statement


@dataclass(frozen=True)
class Signature:
    """A parsed trailer: the statement, who signed it, the signature and the digest table."""

    statement: Statement
    statement_bytes: bytes = field(repr=False)
    signer: VerifyingKey
    signature: bytes = field(repr=False)
    digests: bytes = field(repr=False)


def parse(trailer: bytes) -> Signature:
    if len(trailer) < FIXED_SIZE or (len(trailer) - FIXED_SIZE) % DIGEST_SIZE:
        raise FormatError("signature trailer has an impossible length")
    statement_bytes = bytes(trailer[:STATEMENT_SIZE])
    statement = Statement.parse(statement_bytes)
    position = STATEMENT_SIZE
    try:
        signer = VerifyingKey(trailer[position:position + PUBLIC_SIZE])
    except ValueError:
        raise SignatureError("the trailer's verifying key is malformed") from None
    position += PUBLIC_SIZE
    signature = bytes(trailer[position:position + SIGNATURE_SIZE])
    digests = bytes(trailer[position + SIGNATURE_SIZE:])
    return Signature(statement, statement_bytes, signer, signature, digests)


def build(signing_key: SigningKey, *, file_id: bytes, generation: int, index_message: bytes,
          data_header: bytes, data_length: int, digests: bytes) -> bytes:
    if not 0 <= generation <= MAX_GENERATION:
        raise ValueError(f"generation must be in 0..{MAX_GENERATION}")
    statement = Statement(file_id, generation, int(time.time()), len(index_message), data_length,
                          hashlib.sha512(index_message).digest(), bytes(data_header),
                          hashlib.sha512(digests).digest())
    raw = statement.to_bytes()
    return raw + signing_key.verifying_key.public + signing_key.sign(raw) + digests


def verify(signature: Signature, accepted: list[VerifyingKey], *, file_id: bytes,
           index_message: bytes, data_header: bytes, data_length: int, index_length: int,
           min_generation: int | None = None, expect_file_id: bytes | None = None) -> None:
    """SignatureError unless an accepted signer signed exactly this file (and pins hold)."""
    if not any(hmac.compare_digest(signature.signer.public, key.public) for key in accepted):
        raise SignatureError("the file is signed by a key that is not an accepted signer "
                             f"({signature.signer.text()[:40]}...)")
    signature.signer.verify(signature.statement_bytes, signature.signature)
    statement = signature.statement
    checks = (
        (statement.file_id, file_id, "file id"),
        (statement.index_digest, hashlib.sha512(index_message).digest(), "index"),
        (statement.data_header, bytes(data_header), "data message header"),
        (statement.table_digest, hashlib.sha512(signature.digests).digest(), "chunk digest table"),
    )
    for signed, actual, what in checks:
        if not hmac.compare_digest(signed, actual):
            raise SignatureError(f"the {what} is not the one the publisher signed")
    if statement.index_length != index_length or statement.data_length != data_length:
        raise SignatureError("the message lengths are not the ones the publisher signed")
    if expect_file_id is not None and not hmac.compare_digest(statement.file_id, expect_file_id):
        raise SignatureError(f"file id {statement.file_id.hex()} is not the pinned "
                             f"{expect_file_id.hex()}")
    if min_generation is not None and statement.generation < min_generation:
        raise SignatureError(f"generation {statement.generation} is older than the pinned minimum "
                             f"{min_generation} (a rollback?)")
