"""The AWS KMS provider against moto's KMS server (a real HTTP endpoint on loopback)."""

from __future__ import annotations

import os
import sys

import pytest
from service_process import ServiceProcess, free_port

from sealtensors.errors import FormatError, KeyProviderError
from sealtensors.keys import audit
from sealtensors.keys.provider import BINDING_LABEL, provider_class

try:
    import boto3
    import moto.server  # noqa: F401 - the server module the fixture runs
except ImportError as exc:  # CI installs them: a missing one is a failure, not a skip
    raise ImportError(f"the KMS provider tests need boto3 and moto[server] ({exc}); "
                      "install the 'test' and 'kms' extras") from exc

FILE_ID = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
BINDING = BINDING_LABEL + FILE_ID
OTHER_BINDING = BINDING_LABEL + bytes(16)
SECRET_ACCESS_KEY = "moto-test-secret-do-not-print"


class MotoServer:
    """``python -m moto.server`` on a free loopback port, as a child process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._service = ServiceProcess(
            "moto server", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                            str(self.port)], self.port)

    def stop(self) -> None:
        self._service.stop()


@pytest.fixture(scope="module")
def moto_server():
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


_SESSIONS: list = []


def _session():
    """One boto3 session for the module: each new session reloads the service models (~0.5 s)."""
    if not _SESSIONS:
        _SESSIONS.append(boto3.session.Session(aws_access_key_id="testing",
                                               aws_secret_access_key=SECRET_ACCESS_KEY,
                                               region_name="us-east-1"))
    return _SESSIONS[0]


@pytest.fixture
def kms(moto_server):
    return _session().client("kms", endpoint_url=moto_server.url)


def _provider(key_id: str, url: str, **kwargs):
    return provider_class("aws-kms")(key_id, region="us-east-1", endpoint_url=url,
                                     session=_session(), **kwargs)


def test_round_trip_binds_the_file_id_in_the_encryption_context(kms, moto_server):
    key = kms.create_key(Description="sealtensors test")["KeyMetadata"]
    provider = _provider(key["KeyId"], moto_server.url)
    data_key = os.urandom(32)
    payload = provider.wrap(data_key, BINDING)
    assert data_key not in payload
    assert provider.unwrap(payload, BINDING) == data_key

    # The blob in the payload is KMS's own, opening only with the context naming the file id.
    arn_length = int.from_bytes(payload[1:3], "big")
    assert payload[3:3 + arn_length].decode() == key["Arn"]
    blob = payload[3 + arn_length:]
    opened = kms.decrypt(CiphertextBlob=blob, EncryptionContext={
        "sealtensors:binding": BINDING.hex(), "sealtensors:file-id": FILE_ID.hex()})
    assert opened["Plaintext"] == data_key
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=blob)


def test_alias_names_the_key_too(kms, moto_server):
    key = kms.create_key()["KeyMetadata"]
    alias = f"alias/sealtensors-{os.urandom(4).hex()}"
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    provider = _provider(alias, moto_server.url)
    data_key = os.urandom(32)
    assert provider.unwrap(provider.wrap(data_key, BINDING), BINDING) == data_key


def test_wrong_binding_is_refused(kms, moto_server):
    provider = _provider(kms.create_key()["KeyMetadata"]["Arn"], moto_server.url)
    payload = provider.wrap(os.urandom(32), BINDING)
    with pytest.raises(KeyProviderError, match="encryption context .file binding. does not match"):
        provider.unwrap(payload, OTHER_BINDING)


def test_disabled_key_gives_a_clear_one_line_error(kms, moto_server):
    key = kms.create_key()["KeyMetadata"]
    provider = _provider(key["Arn"], moto_server.url)
    payload = provider.wrap(os.urandom(32), BINDING)
    kms.disable_key(KeyId=key["KeyId"])
    with pytest.raises(KeyProviderError) as info:
        provider.unwrap(payload, BINDING)
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"aws-kms: key {key['Arn']} is Disabled, not Enabled (key disabled): "
                       "enable it or use another slot")
    with pytest.raises(KeyProviderError, match="is Disabled"):
        provider.wrap(os.urandom(32), BINDING)
    kms.enable_key(KeyId=key["KeyId"])
    assert len(provider.unwrap(payload, BINDING)) == 32


def test_key_pending_deletion_is_refused(kms, moto_server):
    key = kms.create_key()["KeyMetadata"]
    provider = _provider(key["Arn"], moto_server.url)
    payload = provider.wrap(os.urandom(32), BINDING)
    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    with pytest.raises(KeyProviderError, match="is PendingDeletion, not Enabled"):
        provider.unwrap(payload, BINDING)


def test_payload_of_another_key_is_not_this_providers(kms, moto_server):
    mine = _provider(kms.create_key()["KeyMetadata"]["Arn"], moto_server.url)
    theirs = _provider(kms.create_key()["KeyMetadata"]["Arn"], moto_server.url)
    payload = theirs.wrap(os.urandom(32), BINDING)
    assert mine.unwrap(payload, BINDING) is None


def test_payload_claiming_this_key_but_made_by_another_is_refused(kms, moto_server):
    mine_arn = kms.create_key()["KeyMetadata"]["Arn"]
    theirs = _provider(kms.create_key()["KeyMetadata"]["Arn"], moto_server.url)
    payload = theirs.wrap(os.urandom(32), BINDING)
    arn_length = int.from_bytes(payload[1:3], "big")
    forged = (payload[:1] + len(mine_arn).to_bytes(2, "big") + mine_arn.encode()
              + payload[3 + arn_length:])
    with pytest.raises(KeyProviderError, match="access denied"):
        _provider(mine_arn, moto_server.url).unwrap(forged, BINDING)


def test_unknown_key_and_malformed_payloads(kms, moto_server):
    missing = _provider("arn:aws:kms:us-east-1:123456789012:key/"
                        "00000000-0000-0000-0000-000000000000", moto_server.url)
    with pytest.raises(KeyProviderError, match="not found"):
        missing.wrap(os.urandom(32), BINDING)
    provider = _provider(kms.create_key()["KeyMetadata"]["Arn"], moto_server.url)
    payload = provider.wrap(os.urandom(32), BINDING)
    with pytest.raises(FormatError, match="aws-kms payload"):
        provider.unwrap(b"\x02" + payload[1:], BINDING)
    with pytest.raises(FormatError, match="truncated"):
        provider.unwrap(payload[:10], BINDING)
    tampered = payload[:-5] + bytes([payload[-5] ^ 1]) + payload[-4:]
    with pytest.raises(KeyProviderError, match="refused the payload"):
        provider.unwrap(tampered, BINDING)


def test_unreachable_endpoint_names_the_endpoint():
    server = MotoServer()
    try:
        kms = _session().client("kms", endpoint_url=server.url)
        provider = _provider(kms.create_key()["KeyMetadata"]["Arn"], server.url, max_attempts=1)
        payload = provider.wrap(os.urandom(32), BINDING)
    finally:
        server.stop()
    with pytest.raises(KeyProviderError) as info:
        provider.unwrap(payload, BINDING)
    assert str(info.value).startswith(f"aws-kms: cannot reach KMS endpoint {server.url}")
    assert "\n" not in str(info.value)


def test_repr_and_audit_hold_no_secrets(kms, moto_server, tmp_path, monkeypatch):
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv(audit.ENV_VAR, str(log))
    key = kms.create_key()["KeyMetadata"]
    provider = _provider(key["Arn"], moto_server.url)
    data_key = os.urandom(32)
    payload = provider.wrap(data_key, BINDING)
    provider.unwrap(payload, BINDING)
    kms.disable_key(KeyId=key["KeyId"])
    with pytest.raises(KeyProviderError):
        provider.unwrap(payload, BINDING)
    assert SECRET_ACCESS_KEY not in repr(provider)
    assert repr(provider).startswith("AwsKmsProvider(key_id=")
    text = log.read_text()
    assert [line.count('"operation"') for line in text.splitlines()] == [1, 1, 1]
    assert data_key.hex() not in text and SECRET_ACCESS_KEY not in text
    assert '"outcome":"KeyProviderError"' in text and FILE_ID.hex() in text
    assert audit.verify(log).ok
