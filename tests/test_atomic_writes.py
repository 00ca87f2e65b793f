"""Crash-safe outputs: no overwrite without permission, no partial files, no input == output."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

import sealtensors
import sealtensors.numpy as snp
from sealtensors.engine import backends as _backends
from sealtensors.io.atomic import DestinationExistsError

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
ARRAYS = {"w": np.arange(40_000, dtype=np.float32), "b": np.ones(3, dtype=np.int16)}
PLACEHOLDER = b"an existing file that must survive"


def temporaries(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def plain_file(path) -> None:
    from safetensors.numpy import save_file

    save_file(ARRAYS, str(path))


def torch_save_file(tensors, path, key, **kwargs):
    torch = pytest.importorskip("torch")
    import sealtensors.torch as st

    st.save_file({n: torch.from_numpy(a) for n, a in tensors.items()}, path, key, **kwargs)


def writers(tmp_path):
    """name -> callable(destination, overwrite) for every API that writes a file."""
    source_plain = tmp_path / "source.safetensors"
    plain_file(source_plain)
    source_sealed = tmp_path / "source.sealed"
    snp.save_file(ARRAYS, source_sealed, KEY)
    return {
        "numpy.save_file": lambda dst, **kw: snp.save_file(ARRAYS, dst, KEY, **kw),
        "torch.save_file": lambda dst, **kw: torch_save_file(ARRAYS, dst, KEY, **kw),
        "seal_file": lambda dst, **kw: sealtensors.seal_file(source_plain, dst, KEY, **kw),
        "unseal_file": lambda dst, **kw: sealtensors.unseal_file(source_sealed, dst, KEY, **kw),
        "rewrap": lambda dst, **kw: sealtensors.rewrap(source_sealed, KEY, add=[OTHER], dst=dst,
                                                       **kw),
    }


WRITERS = ["numpy.save_file", "torch.save_file", "seal_file", "unseal_file", "rewrap"]


def check_output(name: str, path) -> None:
    if name == "unseal_file":
        from safetensors.numpy import load_file

        loaded = load_file(str(path))
    else:
        loaded = snp.load_file(path, OTHER if name == "rewrap" else KEY)
    assert all(np.array_equal(loaded[n], ARRAYS[n]) for n in ARRAYS)


@pytest.mark.parametrize("name", WRITERS)
def test_existing_destination_is_kept_without_overwrite(name, tmp_path):
    write = writers(tmp_path)[name]
    destination = tmp_path / "out"
    destination.write_bytes(PLACEHOLDER)
    before = os.stat(destination)
    with pytest.raises(DestinationExistsError) as caught:
        write(destination, overwrite=False)  # save_file replaces by default, as safetensors does
    assert isinstance(caught.value, FileExistsError)
    assert destination.read_bytes() == PLACEHOLDER
    assert os.stat(destination).st_ino == before.st_ino
    assert temporaries(tmp_path) == []
    write(destination, overwrite=True)
    check_output(name, destination)
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("name", WRITERS)
def test_fresh_destination_is_created(name, tmp_path):
    write = writers(tmp_path)[name]
    destination = tmp_path / "sub" / "out"
    destination.parent.mkdir()
    write(destination)
    check_output(name, destination)
    assert temporaries(destination.parent) == []


def test_relative_destination_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    snp.save_file(ARRAYS, "relative.sealed", KEY)
    assert np.array_equal(snp.load_file(tmp_path / "relative.sealed", KEY)["w"], ARRAYS["w"])
    assert temporaries(tmp_path) == []


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_after(calls: int, original, count=None):
    """A wrapper that lets ``calls`` calls through, then raises ENOSPC (``count`` may be shared)."""
    count = [0] if count is None else count

    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            enospc()
        return original(*args, **kwargs)

    return wrapper


BIG = {"w": np.zeros(5 * 1024 * 1024, dtype=np.float32)}  # 20 MiB: two encrypt spans


@pytest.mark.parametrize("existing", [False, True], ids=["absent", "existing"])
@pytest.mark.parametrize("name", ["numpy.save_file", "torch.save_file", "seal_file"])
def test_failure_in_the_middle_of_encryption_leaves_nothing(name, existing, tmp_path, monkeypatch):
    source_plain = tmp_path / "big.safetensors"
    from safetensors.numpy import save_file

    save_file(BIG, str(source_plain))
    destination = tmp_path / "out.sealed"
    if existing:
        destination.write_bytes(PLACEHOLDER)
    engine = _backends.engine()
    monkeypatch.setattr(engine, "encrypt_span", fail_after(1, engine.encrypt_span))
    with pytest.raises(OSError) as caught:
        if name == "numpy.save_file":
            snp.save_file(BIG, destination, KEY, overwrite=existing)
        elif name == "torch.save_file":
            torch_save_file(BIG, destination, KEY, overwrite=existing)
        else:
            sealtensors.seal_file(source_plain, destination, KEY, overwrite=existing)
    assert caught.value.errno == errno.ENOSPC
    if existing:
        assert destination.read_bytes() == PLACEHOLDER
    else:
        assert not destination.exists()
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("existing", [False, True], ids=["absent", "existing"])
def test_failure_in_the_middle_of_unsealing_leaves_nothing(existing, tmp_path, monkeypatch):
    sealed = tmp_path / "big.sealed"
    snp.save_file(BIG, sealed, KEY)
    destination = tmp_path / "out.safetensors"
    if existing:
        destination.write_bytes(PLACEHOLDER)
    engine = _backends.engine()
    # Call 1 decrypts the index, call 2 the first 16 MiB span; call 3 (the rest) fails, whether
    # the reader streams from memory (decrypt_span) or from the descriptor (decrypt_span_fd).
    shared = [0]
    monkeypatch.setattr(engine, "decrypt_span", fail_after(2, engine.decrypt_span, shared))
    monkeypatch.setattr(engine, "decrypt_span_fd", fail_after(2, engine.decrypt_span_fd, shared))
    with pytest.raises(OSError):
        sealtensors.unseal_file(sealed, destination, KEY, overwrite=existing)
    assert shared[0] == 3
    assert destination.read_bytes() == PLACEHOLDER if existing else not destination.exists()
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("name", WRITERS)
def test_fsync_failure_leaves_nothing(name, tmp_path, monkeypatch):
    write = writers(tmp_path)[name]
    destination = tmp_path / "out"
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(OSError) as caught:
        write(destination)
    assert caught.value.errno == errno.ENOSPC
    assert not destination.exists()
    assert temporaries(tmp_path) == []


def test_failed_in_place_rewrap_leaves_the_file_untouched(tmp_path, monkeypatch):
    sealed = tmp_path / "m.sealed"
    snp.save_file(ARRAYS, sealed, KEY)
    before = sealed.read_bytes()
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(OSError):
        sealtensors.rewrap(sealed, KEY, add=[OTHER])
    monkeypatch.undo()
    assert sealed.read_bytes() == before
    assert temporaries(tmp_path) == []


def test_interrupt_during_write_leaves_nothing(tmp_path, monkeypatch):
    destination = tmp_path / "out.sealed"
    engine = _backends.engine()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "encrypt_span", interrupt)
    with pytest.raises(KeyboardInterrupt):
        snp.save_file(ARRAYS, destination, KEY)
    assert not destination.exists()
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("operation", ["seal_file", "unseal_file"])
@pytest.mark.parametrize("alias", ["same_path", "hard_link", "symlink", "dot_path"])
def test_output_that_is_the_input_is_refused(operation, alias, tmp_path):
    if operation == "seal_file":
        source = tmp_path / "m.safetensors"
        plain_file(source)
    else:
        source = tmp_path / "m.sealed"
        snp.save_file(ARRAYS, source, KEY)
    before = source.read_bytes()
    if alias == "same_path":
        destination = source
    elif alias == "hard_link":
        destination = tmp_path / "hard"
        os.link(source, destination)
    elif alias == "symlink":
        destination = tmp_path / "soft"
        os.symlink(source, destination)
    else:
        destination = tmp_path / "." / ".." / tmp_path.name / source.name
    action = getattr(sealtensors, operation)
    for overwrite in (False, True):
        with pytest.raises(ValueError):
            action(source, destination, KEY, overwrite=overwrite)
    assert source.read_bytes() == before
    assert temporaries(tmp_path) == []


def test_missing_source_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        sealtensors.seal_file(tmp_path / "absent", tmp_path / "out", KEY)
    with pytest.raises(FileNotFoundError):
        sealtensors.unseal_file(tmp_path / "absent", tmp_path / "out", KEY)
    assert os.listdir(tmp_path) == []


# --- permission bits and error names -------------------------------------------------------------


@pytest.fixture
def umask():
    """Set the process umask for one test (``umask(0o027)``), restoring it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("mask", [0o027, 0o002, 0o077])
@pytest.mark.parametrize("name", ["numpy.save_file", "seal_file"])
def test_sealed_outputs_follow_the_umask(name, mask, tmp_path, umask):
    write = writers(tmp_path)[name]
    umask(mask)
    write(tmp_path / "out")
    assert _mode(tmp_path / "out") == 0o666 & ~mask


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_plaintext_outputs_and_key_files_stay_0600_whatever_the_umask(mask, tmp_path, umask):
    write = writers(tmp_path)["unseal_file"]
    umask(mask)
    write(tmp_path / "plain.safetensors")
    sealtensors.write_key_file(tmp_path / "k.key")
    assert _mode(tmp_path / "plain.safetensors") == 0o600
    assert _mode(tmp_path / "k.key") == 0o600


def test_current_umask_reads_the_umask_without_proc(umask, monkeypatch):
    from sealtensors.io import atomic

    umask(0o037)
    assert atomic.current_umask() == 0o037

    def no_proc(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/self/status")

    monkeypatch.setattr(atomic, "open", no_proc, raising=False)
    assert atomic.current_umask() == 0o037
    assert os.umask(0o037) == 0o037, "the fallback restores the umask"
    assert atomic.new_file_mode() == 0o640


@pytest.mark.parametrize("name", WRITERS)
def test_missing_output_directory_is_reported_with_the_callers_path(name, tmp_path):
    write = writers(tmp_path)[name]
    destination = tmp_path / "no-such-dir" / "out.sealed"
    with pytest.raises(FileNotFoundError) as caught:
        write(destination)
    assert caught.value.filename == str(destination)
    assert ".tmp" not in str(caught.value)


@pytest.mark.parametrize("overwrite", [False, True])
def test_directory_as_destination_is_an_error_naming_it(tmp_path, overwrite):
    directory = tmp_path / "a-dir"
    directory.mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        snp.save_file(ARRAYS, directory, KEY, overwrite=overwrite)
    assert caught.value.filename == str(directory)
    assert directory.is_dir() and os.listdir(directory) == []


def test_failures_creating_or_publishing_the_temporary_name_the_destination(tmp_path, monkeypatch):
    from sealtensors.io import atomic

    destination = tmp_path / "out.sealed"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / ".out.sealed.x1.tmp"))

    monkeypatch.setattr(atomic, "_publish_unnamed", read_only)
    monkeypatch.setattr(atomic, "_publish_named", read_only)
    with pytest.raises(OSError) as caught:
        snp.save_file(ARRAYS, destination, KEY)
    assert caught.value.errno == errno.EROFS and caught.value.filename == str(destination)

    monkeypatch.setattr(atomic, "_open_unnamed", lambda directory: None)
    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as caught:
        snp.save_file(ARRAYS, destination, KEY)
    assert caught.value.errno == errno.EROFS and caught.value.filename == str(destination)
    assert not destination.exists() and temporaries(tmp_path) == []


def test_nameless_write_errors_name_the_destination_and_others_pass_unchanged(tmp_path):
    from sealtensors.io.atomic import atomic_output

    destination = tmp_path / "out"
    with pytest.raises(OSError) as caught:
        with atomic_output(destination):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(destination)
    source_error = OSError(errno.EIO, os.strerror(errno.EIO))
    with pytest.raises(OSError) as caught:
        with atomic_output(destination):
            raise source_error
    assert caught.value is source_error
    assert not destination.exists() and temporaries(tmp_path) == []
