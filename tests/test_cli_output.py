"""What the ``sealtensors`` command shows: escaped text, --json everywhere, paths the user gave.

Covers the second hardening pass of the CLI: hostile names and metadata cannot reach the terminal as
escape sequences, every command speaks JSON, errors name the user's paths (never a temporary file),
clashes are found before the work, ``verify`` takes several files, the help is short per command,
and a silent fall-back to the slow engine is announced once.
"""

from __future__ import annotations

import errno
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import sealtensors
from sealtensors import cli
from sealtensors.engine import backends as _backends
from sealtensors.keys.keyfile import key_id, read_key_file

safetensors_numpy = pytest.importorskip("safetensors.numpy")

# Everything a terminal may act on: C0 (ESC among them), DEL, C1 (CSI 0x9b), bidi overrides.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

HOSTILE_TENSORS = {
    "x\x1b[2J\x1b[31mred": np.arange(4, dtype=np.int64),
    "csi\x9b31m.bell\x07.del\x7f": np.ones(2, dtype=np.float32),
    "abc\u202egnp.txt": np.zeros(3, dtype=np.float16),
    "new\nline\ttab": np.ones(1, dtype=np.int8),
}
HOSTILE_METADATA = {"title\x1b]0;pwned\x07": "value\x1b[8m hidden", "plain": "ok"}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_failure(code: int, expected: int, err: str) -> None:
    assert code == expected, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sealtensors: error: "), err


@pytest.fixture
def key(tmp_path, capsys) -> Path:
    path = tmp_path / "alice.key"
    assert cli.main(["keygen", str(path)]) == 0
    capsys.readouterr()
    return path


@pytest.fixture
def plain(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file({"w": np.arange(50_000, dtype=np.float32),
                                 "b": np.ones(7, dtype=np.int16)}, str(path),
                                metadata={"format": "np"})
    return path


@pytest.fixture
def sealed(tmp_path, plain, key) -> Path:
    path = tmp_path / "model.sealed"
    sealtensors.seal_file(plain, path, str(key))
    return path


# --- control characters never reach the terminal raw --------------------------------------------


def test_printable_escapes_every_kind_of_control_character():
    assert cli.printable("a\x1b[31mb") == "a\\x1b[31mb"
    assert cli.printable("\x9b\x7f\x00") == "\\x9b\\x7f\\x00"
    assert cli.printable("n\nt\tr\r") == "n\\nt\\tr\\r"
    assert cli.printable("abc\u202egnp\u2066x\u200f") == "abc\\u202egnp\\u2066x\\u200f"
    assert cli.printable(os.fsdecode(b"bad\xffname")) == "bad\\udcffname"
    assert cli.printable("ünïcödé 模型 model.layers.0") == "ünïcödé 模型 model.layers.0"


def test_inspect_escapes_tensor_names_and_metadata_but_json_stays_exact(tmp_path, key, capsys):
    source = tmp_path / "hostile.safetensors"
    safetensors_numpy.save_file(HOSTILE_TENSORS, str(source), metadata=HOSTILE_METADATA)
    target = tmp_path / "hostile.sealed"
    assert run(capsys, "seal", source, target, "-k", key)[0] == 0

    code, out, err = run(capsys, "inspect", target, "-k", key)
    assert code == 0 and err == ""
    assert not RAW_CONTROL.search(out), repr(out)
    assert "x\\x1b[2J\\x1b[31mred" in out
    assert "csi\\x9b31m.bell\\x07.del\\x7f" in out
    assert "abc\\u202egnp.txt" in out
    assert "new\\nline\\ttab" in out
    assert "title\\x1b]0;pwned\\x07: value\\x1b[8m hidden" in out

    code, out, _ = run(capsys, "inspect", target, "-k", key, "--json")
    report = json.loads(out)
    assert {t["name"] for t in report["tensors"]} == set(HOSTILE_TENSORS)
    assert report["metadata"] == HOSTILE_METADATA
    assert not RAW_CONTROL.search(out)


def test_paths_in_messages_are_escaped(tmp_path, key, capsys):
    missing = tmp_path / "evil\x1b[2Jname.sealed"
    code, _, err = run(capsys, "verify", missing, "-k", key)
    assert_clean_failure(code, cli.EXIT_IO, err)
    assert "evil\\x1b[2Jname.sealed" in err and "\x1b" not in err


def test_seal_output_line_escapes_the_destination(tmp_path, plain, key, capsys):
    destination = tmp_path / "out\u202e.sealed"
    code, out, _ = run(capsys, "seal", plain, destination, "-k", key)
    assert code == 0 and "out\\u202e.sealed" in out and "\u202e" not in out


# --- --json on every command ----------------------------------------------------------------------


def test_every_command_speaks_json(tmp_path, plain, key, capsys):
    other = tmp_path / "bob.key"
    code, out, err = run(capsys, "keygen", other, "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["key_id"] == key_id(read_key_file(other)).hex() and result["path"] == str(other)
    assert read_key_file(other).hex() not in out

    target = tmp_path / "m.sealed"
    code, out, err = run(capsys, "seal", plain, target, "-k", key, "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["dst"] == str(target) and result["size"] == target.stat().st_size
    assert result["recipients"] == [f"symmetric key {key_id(read_key_file(key)).hex()}"]
    assert len(result["file_id"]) == 32 and result["signed"] is False

    restored = tmp_path / "r.safetensors"
    code, out, _ = run(capsys, "unseal", target, restored, "-k", key, "--json")
    assert code == 0 and json.loads(out)["authenticated"] is True
    assert json.loads(out)["size"] == restored.stat().st_size

    code, out, _ = run(capsys, "verify", target, "-k", key, "--json")
    result = json.loads(out)
    assert code == 0 and result["ok"] is True and result["exit_code"] == 0
    assert result["files"][0]["path"] == str(target) and result["files"][0]["tensors"] == 2

    code, out, _ = run(capsys, "rewrap", target, "-k", key, "--add", other, "--json")
    result = json.loads(out)
    assert code == 0 and [s["type"] for s in result["slots"]] == ["symmetric", "symmetric"]
    assert result["in_place"] is True and result["rewrote_data"] is False

    for argv in (["inspect", target], ["info"], ["help", "exit-codes"]):
        code, out, _ = run(capsys, *argv, "--json")
        assert code == 0 and isinstance(json.loads(out), dict)


def test_json_errors_have_the_same_exit_codes_on_stdout(tmp_path, plain, sealed, key, capsys):
    wrong = tmp_path / "wrong.key"
    sealtensors.write_key_file(wrong)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(300))
    cases = [
        (["verify", sealed, "-k", wrong], cli.EXIT_WRONG_KEY, "WrongKeyError"),
        (["unseal", garbage, tmp_path / "o", "-k", key], cli.EXIT_FORMAT, None),
        (["seal", plain, sealed, "-k", key], cli.EXIT_IO, "DestinationExistsError"),
        (["keygen", key], cli.EXIT_IO, "DestinationExistsError"),
        (["seal", plain, tmp_path / "x", "-k", tmp_path / "missing.key"], cli.EXIT_INVALID_KEY,
         "InvalidKeyError"),
        (["seal", plain], cli.EXIT_USAGE, "UsageError"),
        (["rewrap", sealed, "-k", key], cli.EXIT_USAGE, "UsageError"),
    ]
    for argv, expected, type_name in cases:
        code, out, err = run(capsys, *argv)
        assert_clean_failure(code, expected, err)
        code, out, err = run(capsys, *argv, "--json")
        assert code == expected and err == "", (argv, err)
        document = json.loads(out)
        # verify reports per file (`sealtensors help json`); a failure of the run as a whole, or of
        # any other command, is one {"error": ...} object.
        error = document["files"][0]["error"] if argv[0] == "verify" else document["error"]
        assert error["exit_code"] == expected and error["message"] and error["kind"]
        if type_name is not None:
            assert error["type"] == type_name


# --- verify of several files ----------------------------------------------------------------------


def _flip_data_byte(path: Path) -> None:
    report = sealtensors.inspect(path)
    position = report["header_size"] + report["index_message_size"] + 200
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_several_files_reports_each_and_exits_with_the_worst(tmp_path, plain, key,
                                                                    capsys):
    good, bad = tmp_path / "good.sealed", tmp_path / "bad.sealed"
    for path in (good, bad):
        sealtensors.seal_file(plain, path, str(key))
    _flip_data_byte(bad)
    missing = tmp_path / "missing.sealed"

    code, out, err = run(capsys, "verify", good, missing, bad, "-k", key)
    assert code == cli.EXIT_INTEGRITY, "an integrity failure outranks a missing file"
    assert out.startswith(f"OK: {good} authenticated") and len(out.splitlines()) == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("sealtensors: error: ") for line in lines)
    assert str(missing) in lines[0] and "I/O error" in lines[0]
    assert str(bad) in lines[1] and "integrity check failed" in lines[1]
    assert re.search(r"chunk \d+", lines[1]), lines[1]

    code, out, err = run(capsys, "verify", good, missing, bad, "-k", key, "--json")
    result = json.loads(out)
    assert code == cli.EXIT_INTEGRITY and err == ""
    assert result["ok"] is False and result["exit_code"] == cli.EXIT_INTEGRITY
    assert [entry["ok"] for entry in result["files"]] == [True, False, False]
    assert result["files"][1]["error"]["exit_code"] == cli.EXIT_IO
    assert result["files"][2]["error"]["type"] == "IntegrityError"
    assert isinstance(result["files"][2]["error"]["chunk_index"], int)

    assert run(capsys, "verify", good, missing, "-k", key)[0] == cli.EXIT_IO


def test_integrity_errors_name_the_chunk(sealed, key, capsys):
    _flip_data_byte(sealed)
    code, _, err = run(capsys, "verify", sealed, "-k", key)
    assert_clean_failure(code, cli.EXIT_INTEGRITY, err)
    assert str(sealed) in err and re.search(r"\bchunk 0\b", err), err


# --- messages name the user's paths ---------------------------------------------------------------


def test_missing_output_directory_names_the_users_path(tmp_path, plain, sealed, key, capsys):
    for argv, destination in (
            (["seal", plain], tmp_path / "no-dir" / "o.sealed"),
            (["unseal", sealed], tmp_path / "no-dir" / "o.safetensors")):
        code, _, err = run(capsys, *argv, destination, "-k", key)
        assert_clean_failure(code, cli.EXIT_IO, err)
        assert str(destination) in err and ".tmp" not in err


def test_directories_as_source_or_destination_are_named(tmp_path, plain, key, capsys):
    directory = tmp_path / "a-dir"
    directory.mkdir()
    code, _, err = run(capsys, "seal", plain, directory, "-k", key, "--force")
    assert_clean_failure(code, cli.EXIT_IO, err)
    assert str(directory) in err and "directory" in err
    # A directory source is a checkpoint directory (tests/test_checkpoint_dirs.py): an empty one
    # has nothing to seal, and one without a manifest is no sealed checkpoint.
    code, _, err = run(capsys, "seal", directory, tmp_path / "x.sealed", "-k", key)
    assert_clean_failure(code, cli.EXIT_FORMAT, err)
    assert str(directory) in err and "no *.safetensors file" in err
    code, _, err = run(capsys, "verify", directory, "-k", key)
    assert_clean_failure(code, cli.EXIT_INTEGRITY, err)
    assert str(directory) in err and "not a sealed checkpoint directory" in err


def test_disk_full_while_sealing_names_the_destination(tmp_path, plain, key, capsys,
                                                      monkeypatch):
    engine = _backends.engine()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(engine, "encrypt_span", disk_full)
    destination = tmp_path / "full.sealed"
    code, _, err = run(capsys, "seal", plain, destination, "-k", key)
    assert_clean_failure(code, cli.EXIT_IO, err)
    assert f"{destination}: No space left on device" in err
    assert not destination.exists()


# --- sources that are not what the command expects ------------------------------------------------


@pytest.mark.parametrize("kind", ["sealed", "json", "random", "empty", "tiny"])
def test_sealing_a_non_safetensors_file_says_what_it_is(kind, tmp_path, sealed, key, capsys):
    source = {"sealed": sealed}.get(kind, tmp_path / f"source.{kind}")
    if kind == "json":
        source.write_text('{"model": "not tensors", "layers": [1, 2, 3]}\n' * 20)
    elif kind == "random":
        source.write_bytes(bytes(range(256)) * 8)
    elif kind == "empty":
        source.write_bytes(b"")
    elif kind == "tiny":
        source.write_bytes(b"abc")
    expected = {"sealed": "is already a sealed file",
                "json": "is not a safetensors file (it looks like JSON",
                "random": "is not a safetensors file", "empty": "is empty",
                "tiny": "is not a safetensors file"}[kind]
    code, _, err = run(capsys, "seal", source, tmp_path / "out.sealed", "-k", key)
    assert_clean_failure(code, cli.EXIT_FORMAT, err)
    assert f"{source} {expected}" in err, err
    assert "impossible" not in err or kind == "random"
    with pytest.raises(sealtensors.FormatError, match=re.escape(expected)):
        sealtensors.seal_file(source, tmp_path / "api.sealed", str(key))
    assert not (tmp_path / "out.sealed").exists() and not (tmp_path / "api.sealed").exists()


def test_unsealing_a_plain_file_says_so(tmp_path, plain, key, capsys):
    code, _, err = run(capsys, "unseal", plain, tmp_path / "o.safetensors", "-k", key)
    assert_clean_failure(code, cli.EXIT_FORMAT, err)
    assert f"{plain} is a plain safetensors file" in err


# --- existing destinations are found before the work ----------------------------------------------


@pytest.mark.parametrize("command", ["seal", "unseal", "rewrap"])
def test_existing_destination_is_refused_before_any_work(command, tmp_path, plain, sealed, key,
                                                         capsys, monkeypatch):
    import sealtensors.api

    calls = []
    for name in ("seal_file", "unseal_file", "rewrap", "inspect"):
        monkeypatch.setattr(sealtensors.api, name, lambda *a, **k: calls.append(a))
    existing = tmp_path / "existing"
    existing.write_bytes(b"precious")
    argv = {"seal": ["seal", plain, existing, "-k", key],
            "unseal": ["unseal", sealed, existing, "-k", key],
            "rewrap": ["rewrap", sealed, "-k", key, "--add", key, "--output", existing]}[command]
    code, _, err = run(capsys, *argv)
    assert_clean_failure(code, cli.EXIT_IO, err)
    assert "--force" in err and str(existing) in err
    assert calls == [], "the clash must be found before reading, decrypting or encrypting"
    assert existing.read_bytes() == b"precious"


def test_demo_dir_twice_needs_force(tmp_path, capsys):
    directory = tmp_path / "demo"
    code, out, _ = run(capsys, "demo", "--size-mib", "0.5", "--dir", directory)
    assert code == 0 and "demo OK" in out
    key_file = directory / "sealtensors-demo.key"
    first_key = key_file.read_bytes()

    code, out, err = run(capsys, "demo", "--size-mib", "0.5", "--dir", directory)
    assert_clean_failure(code, cli.EXIT_IO, err)
    assert "sealtensors-demo.key" in err and "--force" in err and out == ""
    assert key_file.read_bytes() == first_key, "the kept key must survive a second run"

    code, out, _ = run(capsys, "demo", "--size-mib", "0.5", "--dir", directory, "--force",
                       "--json")
    result = json.loads(out)
    assert code == 0 and result["ok"] is True and "demo OK" in result["output"]
    assert key_file.read_bytes() != first_key


# --- help and usage errors ------------------------------------------------------------------------


def test_subcommand_help_is_short_and_exit_codes_have_a_topic(capsys):
    code, out, _ = run(capsys, "seal", "--help")
    assert code == 0 and "--key-file" in out
    assert "130" not in out and "sealtensors help exit-codes" in out
    assert len(out.splitlines()) < 45  # one line or two per option, no epilog

    code, top, _ = run(capsys, "--help")
    assert code == 0 and "130  interrupted" in top and "help" in top

    code, out, _ = run(capsys, "help", "exit-codes")
    assert code == 0 and "0    success" in out and "130  interrupted" in out
    code, out, _ = run(capsys, "help", "json")
    assert code == 0 and '"error"' in out and "stdout" in out
    code, out, _ = run(capsys, "help", "verify")
    assert code == 0 and "usage: sealtensors verify" in out
    code, _, err = run(capsys, "help", "no-such-topic")
    assert_clean_failure(code, cli.EXIT_USAGE, err)


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["seal", "x"], ["verify", "f"],
                                  ["seal", "a", "b", "-k", "k", "-j", "-1"],
                                  ["info", "--no-such-option"]])
def test_usage_errors_are_one_line_with_exit_2(argv, capsys):
    code, out, err = run(capsys, *argv)
    assert_clean_failure(code, cli.EXIT_USAGE, err)
    assert "usage error" in err and "usage:" not in err and out == ""


# --- the slow engine announces itself ------------------------------------------------------------


@pytest.fixture
def no_c_engine(monkeypatch):
    """The C engine's import fails, as on a machine where it was never built."""

    def missing(provider=None):
        raise ImportError("No module named 'sealtensors._native'")

    monkeypatch.setattr(_backends, "_load_c_engine", missing)
    monkeypatch.setattr(_backends, "_current", None)
    monkeypatch.setattr(_backends, "_warned_fallback", False)
    monkeypatch.delenv("SEALTENSORS_BACKEND", raising=False)


def test_auto_fallback_to_python_warns_once(no_c_engine):
    with pytest.warns(_backends.SlowEngineWarning, match="libssl-dev") as caught:
        assert _backends.engine().name == "python"
    assert "sealtensors info" in str(caught[0].message)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        _backends.use("auto")
    assert not [w for w in again if issubclass(w.category, _backends.SlowEngineWarning)]


def test_explicit_python_backend_does_not_warn(no_c_engine, monkeypatch):
    monkeypatch.setenv("SEALTENSORS_BACKEND", "python")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _backends.engine().name == "python"
    assert not [w for w in caught if issubclass(w.category, _backends.SlowEngineWarning)]


def test_cli_shows_the_fallback_warning_once_on_stderr(no_c_engine, tmp_path, plain, key, capsys):
    code, out, err = run(capsys, "info")
    assert code == 0 and "backend:     python" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sealtensors: warning: the C engine is "
                                                   "unavailable")
    code, _, err = run(capsys, "seal", plain, tmp_path / "m.sealed", "-k", key)
    assert code == 0 and err == ""
