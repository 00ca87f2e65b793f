"""Writers killed with SIGKILL at random moments: the destination is absent or complete, never
partial, and (thanks to unnamed O_TMPFILE files) no temporary file is left behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import sealtensors
import sealtensors.numpy as stn

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))

SEAL_LOOP = """
import sys, sealtensors
src, dst, key = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
print("ready", flush=True)
sealtensors.seal_file(src, dst, key)
"""

REWRAP_LOOP = """
import sys, sealtensors
path, a, b = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
print("ready", flush=True)
while True:
    sealtensors.rewrap(path, a, add=[b])
    sealtensors.rewrap(path, a, remove=[b])
"""

# The writers run in child processes on the default engine, whatever the fixture selects: once is
# enough.
pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL semantics"),
              pytest.mark.engine_independent]


def _start(script: str, *args: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready", child.stderr.read()
    return child


def _kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    child.stderr.close()


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    from safetensors.numpy import save_file

    directory = tmp_path_factory.mktemp("plain")
    path = directory / "model.safetensors"
    rng = np.random.default_rng(3)
    save_file({f"w{i}": rng.standard_normal(1 << 20).astype(np.float32) for i in range(8)},
              str(path))
    return path


def test_seal_killed_at_random_leaves_nothing_or_a_whole_file(plain_model, tmp_path):
    rng = random.Random(11)
    outcomes = {"absent": 0, "complete": 0}
    for attempt in range(8):
        directory = tmp_path / f"round{attempt}"
        directory.mkdir()
        destination = directory / "model.sealed"
        child = _start(SEAL_LOOP, str(plain_model), str(destination), KEY_A.hex())
        time.sleep(rng.uniform(0.0, 0.25))
        _kill(child)
        names = sorted(os.listdir(directory))
        assert names in ([], ["model.sealed"]), f"stray files after SIGKILL: {names}"
        if names:
            sealtensors.verify(destination, KEY_A)
            outcomes["complete"] += 1
        else:
            outcomes["absent"] += 1
    assert sum(outcomes.values()) == 8


def test_in_place_rewrap_killed_at_random_keeps_the_file_readable(tmp_path):
    path = tmp_path / "model.sealed"
    rng_data = np.random.default_rng(5)
    stn.save_file({"w": rng_data.standard_normal(1 << 21).astype(np.float32)}, path, KEY_A)
    expected = stn.load_file(path, KEY_A)["w"].copy()
    rng = random.Random(13)
    for _ in range(10):
        child = _start(REWRAP_LOOP, str(path), KEY_A.hex(), KEY_B.hex())
        time.sleep(rng.uniform(0.0, 0.15))
        _kill(child)
        assert np.array_equal(stn.load_file(path, KEY_A)["w"], expected)
        # Replacing a file needs a name to rename from for a few microseconds: a kill inside that
        # window may leave one `.model.sealed.<random>.tmp`, never a partial `model.sealed`.
        for name in os.listdir(tmp_path):
            assert name == "model.sealed" or (name.startswith(".model.sealed.")
                                              and name.endswith(".tmp")), name
