"""Permissions and links of files sealtensors replaces: key files and in-place rewraps."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import sealtensors
import sealtensors.numpy as stn


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_replaced_key_file_gets_0600_and_replaces_a_symlink(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("not a key")
    os.chmod(target, 0o644)
    link = tmp_path / "k.key"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        sealtensors.write_key_file(link)
    key = sealtensors.write_key_file(link, overwrite=True)
    assert not link.is_symlink() and _mode(link) == 0o600
    assert target.read_text() == "not a key", "the link's target must not be written through"
    assert sealtensors.read_key_file(link) == key


def test_in_place_rewrap_keeps_mode_and_follows_the_link(tmp_path):
    first, second = sealtensors.generate_key(), sealtensors.generate_key()
    real = tmp_path / "real.sealed"
    stn.save_file({"x": np.arange(5)}, real, first)
    os.chmod(real, 0o640)
    link = tmp_path / "link.sealed"
    link.symlink_to(real)
    sealtensors.rewrap(link, first, add=[second])
    assert link.is_symlink(), "the link stays a link"
    assert _mode(real) == 0o640
    assert np.array_equal(stn.load_file(link, second)["x"], np.arange(5))


def test_cli_outputs_sealed_by_umask_plaintext_and_keys_0600(tmp_path, capsys):
    from safetensors.numpy import save_file

    from sealtensors import cli

    plain = tmp_path / "m.safetensors"
    save_file({"x": np.arange(5)}, str(plain))
    saved = os.umask(0o027)
    try:
        assert cli.main(["keygen", str(tmp_path / "k.key")]) == 0
        assert cli.main(["seal", str(plain), str(tmp_path / "m.sealed"),
                         "-k", str(tmp_path / "k.key")]) == 0
        assert cli.main(["unseal", str(tmp_path / "m.sealed"), str(tmp_path / "r.safetensors"),
                         "-k", str(tmp_path / "k.key")]) == 0
    finally:
        os.umask(saved)
    capsys.readouterr()
    assert _mode(tmp_path / "m.sealed") == 0o640
    assert _mode(tmp_path / "k.key") == 0o600
    assert _mode(tmp_path / "r.safetensors") == 0o600
