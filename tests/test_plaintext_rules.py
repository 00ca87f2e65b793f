"""Authenticated but ill-formed plaintext (only a key holder can write it) is still refused:
non-zero alignment padding and BOOL bytes other than 0 and 1 are FormatErrors, and nothing of the
load survives in the destination."""

from __future__ import annotations

import io

import numpy as np
import pytest

import sealtensors
import sealtensors.numpy as stn
from sealtensors import FormatError, writer
from sealtensors.format.index import layout
from sealtensors.reader import SealedReader

KEY = bytes(range(32))


def _sealed(entries, pieces, *, padding_byte: int = 0) -> bytes:
    index = layout(entries)
    out = io.BytesIO()
    original = writer._DataEncryptor.pad_to

    def pad_with(self, position):
        gap = position - self.position
        if gap > 0:
            self.write(bytes([padding_byte]) * gap)

    writer._DataEncryptor.pad_to = pad_with
    try:
        writer.write_sealed(out, index, ((piece,) for piece in pieces), KEY)
    finally:
        writer._DataEncryptor.pad_to = original
    return out.getvalue()


def test_well_formed_plaintext_loads():
    blob = _sealed([("a", "U8", (3,)), ("b", "BOOL", (2,))], [b"\x01\x02\x03", b"\x00\x01"])
    loaded = stn.load(blob, KEY)
    assert loaded["b"].tolist() == [False, True]


def test_non_zero_padding_is_refused_and_the_buffer_wiped():
    blob = _sealed([("a", "U8", (3,)), ("b", "U8", (2,))], [b"\x01\x02\x03", b"\x04\x05"],
                   padding_byte=0x7F)
    with pytest.raises(FormatError, match="padding"):
        stn.load(blob, KEY)
    with SealedReader.from_bytes(blob, KEY) as reader:
        destination = np.full(reader.data_length, 0x55, dtype=np.uint8)
        with pytest.raises(FormatError):
            reader.read_all_into(destination)
    assert not destination.any()


def test_bool_bytes_other_than_zero_and_one_are_refused(tmp_path):
    blob = _sealed([("flags", "BOOL", (4,))], [b"\x00\x01\x05\x01"])
    with pytest.raises(FormatError, match="BOOL"):
        stn.load(blob, KEY)
    path = tmp_path / "m.sealed"
    path.write_bytes(blob)
    with sealtensors.safe_open(path, "np", key=KEY) as handle:
        with pytest.raises(FormatError, match="BOOL"):
            handle.get_tensor("flags")
        with pytest.raises(FormatError, match="BOOL"):
            handle.get_slice("flags")[2:]


def test_verify_applies_the_plaintext_rules_and_reports_progress(tmp_path):
    bad_padding = _sealed([("a", "U8", (3,)), ("b", "U8", (2,))], [b"\x01\x02\x03", b"\x04\x05"],
                          padding_byte=1)
    bad_bool = _sealed([("flags", "BOOL", (3,))], [b"\x00\x02\x01"])
    good = _sealed([("a", "U8", (70_000,)), ("flags", "BOOL", (2,))], [bytes(70_000), b"\x01\x00"])
    for blob, message in ((bad_padding, "padding"), (bad_bool, "BOOL")):
        path = tmp_path / f"{message}.sealed"
        path.write_bytes(blob)
        with pytest.raises(FormatError, match=message):
            sealtensors.verify(path, KEY)
    path = tmp_path / "good.sealed"
    path.write_bytes(good)
    seen = []
    summary = sealtensors.verify(path, KEY, progress=seen.append)
    assert seen and seen[-1] == summary["data_size"] and seen == sorted(seen)


@pytest.mark.parametrize("span_chunks", [1, 2, 4096])
def test_verify_rules_across_span_boundaries(span_chunks):
    # BOOL tensor straddling the first chunk boundary; padding before a later tensor.
    entries = [("lead", "U8", (16_000,)), ("flags", "BOOL", (1_000,)), ("tail", "U8", (33,)),
               ("last", "U8", (5,))]
    pieces = [bytes(16_000), b"\x01" * 1_000, bytes(33), bytes(5)]
    with SealedReader.from_bytes(_sealed(entries, pieces), KEY) as reader:
        reader.verify(span_chunks=span_chunks)
    late_bool = [bytes(16_000), b"\x01" * 999 + b"\x09", bytes(33), bytes(5)]
    with SealedReader.from_bytes(_sealed(entries, late_bool), KEY) as reader:
        with pytest.raises(FormatError, match="BOOL"):
            reader.verify(span_chunks=span_chunks)
    with SealedReader.from_bytes(_sealed(entries, pieces, padding_byte=3), KEY) as reader:
        with pytest.raises(FormatError, match="padding"):
            reader.verify(span_chunks=span_chunks)


def test_unseal_refuses_ill_formed_plaintext_and_writes_nothing(tmp_path):
    blob = _sealed([("flags", "BOOL", (3,))], [b"\x00\x07\x01"])
    source = tmp_path / "bad.sealed"
    source.write_bytes(blob)
    with pytest.raises(FormatError, match="BOOL"):
        sealtensors.unseal_file(source, tmp_path / "out.safetensors", KEY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.sealed"]
