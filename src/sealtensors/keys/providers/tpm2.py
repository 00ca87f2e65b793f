"""TPM 2.0 key provider (``tpm2``): the data key sealed to this machine's TPM under a PCR policy.

The data key becomes the sensitive part of a sealed data object (KEYEDHASH, fixedTPM,
fixedParent, noDA) created under an ECC P-256 storage primary of the owner hierarchy. The object
opens only through a policy session satisfying TPM2_PolicyPCR (the chosen PCRs must hold the
values they had at sealing) AND TPM2_PolicyAuthValue, where the object's auth value is
SHA-256(binding): the TPM itself refuses a payload copied into another file. Payload layout in
docs/PROVIDERS.md. Needs ``pip install 'sealtensors[tpm]'`` (tpm2-pytss) and the tpm2-tss
libraries (Debian: libtss2-dev).
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

from ...errors import FormatError, KeyProviderError
from ..provider import KeyProvider

PAYLOAD_VERSION = 1
TCTI_ENV = "SEALTENSORS_TPM_TCTI"
DEFAULT_PCRS = (7,)  # secure-boot state on a UEFI machine
MAX_PCR = 23
_HEADER = struct.Struct(">BHI")  # version, PCR bank (TPM2_ALG_ID), PCR bitmap (bit i = PCR i)


def _import_tpm2():
    # tpm2-tss logs every TPM error response to stderr; this provider reports them itself.
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    try:
        import tpm2_pytss
        from tpm2_pytss import constants, types
    except ImportError as exc:
        raise KeyProviderError("tpm2: tpm2-pytss is not installed (or the tpm2-tss libraries are "
                               "missing); install the extra: pip install 'sealtensors[tpm]'") from exc
    return tpm2_pytss, constants, types


def _pack_blob(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def encode_payload(bank: int, pcrs: tuple[int, ...], primary_name: bytes, public: bytes,
                   private: bytes) -> bytes:
    bitmap = 0
    for pcr in pcrs:
        bitmap |= 1 << pcr
    return (_HEADER.pack(PAYLOAD_VERSION, bank, bitmap) + _pack_blob(primary_name)
            + _pack_blob(public) + _pack_blob(private))


def decode_payload(payload: bytes) -> tuple[int, tuple[int, ...], bytes, bytes, bytes]:
    """(PCR bank, PCRs, primary name, TPM2B_PUBLIC, TPM2B_PRIVATE); FormatError when malformed."""
    if len(payload) < _HEADER.size or payload[0] != PAYLOAD_VERSION:
        raise FormatError("tpm2 payload: unknown version or too short")
    _, bank, bitmap = _HEADER.unpack_from(payload)
    if bitmap >> (MAX_PCR + 1):
        raise FormatError("tpm2 payload: PCR index out of range")
    at = _HEADER.size
    blobs = []
    for what in ("primary name", "public area", "private area"):
        if at + 2 > len(payload):
            raise FormatError(f"tpm2 payload: truncated before the {what}")
        (length,) = struct.unpack_from(">H", payload, at)
        blob = payload[at + 2:at + 2 + length]
        if len(blob) != length or not length:
            raise FormatError(f"tpm2 payload: truncated {what}")
        blobs.append(blob)
        at += 2 + length
    if at != len(payload):
        raise FormatError("tpm2 payload: trailing bytes")
    pcrs = tuple(i for i in range(MAX_PCR + 1) if bitmap >> i & 1)
    return bank, pcrs, blobs[0], blobs[1], blobs[2]


def _tpm_code(rc: int) -> int:
    """The TPM response code without the handle/session/parameter number (TPM layer only)."""
    if rc >> 16:
        return -1  # not the TPM's own answer (TCTI, ESAPI, marshalling layers)
    return rc & 0xBF if rc & 0x80 else rc & 0xFFF


class Tpm2Provider(KeyProvider):
    """Seals data keys to a TPM 2.0 (this machine, these PCR values).

    ``tcti``: how to reach the TPM, as tpm2-tools spells it (``device:/dev/tpmrm0``,
    ``tabrmd:``, ``swtpm:host=127.0.0.1,port=2321``); default ``$SEALTENSORS_TPM_TCTI``, else
    the tpm2-tss default. ``pcrs``: the PCR indexes (0..23) whose current values the seal
    requires (default (7,): the secure-boot state; () seals without a PCR policy);
    ``pcr_bank``: ``"sha256"`` (default) or another bank the TPM has. The owner hierarchy must
    have an empty auth value (the default on most machines). Each call opens its own TPM
    connection, so instances can be shared by threads.
    """

    name = "tpm2"

    def __init__(self, *, tcti: str | None = None, pcrs: tuple[int, ...] | list[int] = DEFAULT_PCRS,
                 pcr_bank: str = "sha256", audit: Any = None) -> None:
        pcrs = tuple(sorted(set(int(p) for p in pcrs)))
        if any(not 0 <= p <= MAX_PCR for p in pcrs):
            raise ValueError(f"tpm2: PCR indexes must be 0..{MAX_PCR}")
        self.tcti = tcti if tcti is not None else os.environ.get(TCTI_ENV) or None
        self.pcrs = pcrs
        self.pcr_bank = pcr_bank
        self.audit = audit

    def __repr__(self) -> str:
        return f"Tpm2Provider(tcti={self.tcti!r}, pcrs={self.pcrs!r}, pcr_bank={self.pcr_bank!r})"

    def slot_hint(self) -> str:
        return f"{self.name} pcrs={self.pcr_bank}:{','.join(map(str, self.pcrs)) or 'none'}"

    # --- TPM plumbing ----------------------------------------------------------------------------

    def _connect(self):
        tpm2_pytss, _, _ = _import_tpm2()
        try:
            return tpm2_pytss.ESAPI(self.tcti)
        except Exception as exc:  # TCTI loading and connecting raise TSS2_Exception or OSError
            raise KeyProviderError(f"tpm2: cannot reach the TPM (tcti {self.tcti or 'default'}): "
                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                                   ) from None

    @staticmethod
    def _primary(esys, constants, types):
        """The owner hierarchy's ECC P-256 storage primary: derived from the owner seed, so the
        same on every call on this TPM and different on any other TPM."""
        template = types.TPM2B_PUBLIC.parse(
            "ecc256:aes128cfb",
            objectAttributes=constants.TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS,
            nameAlg="sha256")
        handle, *_ = esys.create_primary(None, template)
        return handle, bytes(esys.tr_get_name(handle))

    @staticmethod
    def _pcr_selection(types, bank: str, pcrs: tuple[int, ...]):
        if not pcrs:
            return None
        return types.TPML_PCR_SELECTION.parse(f"{bank}:{','.join(map(str, pcrs))}")

    def _policy(self, esys, constants, types, session, selection) -> None:
        if selection is not None:
            esys.policy_pcr(session, types.TPM2B_DIGEST(), selection)
        esys.policy_auth_value(session)

    def _tss_error(self, action: str, exc: Exception, pcrs_text: str) -> KeyProviderError:
        tpm2_pytss, constants, _ = _import_tpm2()
        rc = getattr(exc, "rc", None)
        if rc is None:
            return KeyProviderError(f"tpm2: {action} failed: {type(exc).__name__}")
        code = _tpm_code(int(rc))
        rcs = constants.TPM2_RC
        if code in (rcs.POLICY_FAIL, rcs.PCR_CHANGED):
            return KeyProviderError(f"tpm2: PCR mismatch: {pcrs_text} changed since the key was "
                                    "sealed (this machine is not in the authorised state)")
        if code in (rcs.BAD_AUTH, rcs.AUTH_FAIL):
            return KeyProviderError("tpm2: the TPM refused the payload: file binding does not "
                                    "match (payload copied from another file?)")
        if code == rcs.LOCKOUT:
            return KeyProviderError("tpm2: the TPM is in dictionary-attack lockout")
        if code in (rcs.INTEGRITY, rcs.SIZE, rcs.VALUE, rcs.KEY, rcs.ASYMMETRIC):
            return KeyProviderError(f"tpm2: {action}: the TPM rejected the sealed object "
                                    "(payload altered or made under another primary key)")
        first = str(exc).splitlines()[0] if str(exc) else hex(int(rc))
        return KeyProviderError(f"tpm2: {action} failed: {first}")

    def _session(self, esys, constants, kind, primary, attributes):
        """An auth session salted with the primary and AES-128-CFB parameter encryption, so the
        data key crosses the TPM bus (or the swtpm socket) encrypted."""
        session = esys.start_auth_session(primary, constants.ESYS_TR.NONE, kind, "aes128cfb",
                                          constants.TPM2_ALG.SHA256)
        esys.trsess_set_attributes(session, attributes | constants.TPMA_SESSION.CONTINUESESSION)
        return session

    # --- the provider interface ------------------------------------------------------------------

    def wrap(self, data_key: bytes, binding: bytes) -> bytes:
        tpm2_pytss, constants, types = _import_tpm2()
        pcrs_text = f"{self.pcr_bank}:{','.join(map(str, self.pcrs))}"
        bank = int(constants.TPM2_ALG.parse(self.pcr_bank))
        esys = self._connect()
        handles = []
        try:
            primary, primary_name = self._primary(esys, constants, types)
            handles.append(primary)
            trial = esys.start_auth_session(constants.ESYS_TR.NONE, constants.ESYS_TR.NONE,
                                            constants.TPM2_SE.TRIAL, None,
                                            constants.TPM2_ALG.SHA256)
            handles.append(trial)
            self._policy(esys, constants, types, trial,
                         self._pcr_selection(types, self.pcr_bank, self.pcrs))
            policy_digest = esys.policy_get_digest(trial)
            attrs = constants.TPMA_OBJECT
            template = types.TPMT_PUBLIC(
                type=constants.TPM2_ALG.KEYEDHASH, nameAlg=constants.TPM2_ALG.SHA256,
                objectAttributes=attrs.FIXEDTPM | attrs.FIXEDPARENT | attrs.NODA,
                authPolicy=policy_digest)
            template.parameters.keyedHashDetail.scheme.scheme = constants.TPM2_ALG.NULL
            sensitive = types.TPM2B_SENSITIVE_CREATE(types.TPMS_SENSITIVE_CREATE(
                userAuth=types.TPM2B_AUTH(hashlib.sha256(binding).digest()),
                data=types.TPM2B_SENSITIVE_DATA(data_key)))
            # The HMAC session encrypts the first command parameter: the data key.
            session = self._session(esys, constants, constants.TPM2_SE.HMAC, primary,
                                    constants.TPMA_SESSION.DECRYPT)
            handles.append(session)
            private, public, *_ = esys.create(primary, sensitive, types.TPM2B_PUBLIC(template),
                                              session1=session)
            return encode_payload(bank, self.pcrs, primary_name, public.marshal(),
                                  private.marshal())
        except KeyProviderError:
            raise
        except tpm2_pytss.TSS2_Exception as exc:
            raise self._tss_error("sealing", exc, pcrs_text) from None
        finally:
            self._close(esys, handles)

    def unwrap(self, payload: bytes, binding: bytes) -> bytes | None:
        tpm2_pytss, constants, types = _import_tpm2()
        bank, pcrs, primary_name, public_blob, private_blob = decode_payload(payload)
        try:
            bank_name = constants.TPM2_ALG.to_string(bank).rpartition(".")[2].lower()
            public, public_used = types.TPM2B_PUBLIC.unmarshal(public_blob)
            private, private_used = types.TPM2B_PRIVATE.unmarshal(private_blob)
        except Exception:
            raise FormatError("tpm2 payload: malformed PCR bank, public or private area") from None
        if public_used != len(public_blob) or private_used != len(private_blob):
            raise FormatError("tpm2 payload: trailing bytes in the public or private area")
        pcrs_text = f"{bank_name}:{','.join(map(str, pcrs))}"
        esys = self._connect()
        handles = []
        try:
            primary, name = self._primary(esys, constants, types)
            handles.append(primary)
            if name != primary_name:
                return None  # sealed by another TPM (or before the owner seed was cleared)
            sealed = esys.load(primary, private, public)
            handles.append(sealed)
            esys.tr_set_auth(sealed, hashlib.sha256(binding).digest())
            # The policy session encrypts the response parameter: the data key.
            session = self._session(esys, constants, constants.TPM2_SE.POLICY, primary,
                                    constants.TPMA_SESSION.ENCRYPT)
            handles.append(session)
            self._policy(esys, constants, types, session,
                         self._pcr_selection(types, bank_name, pcrs))
            return bytes(esys.unseal(sealed, session1=session))
        except KeyProviderError:
            raise
        except tpm2_pytss.TSS2_Exception as exc:
            raise self._tss_error("unsealing", exc, pcrs_text) from None
        finally:
            self._close(esys, handles)

    @staticmethod
    def _close(esys, handles) -> None:
        for handle in reversed(handles):
            try:
                esys.flush_context(handle)
            except Exception:  # best effort: closing the connection frees them in any case
                pass
        esys.close()
