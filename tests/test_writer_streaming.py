"""The streaming writer: however the plaintext arrives (whole arrays encrypted in place, odd-sized
pieces copied into the span buffer, file ranges read with pread), the file is the same, chunk for
chunk; write errors from the background writer thread reach the caller."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import given, strategies as st

import sealtensors
import sealtensors.numpy as snp
import test_independent_reader as ind
from sealtensors import writer
from sealtensors.crypto import chunked
from sealtensors.errors import FormatError
from sealtensors.format.index import layout
from sealtensors.keys import SigningKey
from sealtensors.reader import SealedReader

KEY = bytes(range(32))
CHUNK = chunked.CHUNK_SIZE
SIGNER = SigningKey.generate()
SIGNER_PUBLIC = ind.text_decode(SIGNER.verifying_key.text(), "st-sign")


@pytest.fixture
def small_spans(monkeypatch):
    """Spans of four chunks and direct encryption from two chunks up, so small models cross every
    path of the writer (span buffer, direct spans, span boundaries, final span)."""
    monkeypatch.setattr(writer, "SPAN_BYTES", 4 * CHUNK)
    monkeypatch.setattr(writer, "DIRECT_BYTES", 2 * CHUNK)


def _tensors(lengths: list[int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(len(lengths) * 7919 + sum(lengths))
    return {f"t{i}": rng.integers(0, 256, length, dtype=np.uint8)
            for i, length in enumerate(lengths)}


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def _seal(tensors: dict[str, np.ndarray], pieces_of, *, signed: bool) -> bytes:
    index = layout((name, "U8", array.shape) for name, array in tensors.items())
    out = io.BytesIO()
    writer.write_sealed(out, index, (pieces_of(name, array) for name, array in tensors.items()),
                        KEY, signer=SIGNER if signed else None)
    return out.getvalue()


def _check(blob: bytes, tensors: dict[str, np.ndarray], signed: bool) -> None:
    """Read by the independent reader (per-chunk digests checked when signed), and the data message
    rebuilt from its plaintext with the independent C2SP encryption is byte for byte the file's."""
    opened = ind.read_sealed(blob, [ind.SymIdentity(KEY)],
                             signers=[SIGNER_PUBLIC] if signed else None)
    assert set(opened.tensors) == set(tensors)
    for name, array in tensors.items():
        assert np.array_equal(np.asarray(opened.tensors[name]).reshape(-1), array), name
    context = ind.data_context(opened.file_id, opened.index_plain)
    rebuilt = ind.c2sp_encrypt(opened.dek, opened.data, context, opened.data_msg[:ind.SALT])
    assert rebuilt == opened.data_msg
    if signed:
        chunks = ind.stored_chunks(opened.data_msg)
        assert len(opened.trailer) == ind.TRAILER_FIXED + 32 * len(chunks)


# Tensor lengths that put tensor ends and span ends on, just before and just after chunk bounds.
LENGTH_CASES = {
    "empty": [],
    "one-byte": [1],
    "exactly-one-span": [4 * CHUNK],
    "span-minus-one": [4 * CHUNK - 1],
    "span-plus-one": [4 * CHUNK + 1],
    "many-spans": [11 * CHUNK + 5],
    "mixed": [3, 2 * CHUNK + 100, 17, 9 * CHUNK, CHUNK - 64, 5 * CHUNK + 1],
}


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("case", LENGTH_CASES)
def test_whole_arrays_split_pieces_and_file_ranges_give_the_same_file(case, signed, small_spans,
                                                                     tmp_path):
    tensors = _tensors(LENGTH_CASES[case])
    source = tmp_path / "plain.bin"
    source.write_bytes(b"".join(a.tobytes() for a in tensors.values()))
    offsets, position = {}, 0
    for name, array in tensors.items():
        offsets[name] = position
        position += array.nbytes
    fd = os.open(source, os.O_RDONLY)
    try:
        feeds = {
            "arrays": lambda name, array: (array,),
            "pieces": lambda name, array: _split(array.tobytes(), [1, CHUNK - 1, CHUNK + 3,
                                                                   3 * CHUNK, 7 * CHUNK + 11]),
            "ranges": lambda name, array: (writer.FileRange(fd, offsets[name], array.nbytes),),
        }
        for feed in feeds.values():
            _check(_seal(tensors, feed, signed=signed), tensors, signed)
    finally:
        os.close(fd)


@given(lengths=st.lists(st.integers(0, 6 * CHUNK), max_size=5),
       cuts=st.lists(st.integers(0, 1 << 20), max_size=6), signed=st.booleans())
def test_any_piece_split_gives_a_well_formed_file(lengths, cuts, signed):
    # Hypothesis cannot take the function-scoped small_spans fixture; the same settings by hand.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writer, "SPAN_BYTES", 4 * CHUNK)
        patch.setattr(writer, "DIRECT_BYTES", 2 * CHUNK)
        tensors = _tensors(lengths)
        blob = _seal(tensors, lambda name, array: _split(array.tobytes(), cuts), signed=signed)
    _check(blob, tensors, signed)


def test_seal_file_over_many_spans_loads_and_verifies(small_spans, tmp_path):
    from safetensors.numpy import save_file

    tensors = {"a": np.arange(40_000, dtype=np.float32), "b": np.arange(7, dtype=np.int16),
               "c": np.linspace(0, 1, 30_001, dtype=np.float64)}
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    done = []
    sealtensors.seal_file(tmp_path / "plain.safetensors", tmp_path / "m.sealed", KEY,
                          signer=SIGNER, progress=done.append)
    sealtensors.verify(tmp_path / "m.sealed", KEY, signer=SIGNER.verifying_key)
    loaded = snp.load_file(tmp_path / "m.sealed", KEY)
    for name, array in tensors.items():
        assert np.array_equal(loaded[name], array)
    with SealedReader.open(tmp_path / "m.sealed", KEY) as reader:
        data_length = reader.index.data_length
    assert done == sorted(done) and len(done) > 3 and done[-1] == data_length


def test_a_file_range_past_the_end_of_the_source_is_a_format_error(tmp_path):
    source = tmp_path / "short.bin"
    source.write_bytes(b"x" * 100)
    fd = os.open(source, os.O_RDONLY)
    try:
        index = layout([("t", "U8", (150,))])
        with pytest.raises(FormatError, match="changed size"):
            writer.write_sealed(io.BytesIO(), index, [(writer.FileRange(fd, 0, 150),)], KEY)
    finally:
        os.close(fd)


class _DiskFillsUp(io.BytesIO):
    """An output that takes ``room`` bytes and then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data) -> int:
        if self.tell() + len(memoryview(data)) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.mark.parametrize("fails_at", [0.3, 0.6, 0.95])
def test_a_write_error_on_the_writer_thread_reaches_the_caller(fails_at, small_spans):
    tensors = _tensors([8 * CHUNK + 3, 3 * CHUNK])
    index = layout((name, "U8", array.shape) for name, array in tensors.items())
    whole = len(_seal(tensors, lambda name, array: (array,), signed=False))
    out = _DiskFillsUp(room=int(whole * fails_at))
    with pytest.raises(OSError) as caught:
        writer.write_sealed(out, index, ((array,) for array in tensors.values()), KEY)
    assert caught.value.errno == errno.ENOSPC
    assert not [t for t in threading.enumerate() if t.name.startswith("sealtensors-writer")]


@pytest.mark.engine_independent
def test_a_real_file_size_limit_fails_cleanly_naming_the_destination(tmp_path):
    """A write refused by the kernel (RLIMIT_FSIZE: EFBIG) in the middle of the data section, on
    the writer thread, is an OSError naming the destination, and nothing is left behind."""
    from safetensors.numpy import save_file

    source = tmp_path / "plain.safetensors"
    save_file({"w": np.ones(5 * 1024 * 1024, dtype=np.float32)}, str(source))
    script = textwrap.dedent("""
        import errno, os, resource, signal, sys
        import sealtensors
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = 5 * 1024 * 1024  # inside the first 16 MiB span of the 20 MiB model
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        source, target = sys.argv[1], sys.argv[2]
        try:
            sealtensors.seal_file(source, target, bytes(range(32)))
        except OSError as exc:
            print(exc.errno == errno.EFBIG, exc.filename == target, os.path.exists(target))
    """)
    target = str(tmp_path / "out.sealed")
    done = subprocess.run([sys.executable, "-c", script, str(source), target],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "True", "False"], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.safetensors"]
