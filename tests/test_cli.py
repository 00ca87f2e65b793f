"""The ``sealtensors`` command line: every subcommand in-process, exit codes, and no leaks.

``main([...])`` runs in-process (capsys captures its output); real subprocess runs check
``python -m sealtensors`` itself, including the demo. Like every test here, each runs once per
engine (the autouse ``backend`` fixture in conftest.py); the subprocesses are pointed at the same
engine.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sealtensors
from sealtensors import cli
from sealtensors.keys.keyfile import key_id, read_key_file

safetensors_numpy = pytest.importorskip("safetensors.numpy")

TENSORS = {
    "model.embed.weight": np.arange(64 * 48, dtype=np.float32).reshape(64, 48) / 7,
    "model.layers.0.mlp.weight": (np.arange(3000) % 251).astype(np.float16).reshape(60, 50),
    "model.layers.0.norm.bias": np.linspace(-1, 1, 48, dtype=np.float64),
    "model.step": np.array(12345, dtype=np.int64),
}
METADATA = {"format": "np", "secret_project": "codename-heron"}


# --- helpers -----------------------------------------------------------------------------------


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_failure(code: int, expected: int, err: str) -> None:
    assert code == expected, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sealtensors: error: "), err


def assert_no_key_material(text: str, *key_paths: Path) -> None:
    for path in key_paths:
        key = read_key_file(path)
        assert key.hex() not in text.lower()
        assert key.hex().upper() not in text


@pytest.fixture
def plain(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file(TENSORS, str(path), metadata=METADATA)
    return path


@pytest.fixture
def keys(tmp_path, capsys) -> tuple[Path, Path]:
    paths = tmp_path / "alice.key", tmp_path / "bob.key"
    for path in paths:
        assert cli.main(["keygen", str(path)]) == 0
    capsys.readouterr()
    return paths


@pytest.fixture
def sealed(tmp_path, plain, keys, capsys) -> Path:
    path = tmp_path / "model.sealed"
    assert cli.main(["seal", str(plain), str(path), "--key-file", str(keys[0])]) == 0
    capsys.readouterr()
    return path


def flip_byte(path: Path, position: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0x40]))


def data_position(path: Path) -> int:
    report = sealtensors.inspect(path)
    return report["header_size"] + report["index_message_size"] + report["data_message_size"] // 2


def subprocess_env(backend: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SEALTENSORS_DEBUG", None)
    if backend == "python":
        env["SEALTENSORS_BACKEND"] = "python"
    else:
        env["SEALTENSORS_BACKEND"] = "c"
        env["SEALTENSORS_AES"] = backend.split("-", 1)[1]
    return env


# --- keygen --------------------------------------------------------------------------------------


def test_keygen_writes_0600_and_prints_only_the_key_id(tmp_path, capsys):
    path = tmp_path / "k.key"
    code, out, err = run(capsys, "keygen", path)
    assert code == 0 and err == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_id(read_key_file(path)).hex() in out
    assert_no_key_material(out, path)


def test_keygen_refuses_to_overwrite_without_force(tmp_path, capsys):
    path = tmp_path / "k.key"
    run(capsys, "keygen", path)
    before = path.read_bytes()
    code, _, err = run(capsys, "keygen", path)
    assert_clean_failure(code, cli.EXIT_IO, err)
    assert "--force" in err
    assert path.read_bytes() == before


def test_keygen_force_replaces_with_a_new_0600_file(tmp_path, capsys):
    path = tmp_path / "k.key"
    path.write_text("old")
    path.chmod(0o644)
    code, out, _ = run(capsys, "keygen", path, "--force")
    assert code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_id(read_key_file(path)).hex() in out


# --- seal / unseal -------------------------------------------------------------------------------


def test_seal_unseal_round_trip_is_readable_by_safetensors(tmp_path, plain, keys, capsys):
    sealed_path, restored = tmp_path / "m.sealed", tmp_path / "restored.safetensors"
    code, out, err = run(capsys, "seal", plain, sealed_path, "--key-file", keys[0], "--threads", 2)
    assert code == 0 and err == ""
    assert key_id(read_key_file(keys[0])).hex() in out
    code, out2, err = run(capsys, "unseal", sealed_path, restored, "--key-file", keys[0])
    assert code == 0 and err == ""
    assert_no_key_material(out + out2, *keys)
    loaded = safetensors_numpy.load_file(str(restored))
    assert loaded.keys() == TENSORS.keys()
    for name, array in TENSORS.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array)
    from safetensors import safe_open

    with safe_open(str(restored), "np") as handle:
        assert handle.metadata() == METADATA
    assert stat.S_IMODE(restored.stat().st_mode) == 0o600


def test_seal_for_two_recipients(tmp_path, plain, keys, capsys):
    path = tmp_path / "m.sealed"
    code, _, _ = run(capsys, "seal", plain, path, "-k", keys[0], "-k", keys[1])
    assert code == 0
    from sealtensors.numpy import load_file

    for key in keys:
        loaded = load_file(path, str(key))
        assert np.array_equal(loaded["model.embed.weight"], TENSORS["model.embed.weight"])


def test_sealed_file_hides_names_and_metadata(sealed):
    raw = sealed.read_bytes()
    for secret in [*TENSORS, "codename-heron", "secret_project"]:
        assert secret.encode() not in raw


# --- inspect -------------------------------------------------------------------------------------


def test_inspect_without_key_shows_recipients_not_names(sealed, keys, capsys):
    from sealtensors.keys import SymmetricKey

    file_id = bytes.fromhex(sealtensors.inspect(sealed)["file_id"])
    slot_id = SymmetricKey(read_key_file(keys[0])).slot_id(file_id).hex()
    code, out, err = run(capsys, "inspect", sealed)
    assert code == 0 and err == ""
    assert slot_id in out and "authenticated: NO" in out
    assert key_id(read_key_file(keys[0])).hex() not in out  # slot ids are per file
    assert str(sealed.stat().st_size) in out
    for name in TENSORS:
        assert name not in out
    assert "codename-heron" not in out

    code, out, _ = run(capsys, "inspect", sealed, "--json")
    report = json.loads(out)
    assert report["recipients"] == [slot_id] and report["authenticated"] is False
    assert report["file_size"] == sealed.stat().st_size
    assert "tensors" not in report and "metadata" not in report


def test_inspect_with_key_shows_tensors_and_metadata(sealed, keys, capsys):
    code, out, err = run(capsys, "inspect", sealed, "--key-file", keys[0])
    assert code == 0 and err == ""
    for name in TENSORS:
        assert name in out
    assert "codename-heron" in out and "[64, 48]" in out and "F16" in out
    assert_no_key_material(out, *keys)

    code, out, _ = run(capsys, "inspect", sealed, "-k", keys[0], "--json")
    report = json.loads(out)
    assert report["metadata"] == METADATA
    table = {t["name"]: t for t in report["tensors"]}
    assert table["model.embed.weight"]["dtype"] == "F32"
    assert table["model.embed.weight"]["shape"] == [64, 48]


# --- verify --------------------------------------------------------------------------------------


def test_verify_ok_writes_nothing(sealed, keys, capsys):
    before = sorted(os.listdir(sealed.parent))
    code, out, err = run(capsys, "verify", sealed, "--key-file", keys[0])
    assert code == 0 and err == "" and "OK" in out
    assert sorted(os.listdir(sealed.parent)) == before


# --- failures and their exit codes --------------------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "unseal"])
def test_tampered_data_exits_1(tmp_path, sealed, keys, capsys, command):
    flip_byte(sealed, data_position(sealed))
    extra = [tmp_path / "out.safetensors"] if command == "unseal" else []
    code, out, err = run(capsys, command, sealed, *extra, "--key-file", keys[0])
    assert_clean_failure(code, cli.EXIT_INTEGRITY, err)
    assert out == ""
    assert not (tmp_path / "out.safetensors").exists()


def test_tampered_header_exits_1(sealed, keys, capsys):
    flip_byte(sealed, 32 + 16)  # the active copy's sequence number, covered by the header MAC
    code, _, err = run(capsys, "verify", sealed, "-k", keys[0])
    assert_clean_failure(code, cli.EXIT_INTEGRITY, err)


@pytest.mark.parametrize("command", ["verify", "unseal", "inspect"])
def test_wrong_key_exits_3(tmp_path, sealed, keys, capsys, command):
    extra = [tmp_path / "out.safetensors"] if command == "unseal" else []
    code, _, err = run(capsys, command, sealed, *extra, "--key-file", keys[1])
    assert_clean_failure(code, cli.EXIT_WRONG_KEY, err)
    assert_no_key_material(err, *keys)


@pytest.mark.parametrize("command", ["verify", "unseal", "inspect", "rewrap"])
def test_garbage_file_exits_4(tmp_path, keys, capsys, command):
    garbage = tmp_path / "garbage.sealed"
    garbage.write_bytes(os.urandom(4096))
    extra = {"unseal": [tmp_path / "out.safetensors"],
             "rewrap": ["--add", keys[1]]}.get(command, [])
    code, _, err = run(capsys, command, garbage, *extra, "--key-file", keys[0])
    assert_clean_failure(code, cli.EXIT_FORMAT, err)


def test_unsupported_version_exits_4(sealed, capsys):
    data = bytearray(sealed.read_bytes())
    data[8:10] = (99).to_bytes(2, "little")  # format version, right after the 8-byte magic
    sealed.write_bytes(bytes(data))
    code, _, err = run(capsys, "inspect", sealed)
    assert_clean_failure(code, cli.EXIT_FORMAT, err)


def test_seal_of_a_non_safetensors_file_exits_4(tmp_path, keys, capsys):
    source = tmp_path / "not.safetensors"
    source.write_bytes(b"\xff" * 8 + b"not json")
    code, _, err = run(capsys, "seal", source, tmp_path / "x.sealed", "-k", keys[0])
    assert_clean_failure(code, cli.EXIT_FORMAT, err)


def test_existing_destination_exits_5_unless_forced(tmp_path, plain, sealed, keys, capsys):
    existing = tmp_path / "existing"
    existing.write_bytes(b"precious")
    cases = [
        ["seal", plain, existing, "-k", keys[0]],
        ["unseal", sealed, existing, "-k", keys[0]],
        ["rewrap", sealed, "-k", keys[0], "--add", keys[1], "--output", existing],
    ]
    for argv in cases:
        code, _, err = run(capsys, *argv)
        assert_clean_failure(code, cli.EXIT_IO, err)
        assert "--force" in err and "overwrite=True" not in err
        assert existing.read_bytes() == b"precious"
    for argv in cases:
        code, _, err = run(capsys, *argv, "--force")
        assert code == 0, err


def test_missing_input_and_output_directory_exit_5(tmp_path, plain, keys, capsys):
    code, _, err = run(capsys, "seal", tmp_path / "nope.safetensors", tmp_path / "x", "-k", keys[0])
    assert_clean_failure(code, cli.EXIT_IO, err)
    code, _, err = run(capsys, "seal", plain, tmp_path / "no-dir" / "x.sealed", "-k", keys[0])
    assert_clean_failure(code, cli.EXIT_IO, err)


def test_bad_key_files_exit_6(tmp_path, sealed, keys, plain, capsys):
    bad_text = tmp_path / "bad.key"
    bad_text.write_text("sealtensors-key-v1:" + "zz" * 32 + "\n")
    short = tmp_path / "short.key"
    short.write_bytes(b"\x01" * 31)
    for key_file in (bad_text, short, tmp_path / "missing.key", plain):
        code, _, err = run(capsys, "verify", sealed, "--key-file", key_file)
        assert_clean_failure(code, cli.EXIT_INVALID_KEY, err)
    code, _, err = run(capsys, "seal", plain, tmp_path / "x.sealed", "-k", bad_text)
    assert_clean_failure(code, cli.EXIT_INVALID_KEY, err)
    assert not (tmp_path / "x.sealed").exists()
    code, _, err = run(capsys, "rewrap", sealed, "-k", keys[0], "--remove", "not-a-key-id")
    assert_clean_failure(code, cli.EXIT_INVALID_KEY, err)


def test_usage_errors_exit_2(tmp_path, plain, sealed, keys, capsys):
    for argv in ([], ["seal", plain], ["verify", sealed], ["frobnicate"], ["seal", plain, "x", "-k",
                                                                           keys[0], "-j", "-1"]):
        code, _, err = run(capsys, *argv)
        assert code == cli.EXIT_USAGE and "Traceback" not in err and "error" in err
    code, _, err = run(capsys, "rewrap", sealed, "-k", keys[0])
    assert_clean_failure(code, cli.EXIT_USAGE, err)
    code, _, err = run(capsys, "seal", plain, plain, "-k", keys[0], "--force")
    assert_clean_failure(code, cli.EXIT_USAGE, err)
    assert safetensors_numpy.load_file(str(plain)).keys() == TENSORS.keys()


def test_backend_error_exits_7(monkeypatch, capsys):
    from sealtensors.engine import backends as _backends

    monkeypatch.setenv("SEALTENSORS_BACKEND", "no-such-engine")
    monkeypatch.setattr(_backends, "_current", None)
    code, _, err = run(capsys, "info")
    assert_clean_failure(code, cli.EXIT_BACKEND, err)


def test_interrupt_exits_130_and_bugs_exit_70(sealed, keys, capsys, monkeypatch):
    import sealtensors.api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sealtensors.api, "verify", interrupted)
    code, _, err = run(capsys, "verify", sealed, "-k", keys[0])
    assert code == cli.EXIT_INTERRUPTED and "Traceback" not in err

    def buggy(*args, **kwargs):
        raise TypeError("oops")

    monkeypatch.setattr(sealtensors.api, "verify", buggy)
    code, _, err = run(capsys, "verify", sealed, "-k", keys[0])
    assert_clean_failure(code, cli.EXIT_INTERNAL, err)


def test_help_documents_exit_codes(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for line in ("0    success", "1    integrity", "3    wrong key", "4    malformed",
                 "5    I/O error", "6    invalid key file", "7    backend error", "130"):
        assert line in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and sealtensors.__version__ in out


# --- rewrap --------------------------------------------------------------------------------------


def test_rewrap_add_then_remove_round_trip(tmp_path, sealed, keys, capsys):
    alice, bob = keys

    code, out, err = run(capsys, "rewrap", sealed, "--key-file", alice, "--add", bob)
    assert code == 0 and err == ""
    assert "header rewritten in place" in out
    assert_no_key_material(out, *keys)
    assert run(capsys, "verify", sealed, "-k", bob)[0] == 0
    slots = json.loads(run(capsys, "inspect", sealed, "--json")[1])["recipients"]
    assert len(slots) == 2

    # Bob removes Alice by her slot id; Alice is locked out, Bob still opens the file.
    alice_slot = json.loads(run(capsys, "inspect", sealed, "-k", alice, "--json")[1])["your_slot"]
    code, out, _ = run(capsys, "rewrap", sealed, "-k", bob, "--remove", alice_slot)
    assert code == 0 and alice_slot not in out and "reseal" in out
    assert run(capsys, "verify", sealed, "-k", alice)[0] == cli.EXIT_WRONG_KEY
    assert run(capsys, "verify", sealed, "-k", bob)[0] == 0

    # Removing her again is an error with its own message (exit 2), the file unchanged.
    before = sealed.read_bytes()
    code, _, err = run(capsys, "rewrap", sealed, "-k", bob, "--remove", alice_slot)
    assert code == cli.EXIT_USAGE and "no slot" in err and sealed.read_bytes() == before

    # To a new file, removing by key file: the original is untouched.
    other = tmp_path / "for-alice.sealed"
    code, _, _ = run(capsys, "rewrap", sealed, "-k", bob, "--add", alice, "--remove", bob,
                     "--output", other)
    assert code == 0
    assert run(capsys, "verify", other, "-k", alice)[0] == 0
    assert run(capsys, "verify", other, "-k", bob)[0] == cli.EXIT_WRONG_KEY
    assert run(capsys, "verify", sealed, "-k", bob)[0] == 0


def test_rewrap_refuses_to_remove_every_recipient(sealed, keys, capsys):
    before = sealed.read_bytes()
    code, _, err = run(capsys, "rewrap", sealed, "-k", keys[0], "--remove", keys[0])
    assert code != 0 and "Traceback" not in err
    assert sealed.read_bytes() == before


# --- info, progress ------------------------------------------------------------------------------


def test_info_reports_the_engine_in_use(capsys, backend):
    code, out, err = run(capsys, "info")
    assert code == 0 and err == ""
    info = sealtensors.engine_info()
    assert f"backend:     {info['backend']}" in out
    assert f"provider:    {info['provider']}" in out
    assert f"digests:     {info['digest']} " in out
    assert sealtensors.__version__ in out
    report = json.loads(run(capsys, "info", "--json")[1])
    assert report["engine"] == info and report["version"] == sealtensors.__version__


@pytest.mark.parametrize("with_tqdm", [False, True])
def test_progress_bar_only_on_a_terminal(tmp_path, plain, keys, capsys, monkeypatch, with_tqdm):
    if with_tqdm:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError: built-in bar
    monkeypatch.setattr(cli, "_stderr_is_terminal", lambda: True)
    code, _, err = run(capsys, "seal", plain, tmp_path / "m.sealed", "-k", keys[0])
    assert code == 0
    assert "sealing" in err
    if not with_tqdm:
        assert "100%" in err
    code, _, err = run(capsys, "unseal", tmp_path / "m.sealed", tmp_path / "o.safetensors",
                       "-k", keys[0])
    assert code == 0 and "unsealing" in err
    monkeypatch.setattr(cli, "_stderr_is_terminal", lambda: False)
    code, _, err = run(capsys, "seal", plain, tmp_path / "m.sealed", "-k", keys[0], "--force")
    assert code == 0 and err == ""


# --- real processes ------------------------------------------------------------------------------


def test_python_m_sealtensors_demo(tmp_path, backend):
    result = subprocess.run([sys.executable, "-m", "sealtensors", "demo", "--size-mib", "4"],
                            capture_output=True, text=True, env=subprocess_env(backend),
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "demo OK" in result.stdout
    assert "31/31 tensors bit-identical" in result.stdout
    assert "MB/s" in result.stdout
    assert os.listdir(tmp_path) == []  # the temporary directory was elsewhere, and is gone


def test_python_m_sealtensors_failure_has_no_traceback(tmp_path, keys, backend):
    garbage = tmp_path / "garbage.sealed"
    garbage.write_bytes(b"\0" * 1000)
    result = subprocess.run([sys.executable, "-m", "sealtensors", "verify", str(garbage),
                             "-k", str(keys[0])], capture_output=True, text=True,
                            env=subprocess_env(backend), timeout=60)
    assert result.returncode == cli.EXIT_FORMAT
    assert result.stderr.startswith("sealtensors: error: ") and "Traceback" not in result.stderr


# --- library regressions the CLI depends on ----------------------------------------------------

_CYCLE_SCRIPT = """
import gc, sys, sealtensors
def fail_and_keep():
    try:
        sealtensors.verify(sys.argv[1], sys.argv[2])
    except sealtensors.IntegrityError as exc:
        kept = exc  # this frame now holds its own traceback: a reference cycle
for _ in range(3):
    fail_and_keep()
    gc.collect()
print("survived")
"""


def test_collecting_a_failed_decrypts_traceback_does_not_crash(sealed, keys, backend):
    """An IntegrityError kept in a reference cycle, then garbage-collected, must not crash.

    Regression: the C engine used to raise while its frame still held the ffi.from_buffer cdata of
    src/dst; with the traceback in a cycle, CPython 3.11's memoryview tp_clear failed and the later
    dealloc crashed (SIGSEGV). The CLI avoids such cycles itself (cli._report) either way."""
    flip_byte(sealed, data_position(sealed))
    result = subprocess.run([sys.executable, "-c", _CYCLE_SCRIPT, str(sealed), str(keys[0])],
                            capture_output=True, text=True, env=subprocess_env(backend),
                            timeout=60)
    assert result.returncode == 0 and "survived" in result.stdout, result.stderr[-2000:]
