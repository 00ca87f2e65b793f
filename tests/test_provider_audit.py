"""The audit trail: provider events as JSON lines, no key material, a hash chain that shows edits."""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealtensors.errors import KeyProviderError
from sealtensors.keys import audit
from sealtensors.keys.provider import BINDING_LABEL, KeyProvider

FILE_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
BINDING = BINDING_LABEL + FILE_ID


class _GcmProvider(KeyProvider):
    """A minimal provider defined here, so these tests need no service."""

    name = "audit-test"

    def __init__(self, kek: bytes, audit=None) -> None:
        self._kek = kek
        self.audit = audit

    def slot_hint(self) -> str:
        return "audit-test key=k1"

    def wrap(self, data_key, binding):
        nonce = os.urandom(12)
        return nonce + AESGCM(self._kek).encrypt(nonce, data_key, binding)

    def unwrap(self, payload, binding):
        try:
            return AESGCM(self._kek).decrypt(payload[:12], payload[12:], binding)
        except Exception:
            raise KeyProviderError("audit-test: payload refused") from None


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_provider_operations_are_recorded_without_key_material(tmp_path, monkeypatch):
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv(audit.ENV_VAR, str(log))
    kek, data_key = os.urandom(32), os.urandom(32)
    provider = _GcmProvider(kek)
    payload = provider.wrap(data_key, BINDING)
    assert provider.unwrap(payload, BINDING) == data_key
    with pytest.raises(KeyProviderError):
        provider.unwrap(payload, BINDING_LABEL + bytes(16))

    records = _lines(log)
    assert [(r["operation"], r["outcome"]) for r in records] == [
        ("wrap", "success"), ("unwrap", "success"), ("unwrap", "KeyProviderError")]
    for r in records:
        assert r["provider"] == "audit-test" and r["key"] == "audit-test key=k1"
        assert {"time", "host", "pid", "user", "prev"} <= set(r)
    assert records[0]["file_id"] == FILE_ID.hex()
    assert records[2]["detail"] == "audit-test: payload refused"
    raw = log.read_bytes()
    for secret in (kek, data_key):
        for form in (secret, secret.hex().encode(), secret.hex().upper().encode(),
                     base64.b64encode(secret), base64.b64encode(secret).rstrip(b"=")):
            assert form not in raw
    assert audit.verify(log).ok


def test_audit_callable_receives_the_record_and_no_file_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv(audit.ENV_VAR, str(tmp_path / "unused.jsonl"))
    seen = []
    provider = _GcmProvider(os.urandom(32), audit=seen.append)
    provider.wrap(os.urandom(32), BINDING)
    assert len(seen) == 1 and seen[0]["operation"] == "wrap" and seen[0]["file_id"] == FILE_ID.hex()
    assert not (tmp_path / "unused.jsonl").exists()


def test_no_log_without_a_sink(tmp_path, monkeypatch):
    monkeypatch.delenv(audit.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    entry = audit.record({"operation": "open", "outcome": "success"})
    assert entry["operation"] == "open"
    assert list(tmp_path.iterdir()) == []


def test_record_refuses_bytes_values(tmp_path):
    with pytest.raises(TypeError, match="never record key material"):
        audit.record({"operation": "wrap", "key": os.urandom(32)}, sink=tmp_path / "a.jsonl")
    assert not (tmp_path / "a.jsonl").exists()


def test_records_also_go_to_the_logger(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="sealtensors.audit"):
        audit.record({"operation": "verify", "file_id": "ab", "outcome": "success"},
                     sink=tmp_path / "a.jsonl")
    (message,) = [r.getMessage() for r in caplog.records if r.name == "sealtensors.audit"]
    assert json.loads(message)["operation"] == "verify"


def _write_chain(path, count):
    for i in range(count):
        audit.record({"operation": "open", "seq": i, "outcome": "success"}, sink=path)


def test_chain_detects_edited_deleted_inserted_and_swapped_lines(tmp_path):
    log = tmp_path / "audit.jsonl"
    _write_chain(log, 6)
    assert audit.verify(log) == audit.VerifyResult(True, 6)
    good = log.read_text().splitlines(keepends=True)

    edited = list(good)
    edited[2] = edited[2].replace('"outcome":"success"', '"outcome":"denied"')
    log.write_text("".join(edited))
    assert audit.verify(log).line == 4  # line 3 changed, so line 4's link to it breaks

    log.write_text("".join(good[:2] + good[3:]))  # delete line 3
    assert audit.verify(log).line == 3

    log.write_text("".join(good[:3] + [good[0]] + good[3:]))  # insert a copy
    assert audit.verify(log).line == 4

    log.write_text("".join(good[:2] + [good[3], good[2]] + good[4:]))  # swap lines 3 and 4
    result = audit.verify(log)
    assert not result.ok and result.line == 3 and "chain broken" in result.reason

    log.write_text("".join(good[1:]))  # the first line removed
    assert audit.verify(log).line == 1

    log.write_text("".join(good)[:-1])
    assert audit.verify(log).reason == "last line is not terminated"


def _worker(path, count):
    _write_chain(path, count)


def test_concurrent_processes_keep_one_valid_chain(tmp_path):
    log = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_worker, args=(str(log), 50)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    result = audit.verify(log)
    assert result == audit.VerifyResult(True, 200)
    assert len({r["pid"] for r in _lines(log)}) == 4
