"""AWS KMS key provider (``aws-kms``): the data key encrypted by a KMS key, bound by encryption context.

Payload (docs/PROVIDERS.md): ``0x01 || u16 len(arn) || key ARN (ASCII) || KMS CiphertextBlob``.
Wrap is ``kms:Encrypt`` and unwrap ``kms:Decrypt``, both with the encryption context
``{"sealtensors:binding": hex(binding), "sealtensors:file-id": hex(file id)}`` (the second entry
only when the binding carries the v2 label; it makes CloudTrail name the file). KMS refuses a
Decrypt whose context differs, so a payload copied into another file does not open there.
Needs ``pip install 'sealtensors[kms]'`` (boto3).
"""

from __future__ import annotations

import struct
from typing import Any

from ...errors import FormatError, KeyProviderError
from ..provider import BINDING_LABEL, KeyProvider

PAYLOAD_VERSION = 1
CONTEXT_BINDING = "sealtensors:binding"
CONTEXT_FILE_ID = "sealtensors:file-id"
# KMS error codes that mean "this key may not be used now" vs "you may not use it".
_KEY_STATE_CODES = {"DisabledException", "KMSInvalidStateException", "KeyUnavailableException"}
_DENIED_CODES = {"AccessDeniedException", "UnrecognizedClientException",
                 "InvalidSignatureException", "ExpiredTokenException"}


class _KmsRefusal(KeyProviderError):
    """A KeyProviderError that remembers the KMS error code, for the callers that branch on it."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _import_boto3():
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError as exc:
        raise KeyProviderError("aws-kms: boto3 is not installed; "
                               "install the extra: pip install 'sealtensors[kms]'") from exc
    return boto3, botocore


def encryption_context(binding: bytes) -> dict[str, str]:
    """The KMS encryption context for ``binding`` (what CloudTrail shows for each use)."""
    context = {CONTEXT_BINDING: binding.hex()}
    if binding.startswith(BINDING_LABEL):
        context[CONTEXT_FILE_ID] = binding[len(BINDING_LABEL):].hex()
    return context


def encode_payload(key_arn: str, blob: bytes) -> bytes:
    arn = key_arn.encode("ascii")
    return struct.pack(">BH", PAYLOAD_VERSION, len(arn)) + arn + blob


def decode_payload(payload: bytes) -> tuple[str, bytes]:
    """(key ARN, CiphertextBlob); FormatError when malformed."""
    if len(payload) < 3 or payload[0] != PAYLOAD_VERSION:
        raise FormatError("aws-kms payload: unknown version or too short")
    (length,) = struct.unpack_from(">H", payload, 1)
    arn = payload[3:3 + length]
    blob = payload[3 + length:]
    if len(arn) != length or not arn or not blob:
        raise FormatError("aws-kms payload: truncated")
    try:
        return arn.decode("ascii"), blob
    except UnicodeDecodeError:
        raise FormatError("aws-kms payload: key ARN is not ASCII") from None


class AwsKmsProvider(KeyProvider):
    """Wraps data keys with a symmetric AWS KMS key.

    ``key_id``: key id, key ARN, alias name or alias ARN (an ARN is best: it also names the
    region). ``region``, ``endpoint_url`` (e.g. a VPC endpoint, or a test server), ``session``
    (a ``boto3.Session``; default: the standard credential chain) or ``client`` (a ready KMS
    client, which overrides the three). ``connect_timeout``/``read_timeout`` in seconds and
    ``max_attempts`` bound how long an unreachable endpoint can stall an open.

    Before each use the provider asks ``kms:DescribeKey`` for the key's ARN and state, so a
    disabled or deleted key gives a clear error, and a payload made by another key is answered
    with None without a Decrypt call; without DescribeKey permission it goes straight to
    Encrypt/Decrypt. Thread-safe as boto3 clients are.
    """

    name = "aws-kms"

    def __init__(self, key_id: str, *, region: str | None = None,
                 endpoint_url: str | None = None, session: Any = None, client: Any = None,
                 connect_timeout: float = 5.0, read_timeout: float = 15.0,
                 max_attempts: int = 3, audit: Any = None) -> None:
        if not isinstance(key_id, str) or not key_id:
            raise ValueError("aws-kms: key_id must be a non-empty key id, ARN or alias")
        self.key_id = key_id
        self.region = region
        self.endpoint_url = endpoint_url
        self.audit = audit
        if client is None:
            boto3, botocore = _import_boto3()
            config = botocore.config.Config(
                connect_timeout=connect_timeout, read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"})
            maker = session if session is not None else boto3.session.Session()
            client = maker.client("kms", region_name=region, endpoint_url=endpoint_url,
                                  config=config)
        self._client = client

    def __repr__(self) -> str:
        return (f"AwsKmsProvider(key_id={self.key_id!r}, region={self.region!r}, "
                f"endpoint_url={self.endpoint_url!r})")

    def slot_hint(self) -> str:
        return f"{self.name} {self.key_id}"

    # --- KMS calls with error mapping ------------------------------------------------------------

    def _where(self) -> str:
        return self._client.meta.endpoint_url

    def _call(self, operation: str, **kwargs: Any) -> dict:
        _, botocore = _import_boto3()
        try:
            return getattr(self._client, operation)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "Unknown")
            message = (error.get("Message") or "").splitlines()[0:1]
            detail = f"{code}" + (f": {message[0]}" if message and message[0] else "")
            if code in _KEY_STATE_CODES:
                message = (f"aws-kms: key {self.key_id} cannot be used now "
                           f"(key disabled or unavailable): {detail}")
            elif code in _DENIED_CODES:
                message = f"aws-kms: access denied for key {self.key_id}: {detail}"
            elif code == "InvalidCiphertextException":
                message = (f"aws-kms: KMS refused the payload for key {self.key_id}: encryption "
                           "context (file binding) does not match or the payload was altered")
            elif code == "NotFoundException":
                message = f"aws-kms: key {self.key_id} not found: {detail}"
            else:
                message = f"aws-kms: {operation} failed for key {self.key_id}: {detail}"
            raise _KmsRefusal(message, code) from None
        except botocore.exceptions.NoCredentialsError:
            raise KeyProviderError("aws-kms: no AWS credentials found "
                                   "(environment, profile or instance role)") from None
        except (botocore.exceptions.EndpointConnectionError,
                botocore.exceptions.ConnectTimeoutError,
                botocore.exceptions.ReadTimeoutError,
                botocore.exceptions.ConnectionClosedError) as exc:
            raise KeyProviderError(f"aws-kms: cannot reach KMS endpoint {self._where()}: "
                                   f"{type(exc).__name__}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise KeyProviderError(f"aws-kms: {operation} failed: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''}") from None

    def _usable_key_arn(self) -> str | None:
        """The key's ARN after checking it is enabled; None when DescribeKey is not allowed."""
        try:
            metadata = self._call("describe_key", KeyId=self.key_id)["KeyMetadata"]
        except _KmsRefusal as exc:
            if exc.code in _DENIED_CODES:
                return None  # least-privilege roles may only hold Encrypt/Decrypt
            raise
        state = metadata.get("KeyState", "Enabled")
        if state != "Enabled" or metadata.get("Enabled") is False:
            raise KeyProviderError(f"aws-kms: key {self.key_id} is {state}, not Enabled "
                                   "(key disabled): enable it or use another slot")
        return metadata["Arn"]

    # --- the provider interface ------------------------------------------------------------------

    def wrap(self, data_key: bytes, binding: bytes) -> bytes:
        self._usable_key_arn()
        response = self._call("encrypt", KeyId=self.key_id, Plaintext=data_key,
                              EncryptionContext=encryption_context(binding))
        return encode_payload(response["KeyId"], response["CiphertextBlob"])

    def unwrap(self, payload: bytes, binding: bytes) -> bytes | None:
        payload_arn, blob = decode_payload(payload)
        key_arn = self._usable_key_arn()
        if key_arn is not None and key_arn != payload_arn:
            return None  # made by another KMS key: not this provider's slot
        try:
            response = self._call("decrypt", KeyId=self.key_id, CiphertextBlob=blob,
                                  EncryptionContext=encryption_context(binding))
        except _KmsRefusal as exc:
            if exc.code == "IncorrectKeyException":
                return None
            raise
        return bytes(response["Plaintext"])
