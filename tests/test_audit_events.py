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
