"""PKCS#11 key provider (``pkcs11``): AES-256-GCM inside an HSM or token, the file binding as AAD.

The key-encryption key is an AES-256 secret key generated inside the token, sensitive and not
extractable; the data key is encrypted by the token (CKM_AES_GCM, 96-bit random IV, 128-bit tag,
AAD = binding). Payload (docs/PROVIDERS.md): ``0x01 || u8 len(label) || key label (UTF-8) ||
u8 len(id) || CKA_ID || IV (12) || ciphertext (32) || tag (16)``. Needs
``pip install 'sealtensors[pkcs11]'`` (python-pkcs11) and the token's PKCS#11 module.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path
from typing import Any

from ...errors import FormatError, KeyProviderError
from ..provider import KeyProvider

PAYLOAD_VERSION = 1
IV_BYTES = 12
TAG_BITS = 128
DEFAULT_PIN_ENV = "SEALTENSORS_PKCS11_PIN"
MODULE_ENV = "SEALTENSORS_PKCS11_MODULE"

# One loaded library per module path (PKCS#11 modules are process-wide), and one lock per module:
# the login state of a token is shared by all sessions of the process, so operations take turns.
_LIBS: dict[str, Any] = {}
_LOCKS: dict[str, threading.Lock] = {}
_LIBS_LOCK = threading.Lock()


def _import_pkcs11():
    try:
        import pkcs11
        import pkcs11.exceptions
        import pkcs11.mechanisms
    except ImportError as exc:
        raise KeyProviderError("pkcs11: python-pkcs11 is not installed; "
                               "install the extra: pip install 'sealtensors[pkcs11]'") from exc
    return pkcs11


def encode_payload(key_label: str, key_id: bytes, iv: bytes, sealed: bytes) -> bytes:
    label = key_label.encode("utf-8")
    return (struct.pack(">B", PAYLOAD_VERSION) + bytes([len(label)]) + label
            + bytes([len(key_id)]) + key_id + iv + sealed)


def decode_payload(payload: bytes) -> tuple[str, bytes, bytes, bytes]:
    """(key label, key id, IV, ciphertext || tag); FormatError when malformed."""
    if len(payload) < 2 or payload[0] != PAYLOAD_VERSION:
        raise FormatError("pkcs11 payload: unknown version or too short")
    at = 1
    label_len = payload[at]
    label = payload[at + 1:at + 1 + label_len]
    at += 1 + label_len
    if len(label) != label_len or at >= len(payload):
        raise FormatError("pkcs11 payload: truncated key label")
    id_len = payload[at]
    key_id = payload[at + 1:at + 1 + id_len]
    at += 1 + id_len
    iv = payload[at:at + IV_BYTES]
    sealed = payload[at + IV_BYTES:]
    if len(key_id) != id_len or len(iv) != IV_BYTES or len(sealed) != 32 + TAG_BITS // 8:
        raise FormatError("pkcs11 payload: wrong length")
    try:
        return label.decode("utf-8"), key_id, iv, sealed
    except UnicodeDecodeError:
        raise FormatError("pkcs11 payload: key label is not UTF-8") from None


class Pkcs11Provider(KeyProvider):
    """Wraps data keys with an AES-256 key held in a PKCS#11 token.

    ``module``: path of the PKCS#11 module (default ``$SEALTENSORS_PKCS11_MODULE``);
    ``token_label``: the token; ``key_label`` (and optionally ``key_id``, the CKA_ID) name the
    AES key in it. The user PIN comes from ``pin_file`` (a file holding the PIN; one trailing
    newline is ignored) or the environment variable ``pin_env`` (default
    ``SEALTENSORS_PKCS11_PIN``), never from the command line; ``pin`` exists for programs that
    hold it already. The PIN is read at each use and never shown by ``repr``.

    :meth:`generate_key` creates the key inside the token (sensitive, never extractable, usable
    only for encrypt/decrypt). Operations of one module are serialised (the token's login is
    shared by the whole process); each opens a session, logs in, works and closes it.
    """

    name = "pkcs11"

    def __init__(self, token_label: str, key_label: str, *, module: str | None = None,
                 key_id: bytes | None = None, pin_file: str | os.PathLike | None = None,
                 pin_env: str = DEFAULT_PIN_ENV, pin: str | None = None,
                 audit: Any = None) -> None:
        module = module if module is not None else os.environ.get(MODULE_ENV)
        if not module:
            raise ValueError(f"pkcs11: give module= or set {MODULE_ENV} to the PKCS#11 module path")
        if not token_label or not key_label or len(key_label.encode("utf-8")) > 255:
            raise ValueError("pkcs11: token_label and key_label (1..255 bytes) are required")
        if key_id is not None and not 1 <= len(key_id) <= 255:
            raise ValueError("pkcs11: key_id must be 1..255 bytes")
        self.module = str(module)
        self.token_label = token_label
        self.key_label = key_label
        self.key_id = bytes(key_id) if key_id is not None else None
        self._pin_file = None if pin_file is None else Path(pin_file)
        self._pin_env = pin_env
        self._pin = pin
        self.audit = audit

    def __repr__(self) -> str:
        return (f"Pkcs11Provider(token_label={self.token_label!r}, key_label={self.key_label!r}, "
                f"module={self.module!r})")

    def slot_hint(self) -> str:
        return f"{self.name} token={self.token_label} key={self.key_label}"

    # --- token access ----------------------------------------------------------------------------

    def _read_pin(self) -> str:
        if self._pin is not None:
            return self._pin
        if self._pin_file is not None:
            try:
                text = self._pin_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise KeyProviderError(f"pkcs11: cannot read the PIN file {str(self._pin_file)!r}: "
                                       f"{exc.strerror}") from None
            return text[:-1] if text.endswith("\n") else text
        value = os.environ.get(self._pin_env)
        if value is None:
            raise KeyProviderError(f"pkcs11: no PIN: set {self._pin_env} or give pin_file=")
        return value

    def _library(self):
        pkcs11 = _import_pkcs11()
        with _LIBS_LOCK:
            lib = _LIBS.get(self.module)
            if lib is None:
                if not os.path.exists(self.module):
                    raise KeyProviderError(f"pkcs11: module {self.module!r} does not exist")
                try:
                    lib = pkcs11.lib(self.module)
                except pkcs11.exceptions.PKCS11Error as exc:
                    raise KeyProviderError(f"pkcs11: cannot load module {self.module!r}: "
                                           f"{type(exc).__name__}: {exc}") from None
                _LIBS[self.module] = lib
                _LOCKS[self.module] = threading.Lock()
            return lib, _LOCKS[self.module]

    def _run(self, action: str, work):
        """Open a logged-in session on the token, run ``work(session)``, map token errors."""
        pkcs11 = _import_pkcs11()
        errors = pkcs11.exceptions
        lib, lock = self._library()
        pin = self._read_pin()
        with lock:
            try:
                token = lib.get_token(token_label=self.token_label)
            except errors.NoSuchToken:
                raise KeyProviderError(f"pkcs11: token {self.token_label!r} not present "
                                       f"(module {self.module})") from None
            except errors.MultipleTokensReturned:
                raise KeyProviderError(f"pkcs11: several tokens are labelled "
                                       f"{self.token_label!r}") from None
            try:
                with token.open(user_pin=pin, rw=True) as session:
                    return work(session, pkcs11)
            except KeyProviderError:
                raise
            except (errors.PinIncorrect, errors.PinInvalid, errors.PinLenRange):
                raise KeyProviderError(f"pkcs11: wrong PIN for token {self.token_label!r}") from None
            except errors.PinLocked:
                raise KeyProviderError(f"pkcs11: the user PIN of token {self.token_label!r} "
                                       "is locked") from None
            except (errors.TokenNotPresent, errors.DeviceRemoved, errors.SlotIDInvalid,
                    errors.TokenNotRecognised, errors.SessionClosed, errors.SessionHandleInvalid):
                raise KeyProviderError(f"pkcs11: token {self.token_label!r} is absent or was "
                                       "removed") from None
            except errors.PKCS11Error as exc:
                raise KeyProviderError(f"pkcs11: {action} failed on token {self.token_label!r}: "
                                       f"{type(exc).__name__}") from None

    def _find_key(self, session, pkcs11, key_label: str, key_id: bytes | None):
        query: dict[Any, Any] = {pkcs11.Attribute.LABEL: key_label,
                                 pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                                 pkcs11.Attribute.KEY_TYPE: pkcs11.KeyType.AES}
        if key_id:
            query[pkcs11.Attribute.ID] = key_id
        found = list(session.get_objects(query))
        if len(found) > 1:
            raise KeyProviderError(f"pkcs11: several AES keys labelled {key_label!r} in token "
                                   f"{self.token_label!r}; give key_id=")
        return found[0] if found else None

    # --- key management --------------------------------------------------------------------------

    def generate_key(self) -> None:
        """Create the AES-256 key-encryption key inside the token: stored on the token, private,
        sensitive, not extractable, encrypt/decrypt only. Refuses if a key with this label exists."""

        def work(session, pkcs11):
            if self._find_key(session, pkcs11, self.key_label, self.key_id) is not None:
                raise KeyProviderError(f"pkcs11: token {self.token_label!r} already holds a key "
                                       f"labelled {self.key_label!r}")
            attr = pkcs11.Attribute
            template = {attr.TOKEN: True, attr.PRIVATE: True, attr.SENSITIVE: True,
                        attr.EXTRACTABLE: False, attr.ENCRYPT: True, attr.DECRYPT: True,
                        attr.WRAP: False, attr.UNWRAP: False, attr.SIGN: False,
                        attr.VERIFY: False, attr.DERIVE: False}
            session.generate_key(pkcs11.KeyType.AES, 256, label=self.key_label,
                                 id=self.key_id or b"", store=True, template=template)

        self._run("key generation", work)

    def key_attributes(self) -> dict[str, bool]:
        """The key's protection attributes as the token reports them (for checks and inspect)."""

        def work(session, pkcs11):
            key = self._find_key(session, pkcs11, self.key_label, self.key_id)
            if key is None:
                raise KeyProviderError(f"pkcs11: no AES key labelled {self.key_label!r} in token "
                                       f"{self.token_label!r}")
            attr = pkcs11.Attribute
            return {name.lower(): bool(key[getattr(attr, name)])
                    for name in ("SENSITIVE", "EXTRACTABLE", "ALWAYS_SENSITIVE",
                                 "NEVER_EXTRACTABLE", "TOKEN", "PRIVATE")}

        return self._run("reading key attributes", work)

    # --- the provider interface ------------------------------------------------------------------

    def wrap(self, data_key: bytes, binding: bytes) -> bytes:
        def work(session, pkcs11):
            key = self._find_key(session, pkcs11, self.key_label, self.key_id)
            if key is None:
                raise KeyProviderError(f"pkcs11: no AES key labelled {self.key_label!r} in token "
                                       f"{self.token_label!r}")
            iv = os.urandom(IV_BYTES)
            params = pkcs11.mechanisms.GCMParams(iv, binding, TAG_BITS)
            sealed = key.encrypt(data_key, mechanism=pkcs11.Mechanism.AES_GCM,
                                 mechanism_param=params)
            stored_id = key[pkcs11.Attribute.ID] or b""
            return encode_payload(self.key_label, bytes(stored_id), iv, bytes(sealed))

        return self._run("wrap", work)

    def unwrap(self, payload: bytes, binding: bytes) -> bytes | None:
        key_label, key_id, iv, sealed = decode_payload(payload)
        if key_label != self.key_label or (self.key_id and key_id != self.key_id):
            return None  # made for another key

        def work(session, pkcs11):
            key = self._find_key(session, pkcs11, key_label, key_id)
            if key is None:
                return None  # this token does not hold the key the payload names
            params = pkcs11.mechanisms.GCMParams(iv, binding, TAG_BITS)
            try:
                data_key = key.decrypt(sealed, mechanism=pkcs11.Mechanism.AES_GCM,
                                       mechanism_param=params)
            except (pkcs11.exceptions.EncryptedDataInvalid, pkcs11.exceptions.GeneralError,
                    pkcs11.exceptions.FunctionFailed, pkcs11.exceptions.EncryptedDataLenRange):
                # SoftHSM reports a GCM tag mismatch as CKR_GENERAL_ERROR, others as
                # CKR_ENCRYPTED_DATA_INVALID: either way the token refused.
                raise KeyProviderError(f"pkcs11: token {self.token_label!r} refused the payload: "
                                       "file binding does not match or the payload was altered "
                                       "(or another token's key has the same label)") from None
            return bytes(data_key)

        return self._run("unwrap", work)
