"""File operations leave an audit trail when SEALTENSORS_AUDIT_LOG is set: seal, open (ok and refused), rewrap."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sealtensors
from sealtensors import WrongKeyError
from sealtensors.keys import audit
from sealtensors.numpy import load_file, save_file

KEY, OTHER = bytes(range(32)), bytes(range(32, 64))


@pytest.mark.engine_independent
def test_seal_open_refusal_and_rewrap_are_recorded_without_key_material(tmp_path, monkeypatch):
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv(audit.ENV_VAR, str(log))
    path = tmp_path / "m.sealed"
    save_file({"w": np.ones(10, np.float32)}, path, KEY)
    load_file(path, KEY)
    with pytest.raises(WrongKeyError):
        load_file(path, OTHER)
    sealtensors.rewrap(path, KEY, add=[OTHER])
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["operation"], e["outcome"]) for e in events] == [
        ("seal", "ok"), ("open", "ok"), ("open", "WrongKeyError"), ("open", "ok"), ("rewrap", "ok")]
    file_id = sealtensors.inspect(path)["file_id"]
    assert events[0]["file_id"] == file_id and events[1]["slot_type"] == "symmetric"
    assert audit.verify(log).ok
    text = log.read_text()
    for secret in (KEY, OTHER):
        assert secret.hex() not in text


@pytest.mark.engine_independent
def test_no_log_no_records(tmp_path, monkeypatch):
    monkeypatch.delenv(audit.ENV_VAR, raising=False)
    calls = []
    monkeypatch.setattr(audit, "record", lambda *a, **k: calls.append(a))
    path = tmp_path / "m.sealed"
    save_file({"w": np.ones(10, np.float32)}, path, KEY)
    load_file(path, KEY)
    assert calls == []


@pytest.mark.engine_independent
def test_cli_audit_verify(tmp_path, monkeypatch, capsys):
    from sealtensors import cli

    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv(audit.ENV_VAR, str(log))
    save_file({"w": np.ones(10, np.float32)}, tmp_path / "m.sealed", KEY)
    load_file(tmp_path / "m.sealed", KEY)
    assert cli.main(["audit", "verify", str(log)]) == 0
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[1], lines[0]]) + "\n")  # reordered
    capsys.readouterr()
    assert cli.main(["audit", "verify", str(log)]) == cli.EXIT_INTEGRITY
    assert "line" in capsys.readouterr().err


@pytest.mark.engine_independent
def test_policy_can_refuse_an_open_before_any_key_is_used(tmp_path, monkeypatch):
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv(audit.ENV_VAR, str(log))
    path = tmp_path / "m.sealed"
    save_file({"w": np.ones(10, np.float32)}, path, KEY)
    seen = []

    class Spy(sealtensors.keys.SymmetricKey):
        def unwrap(self, record, file_id):
            seen.append("unwrap")
            return super().unwrap(record, file_id)

    allowed = {sealtensors.inspect(path)["file_id"]}
    sealtensors.set_policy(lambda request: request.file_id in allowed and request.path == str(path))
    try:
        assert np.array_equal(load_file(path, Spy(KEY))["w"], np.ones(10, np.float32))
        allowed.clear()
        seen.clear()
        with pytest.raises(sealtensors.PolicyError):
            load_file(path, Spy(KEY))
        assert seen == []  # refused before any slot was unwrapped

        def broken(request):
            raise RuntimeError("licence server down")

        sealtensors.set_policy(broken)
        with pytest.raises(sealtensors.PolicyError, match="licence server down"):
            load_file(path, KEY)
    finally:
        sealtensors.set_policy(None)
    assert np.array_equal(load_file(path, KEY)["w"], np.ones(10, np.float32))
    outcomes = [json.loads(line)["outcome"] for line in log.read_text().splitlines()]
    assert outcomes.count("PolicyError") == 2
