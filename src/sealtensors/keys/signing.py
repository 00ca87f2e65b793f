"""Publisher signing keys: hybrid Ed25519 + ML-DSA-65 (FIPS 204), both required to verify.

A signing key is two 32-byte seeds (Ed25519, ML-DSA-65); its public *verifying key* is the Ed25519
public key (32 bytes) followed by the ML-DSA-65 public key (1952 bytes). Text forms:
``ST-SIGN-SECRET:...`` and ``st-sign:...`` (keys/textcodec.py). A signature is the Ed25519
signature (64 bytes, RFC 8032 pure Ed25519) and the ML-DSA-65 signature (3309 bytes, context
string "sealtensors/v2/signature") of the same statement bytes. All primitives are pycryptodome's.
"""

from __future__ import annotations

import hmac
import os
import secrets

from Crypto.PublicKey import ECC, MLDSA
from Crypto.Signature import eddsa, mldsa

from ..errors import InvalidKeyError, SignatureError
from . import textcodec

ED25519_PUBLIC_SIZE = 32
MLDSA_PUBLIC_SIZE = 1952
ED25519_SIGNATURE_SIZE = 64
MLDSA_SIGNATURE_SIZE = 3309
PUBLIC_SIZE = ED25519_PUBLIC_SIZE + MLDSA_PUBLIC_SIZE
SIGNATURE_SIZE = ED25519_SIGNATURE_SIZE + MLDSA_SIGNATURE_SIZE
MLDSA_CONTEXT = b"sealtensors/v2/signature"
PUBLIC_TAG = "st-sign"
SECRET_TAG = "ST-SIGN-SECRET"


class VerifyingKey:
    """A publisher's public key; ``VerifyingKey.parse("st-sign:...")``."""

    def __init__(self, public: bytes) -> None:
        public = bytes(public)
        if len(public) != PUBLIC_SIZE:
            raise InvalidKeyError(f"a verifying key is {PUBLIC_SIZE} bytes")
        self.public = public
        try:
            self._ed = eddsa.import_public_key(public[:ED25519_PUBLIC_SIZE])
            self._ml = MLDSA.construct(param_set=MLDSA.ML_DSA_65, pk=public[ED25519_PUBLIC_SIZE:])
        except (ValueError, TypeError) as exc:
            raise InvalidKeyError(f"invalid verifying key: {exc}") from None

    @classmethod
    def parse(cls, text: str) -> "VerifyingKey":
        return cls(textcodec.decode(text, (PUBLIC_TAG,))[1])

    def text(self) -> str:
        return textcodec.encode(PUBLIC_TAG, self.public)

    def verify(self, statement: bytes, signature: bytes) -> None:
        """SignatureError unless both signatures over ``statement`` verify under this key."""
        if len(signature) != SIGNATURE_SIZE:
            raise SignatureError("signature has the wrong size")
        ed_sig, ml_sig = signature[:ED25519_SIGNATURE_SIZE], signature[ED25519_SIGNATURE_SIZE:]
        try:
            eddsa.new(self._ed, "rfc8032").verify(statement, ed_sig)
        except ValueError:
            raise SignatureError("the Ed25519 signature does not verify") from None
        try:
            mldsa.new(self._ml, context=MLDSA_CONTEXT).verify(statement, ml_sig)
        except ValueError:
            raise SignatureError("the ML-DSA-65 signature does not verify") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, VerifyingKey) and hmac.compare_digest(self.public, other.public)

    def __hash__(self) -> int:
        return hash(self.public)

    def __repr__(self) -> str:
        return f"<VerifyingKey {self.text()[:24]}...>"


class SigningKey:
    """A publisher's secret signing key. ``repr`` shows only the public half."""

    def __init__(self, seeds: bytes) -> None:
        seeds = bytes(seeds)
        if len(seeds) != 64:
            raise InvalidKeyError("a signing key is 64 bytes (two seeds)")
        self._seeds = seeds
        self._ed = ECC.construct(curve="Ed25519", seed=seeds[:32])
        self._ml = MLDSA.construct(param_set=MLDSA.ML_DSA_65, seed=seeds[32:])
        public = self._ed.public_key().export_key(format="raw") + self._ml.public_key().pk
        self.verifying_key = VerifyingKey(public)

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(secrets.token_bytes(64))

    @classmethod
    def load(cls, path) -> "SigningKey":
        from .keyfile import read_secret_text

        return cls(textcodec.decode(read_secret_text(path), (SECRET_TAG,))[1])

    def text(self) -> str:
        return textcodec.encode(SECRET_TAG, self._seeds)

    def sign(self, statement: bytes) -> bytes:
        ed_sig = eddsa.new(self._ed, "rfc8032").sign(statement)
        ml_sig = mldsa.new(self._ml, context=MLDSA_CONTEXT).sign(statement)
        return ed_sig + ml_sig

    def __repr__(self) -> str:
        return f"<SigningKey for {self.verifying_key.text()[:24]}...>"


def as_verifying_keys(signer) -> list[VerifyingKey]:
    """``signer``: a VerifyingKey, an ``st-sign:`` string, a path to a file of them (one per line,
    '#' comments; a trust file), a SigningKey, or a list of these."""
    if signer is None:
        return []
    if isinstance(signer, VerifyingKey):
        return [signer]
    if isinstance(signer, SigningKey):
        return [signer.verifying_key]
    if isinstance(signer, str) and textcodec.tag_of(signer.strip()) == PUBLIC_TAG:
        return [VerifyingKey.parse(signer)]
    if isinstance(signer, (str, os.PathLike)):
        return read_trust_file(signer)
    if isinstance(signer, (list, tuple, set, frozenset)):
        keys = [key for item in signer for key in as_verifying_keys(item)]
        if not keys:
            raise InvalidKeyError("the list of accepted signers is empty")
        return keys
    raise InvalidKeyError(f"a signer must be an st-sign: string, a VerifyingKey or a trust file path, "
                          f"not {type(signer).__name__}")


def read_trust_file(path) -> list[VerifyingKey]:
    """Accepted signers, one ``st-sign:`` string per line; blank lines and '#' comments ignored."""
    from .keyfile import read_key_list

    return read_key_list(path, "trust file", VerifyingKey.parse, limit=1 << 20)
