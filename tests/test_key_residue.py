"""Key material left behind: after a load or a verify returned and the garbage collector ran, how
many copies of the data message's AES key can still be read anywhere in the process?

Each operation runs in a fresh process (tests/key_residue_probe.py) that scans every readable
mapping of its own memory through /proc/self/mem for the 32 key bytes. The key is known here because
the test opens the file itself (in this process, which is not scanned) and hands the probe the key
masked, so the probe never holds the whole key in one piece.

The bounds are the ones SECURITY.md ("What is wiped") documents: what Python cannot wipe, per
reader opened: the immutable ``bytes`` HKDF block that hmac returns and the ``bytes`` key objects of
``chunked.MessageKeys`` / pycryptodome's GCM object (Python engine); the C engine copies the key into
private memory it wipes. Before the hardening pass, ``load_file`` and ``verify`` left 3 copies with
the C engine and 3 or 4 with the Python engine (one reader opened).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sealtensors
import sealtensors.numpy as stn
from sealtensors.crypto import chunked
from sealtensors.reader import SealedReader

pytestmark = pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs /proc")

KEY = bytes(range(32))
PROBE = Path(__file__).with_name("key_residue_probe.py")

# Operation -> readers it opens (each derives the data message's keys once).
OPERATIONS = {
    "numpy.load_file": 1,
    "verify": 1,
    "load_into": 2,  # buffer_size, then load_into
    "load_into_names": 2,
    "safe_open": 1,
    "torch.load_file": 1,
    "unseal_file": 1,
}
# Copies per reader opened that may stay readable after it is closed (SECURITY.md).
ALLOWED_PER_READER = {"python": 2, "c": 1}


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    """A sealed file and its data message's AES key, masked for the probe."""
    directory = tmp_path_factory.mktemp("residue")
    path = directory / "model.sealed"
    rng = np.random.default_rng(0)
    stn.save_file({"w": rng.standard_normal((300, 100)).astype(np.float32),
                   "f": np.array([True, False])}, path, KEY)
    opened = []
    real_open_message = chunked.open_message

    def capture(*args, **kwargs):
        keys = real_open_message(*args, **kwargs)
        opened.append(bytes(keys.aead_key))
        return keys

    chunked.open_message = capture
    try:
        with SealedReader.open(path, KEY):
            pass
    finally:
        chunked.open_message = real_open_message
    aead_key = opened[-1]  # the data message is opened last (after the slots and the index)
    mask = secrets.token_bytes(32)
    masked = bytes(a ^ b for a, b in zip(aead_key, mask))
    return path, masked, mask


def _probe(backend: str, operation: str, sealed) -> int:
    path, masked, mask = sealed
    env = dict(os.environ)
    if backend == "python":
        env["SEALTENSORS_BACKEND"] = "python"
    else:
        env["SEALTENSORS_BACKEND"] = "c"
        env["SEALTENSORS_AES"] = backend.split("-", 1)[1]
    result = subprocess.run(
        [sys.executable, str(PROBE), operation, str(path), KEY.hex(), masked.hex(), mask.hex(),
         str(path.parent)],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["copies"]


def test_the_probe_finds_a_key_that_is_still_held(backend, sealed):
    """The control: a reader left open holds the key, and the scan must see it (else a count of
    zero below would prove nothing)."""
    assert _probe(backend, "hold_reader", sealed) >= 1
    assert _probe(backend, "nothing", sealed) == 0


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_key_copies_left_after_an_operation_are_bounded(backend, operation, sealed):
    kind = "python" if backend == "python" else "c"
    copies = _probe(backend, operation, sealed)
    allowed = OPERATIONS[operation] * ALLOWED_PER_READER[kind]
    assert copies <= allowed, (
        f"{copies} copies of the data message's AES key left after {operation} on {backend}; "
        f"SECURITY.md allows {allowed}")


def test_closing_a_reader_forgets_its_data_keys(tmp_path):
    path = tmp_path / "m.sealed"
    stn.save_file({"x": np.arange(10, dtype=np.int32)}, path, KEY)
    reader = SealedReader.open(path, KEY)
    assert reader.read_range(0, 8).nbytes == 8
    reader.close()
    assert not hasattr(reader, "_data_keys")
    with pytest.raises(ValueError, match="closed"):
        reader.read_range(0, 8)
    handle = sealtensors.safe_open(path, "np", key=KEY)
    inner = handle._reader
    del handle  # dropped without close(): collected, and its reader forgets the keys
    assert not hasattr(inner, "_data_keys")


def test_keys_outlive_close_while_a_read_is_in_flight(tmp_path):
    """close() from another thread while a read runs: the read completes with the keys, which
    are forgotten when it is done."""
    path = tmp_path / "m.sealed"
    data = np.arange(200_000, dtype=np.int32)
    stn.save_file({"x": data}, path, KEY)
    reader = SealedReader.open(path, KEY)
    closed_during_read = []
    real_decrypt = chunked.decrypt_chunk_range_fd_into

    def decrypt_then_close(*args, **kwargs):
        if not closed_during_read:
            closed_during_read.append(True)
            reader.close()  # the read is in flight: the keys must stay until it is done
        return real_decrypt(*args, **kwargs)

    chunked.decrypt_chunk_range_fd_into = decrypt_then_close
    out = np.empty(reader.data_length, np.uint8)
    try:
        reader.read_all_into(out)  # one engine call
    finally:
        chunked.decrypt_chunk_range_fd_into = real_decrypt
    assert closed_during_read and np.array_equal(out.view(np.int32), data)
    assert not hasattr(reader, "_data_keys")
