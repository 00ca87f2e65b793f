"""One crafted file, every entry point, one outcome: the plaintext rules of FORMAT.md (BOOL bytes 0
or 1; zero alignment padding) hold on every reader path.

Two authenticated but ill-formed files are built with the library's own writer (only a key holder
can make them): one whose BOOL tensor holds a byte 7 (in the second chunk, the tensor straddling
the chunk boundary), one whose alignment padding is not zero. Each goes through every way of
reading a sealed file, and a well-formed twin through the same ones as the control.

Expected outcome, the same everywhere:
- BOOL byte 7: FormatError on every path (each path here returns the byte, so each checks it);
- non-zero padding: FormatError on every path that returns the whole data section (numpy and torch
  loads, the GPU staging ring, ``load_into`` without names, verify, unseal, the CLI); paths that
  return whole tensors only (``get_tensor``, ``get_slice``, ``load_into(names=...)``,
  ``load_shard``) never hand out padding, check none, and return the right tensors;
- and on failure the caller-visible output (a ``load_into`` buffer, the device destination, the
  staging ring, an unseal destination) holds nothing.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

import sealtensors
import sealtensors.numpy as stn
from sealtensors import FormatError, writer
from sealtensors.format.index import layout

KEY = bytes(range(32))
BAD_BOOL_AT = 90  # element of "flags" holding the byte 7; at data offset 16410, in chunk 1

# "flags" straddles the first chunk boundary (16384); padding [16420, 16448) precedes "tail".
ENTRIES = [("lead", "U8", (16_320,)), ("flags", "BOOL", (100,)), ("tail", "F32", (10,))]
LEAD = (np.arange(16_320) % 251).astype(np.uint8)
FLAGS = (np.arange(100) % 2).astype(np.uint8)
TAIL = np.linspace(-1, 1, 10, dtype=np.float32)


def _flags(bad: bool) -> np.ndarray:
    flags = FLAGS.copy()
    if bad:
        flags[BAD_BOOL_AT] = 7
    return flags


def _seal(flags: np.ndarray, padding_byte: int, monkeypatch) -> bytes:
    """A sealed file written by the library's writer, its padding filled with ``padding_byte``."""
    def pad_with(encryptor, position):
        gap = position - encryptor.position
        if gap > 0:
            encryptor.write(bytes([padding_byte]) * gap)

    with monkeypatch.context() as patch:
        patch.setattr(writer._DataEncryptor, "pad_to", pad_with)
        out = io.BytesIO()
        pieces = [LEAD, flags, TAIL.view(np.uint8)]
        writer.write_sealed(out, layout(ENTRIES), ((piece,) for piece in pieces), KEY)
    return out.getvalue()


CASES = {
    "good": dict(flags=_flags(False), padding=0, error=None),
    "bool": dict(flags=_flags(True), padding=0, error="BOOL"),
    "padding": dict(flags=_flags(False), padding=0x7F, error="padding"),
}


@pytest.fixture(params=sorted(CASES))
def crafted(request, tmp_path, monkeypatch):
    case = CASES[request.param]
    blob = _seal(case["flags"], case["padding"], monkeypatch)
    path = tmp_path / f"{request.param}.sealed"
    path.write_bytes(blob)
    return request.param, case, blob, path


def _plain_safetensors(path, flags: np.ndarray) -> None:
    """A plain .safetensors file (written by hand, per its spec) with the same three tensors."""
    pieces = [LEAD.tobytes(), flags.tobytes(), TAIL.tobytes()]
    header, offset = {}, 0
    for (name, dtype, shape), piece in zip(ENTRIES, pieces):
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(piece)]}
        offset += len(piece)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(pieces))


# --- the entry points; each returns {name: uint8 bytes of the tensor} -------------------------

def _raw(tensors) -> dict[str, bytes]:
    out = {}
    for name, value in tensors.items():
        if not isinstance(value, np.ndarray):  # torch
            value = value.cpu().contiguous().reshape(-1).view(_torch().uint8).numpy()
        out[name] = np.ascontiguousarray(value).reshape(-1).view(np.uint8).tobytes()
    return out


def _torch():
    import torch

    return torch


class HostDevice:
    """A synchronous stand-in for a GPU: device memory is a numpy array; records what it saw."""

    def __init__(self):
        self.staging, self.destinations, self.released = [], [], False

    def allocate_staging(self, nbytes):
        self.staging.append(np.full(nbytes, 0x55, np.uint8))
        return self.staging[-1]

    def allocate_destination(self, nbytes):
        self.destinations.append(np.full(nbytes, 0xAA, np.uint8))
        return self.destinations[-1]

    def copy_async(self, source, destination, offset):
        destination[offset:offset + len(source)] = source
        return None

    def wait(self, event):
        pass

    def synchronize(self):
        pass

    def release_destination(self, destination):
        self.released = True
        destination.fill(0)


def numpy_load_file(path, blob, tmp_path, monkeypatch):
    return _raw(stn.load_file(path, KEY))


def numpy_load(path, blob, tmp_path, monkeypatch):
    return _raw(stn.load(blob, KEY))


def torch_load_file(path, blob, tmp_path, monkeypatch):
    import sealtensors.torch as stt

    return _raw(stt.load_file(path, KEY))


def torch_load(path, blob, tmp_path, monkeypatch):
    import sealtensors.torch as stt

    return _raw(stt.load(blob, KEY))


def torch_load_file_device(path, blob, tmp_path, monkeypatch):
    """``load_file(device="cuda:0")`` through the real staging ring, with a host fake as the GPU."""
    import sealtensors.engine.torch_cuda as torch_cuda
    import sealtensors.torch as stt

    device = HostDevice()
    monkeypatch.setattr(stt, "check_device", lambda requested: _torch().device("cuda:0"))
    monkeypatch.setattr(torch_cuda, "TorchCudaDevice", lambda requested: device)
    try:
        result = stt.load_file(path, KEY, device="cuda:0", staging_slots=2, staging_bytes=16384)
    except FormatError:
        assert device.released and not device.destinations[0].any(), "device memory kept"
        assert not any(slot.any() for slot in device.staging), "staging ring not wiped"
        raise
    return _raw(result)


def load_into_all(path, blob, tmp_path, monkeypatch):
    buffer = np.full(sealtensors.buffer_size(path, KEY) + 64, 0x55, np.uint8)
    try:
        return _raw(sealtensors.load_into(path, KEY, buffer))
    except FormatError:
        assert not buffer[:-64].any() and (buffer[-64:] == 0x55).all(), "buffer not wiped"
        raise


def load_into_names(path, blob, tmp_path, monkeypatch):
    names = ["tail", "flags", "lead"]
    buffer = np.full(sealtensors.buffer_size(path, KEY, names), 0x55, np.uint8)
    try:
        return _raw(sealtensors.load_into(path, KEY, buffer, names=names))
    except FormatError:
        assert not buffer.any(), "buffer not wiped"
        raise


def safe_open_get_tensor(path, blob, tmp_path, monkeypatch):
    with sealtensors.safe_open(path, "np", key=KEY) as handle:
        return _raw({name: handle.get_tensor(name) for name in handle.keys()})


def safe_open_get_tensor_pt(path, blob, tmp_path, monkeypatch):
    with sealtensors.safe_open(path, "pt", key=KEY) as handle:
        return _raw({name: handle.get_tensor(name) for name in handle.keys()})


def safe_open_get_slice(path, blob, tmp_path, monkeypatch):
    with sealtensors.safe_open(path, "np", key=KEY) as handle:
        return _raw({name: handle.get_slice(name)[...] for name in handle.keys()})


def safe_open_get_slice_rows(path, blob, tmp_path, monkeypatch):
    """Row slices that cover every element (so every BOOL byte is returned by one of them)."""
    with sealtensors.safe_open(path, "np", key=KEY) as handle:
        out = {}
        for name in handle.keys():
            piece = handle.get_slice(name)
            rows = piece.get_shape()[0]
            out[name] = np.concatenate([piece[:rows // 3], piece[rows // 3:]])
        return _raw(out)


def torch_load_shard(path, blob, tmp_path, monkeypatch):
    import sealtensors.torch as stt

    halves = [stt.load_shard(path, KEY, rank=rank, world_size=2) for rank in (0, 1)]
    torch = _torch()
    return _raw({name: torch.cat([halves[0][name], halves[1][name]]) for name in halves[0]})


def verify(path, blob, tmp_path, monkeypatch):
    sealtensors.verify(path, KEY)
    return None


def unseal_file(path, blob, tmp_path, monkeypatch):
    out = tmp_path / "unsealed.safetensors"
    try:
        sealtensors.unseal_file(path, out, KEY)
    except FormatError:
        assert not out.exists(), "unseal left output behind"
        raise
    return _raw(stn_plain_load(out))


def stn_plain_load(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def cli_unseal(path, blob, tmp_path, monkeypatch):
    from sealtensors import cli

    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    out = tmp_path / "cli.safetensors"
    code = cli.main(["unseal", str(path), str(out), "--key-file", str(key_file)])
    if code == cli.EXIT_FORMAT:
        assert not out.exists()
        raise FormatError("the CLI reported a malformed file (exit 4)")
    assert code == cli.EXIT_OK
    return _raw(stn_plain_load(out))


WHOLE_DATA = [numpy_load_file, numpy_load, torch_load_file, torch_load, torch_load_file_device,
              load_into_all, verify, unseal_file, cli_unseal]
WHOLE_TENSORS = [load_into_names, safe_open_get_tensor, safe_open_get_tensor_pt,
                 safe_open_get_slice, safe_open_get_slice_rows, torch_load_shard]


def _expected_bytes(flags):
    return {"lead": LEAD.tobytes(), "flags": flags.tobytes(), "tail": TAIL.tobytes()}


@pytest.mark.parametrize("entry", WHOLE_DATA + WHOLE_TENSORS, ids=lambda f: f.__name__)
def test_same_outcome_on_every_path(entry, crafted, tmp_path, monkeypatch):
    name, case, blob, path = crafted
    error = case["error"]
    if error == "padding" and entry in WHOLE_TENSORS:
        error = None  # documented: padding is checked by the reads that return it
    if error is None:
        result = entry(path, blob, tmp_path, monkeypatch)
        if result is not None:
            assert result == _expected_bytes(case["flags"])
        return
    with pytest.raises(FormatError, match=error if entry is not cli_unseal else None):
        entry(path, blob, tmp_path, monkeypatch)


def test_cli_seal_then_unseal_of_a_bool_byte_7(tmp_path):
    """The user's route: a plain .safetensors file with a BOOL byte 7 goes through the CLI's seal
    and unseal; the pipeline ends in the malformed-file exit code (whichever step refuses) and
    leaves no plaintext output."""
    from sealtensors import cli

    plain = tmp_path / "bad.safetensors"
    _plain_safetensors(plain, _flags(True))
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    sealed, out = tmp_path / "bad.sealed", tmp_path / "back.safetensors"
    code = cli.main(["seal", str(plain), str(sealed), "--key-file", str(key_file)])
    if code == cli.EXIT_OK:
        code = cli.main(["unseal", str(sealed), str(out), "--key-file", str(key_file)])
    assert code == cli.EXIT_FORMAT
    assert not out.exists()


def test_cli_seal_then_unseal_round_trips_a_good_file(tmp_path):
    from sealtensors import cli

    plain = tmp_path / "good.safetensors"
    _plain_safetensors(plain, _flags(False))
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    sealed, out = tmp_path / "good.sealed", tmp_path / "back.safetensors"
    assert cli.main(["seal", str(plain), str(sealed), "--key-file", str(key_file)]) == 0
    assert cli.main(["unseal", str(sealed), str(out), "--key-file", str(key_file)]) == 0
    assert _raw(stn_plain_load(out)) == _expected_bytes(_flags(False))


def test_a_partial_read_checks_exactly_the_bytes_it_returns(crafted):
    """Documented partial-read behaviour: rows of a BOOL tensor that do not hold the bad byte load;
    the row that does fails; padding next to a tensor is never returned by a tensor read."""
    name, case, blob, path = crafted
    with sealtensors.safe_open(path, "np", key=KEY) as handle:
        flags = handle.get_slice("flags")
        assert flags[:BAD_BOOL_AT].tolist() == case["flags"][:BAD_BOOL_AT].astype(bool).tolist()
        if name == "bool":
            with pytest.raises(FormatError, match="BOOL"):
                flags[BAD_BOOL_AT]
        else:
            assert flags[BAD_BOOL_AT] == bool(case["flags"][BAD_BOOL_AT])
        assert handle.get_tensor("tail").tolist() == TAIL.tolist()
