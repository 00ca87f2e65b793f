"""The C engine releases the GIL: Python threads run while it works, and concurrent calls are safe."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sealtensors.engine.spec import CHUNK_SIZE, span_ciphertext_length

cengine = pytest.importorskip("sealtensors.engine.cengine", reason="C engine not built")
PROVIDERS = cengine.available_providers()


@pytest.fixture(autouse=True)
def backend():
    """Overrides conftest's every-backend parametrization: these tests are about the C engine."""
    return "explicit"


@pytest.fixture(params=PROVIDERS)
def engine(request):
    return cengine.CEngine(request.param)


def test_python_threads_run_during_a_large_decrypt(engine):
    size = 512 << 20
    key, nonce = os.urandom(32), os.urandom(12)
    plaintext = bytearray(size)
    plaintext[::4096] = os.urandom(size // 4096)
    ciphertext = bytearray(span_ciphertext_length(size, True))
    engine.encrypt_span(key, nonce, 0, plaintext, ciphertext, final=True, threads=0)
    out = bytearray(size)
    out[::4096] = bytes(size // 4096)  # fault the destination in before timing

    ticks: list[float] = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        while len(ticks) < 1000:  # the spinner is up and running
            time.sleep(0.001)
        begin = time.perf_counter()
        engine.decrypt_span(key, nonce, 0, ciphertext, out, final=True, threads=1)
        end = time.perf_counter()
    finally:
        stop.set()
        thread.join()
    assert out == plaintext
    # With the GIL held for the whole call, the spinner could not run at all in the call's middle.
    margin = (end - begin) * 0.1
    inside = [t for t in ticks if begin + margin < t < end - margin]
    assert len(inside) > 1000, (len(inside), end - begin)


def test_eight_threads_with_different_keys(engine):
    rng = __import__("random").Random(1234)
    jobs = []
    for i in range(8):
        length = rng.randrange(0, 6 << 20)
        key, nonce = os.urandom(32), os.urandom(12)
        plaintext = os.urandom(length)
        ciphertext = bytearray(span_ciphertext_length(length, True))
        engine.encrypt_span(key, nonce, i, plaintext, ciphertext, final=True)
        jobs.append((i, key, nonce, plaintext, bytes(ciphertext)))

    with tempfile.TemporaryFile() as f:
        offsets = []
        for job in jobs:
            offsets.append(f.tell())
            f.write(job[4])
        f.flush()
        fd = f.fileno()

        def run(round_, job):
            i, key, nonce, plaintext, ciphertext = job
            out = bytearray(len(plaintext))
            threads = (i + round_) % 4
            if (i + round_) % 2:
                engine.decrypt_span(key, nonce, i, ciphertext, out, final=True, threads=threads)
            else:
                engine.decrypt_span_fd(key, nonce, i, fd, offsets[i], len(ciphertext), out,
                                       final=True, threads=threads)
            return out == plaintext

        with ThreadPoolExecutor(max_workers=8) as pool:
            for round_ in range(3):
                results = list(pool.map(lambda job: run(round_, job), jobs))
                assert all(results), results


def test_encrypt_while_decrypting(engine):
    """Encryptions and decryptions of unrelated spans in flight together stay independent."""
    key, nonce = os.urandom(32), os.urandom(12)
    plaintext = os.urandom(64 * CHUNK_SIZE)
    reference = bytearray(span_ciphertext_length(len(plaintext), False))
    engine.encrypt_span(key, nonce, 0, plaintext, reference, final=False, threads=1)

    def task(i):
        if i % 2:
            out = bytearray(len(reference))
            engine.encrypt_span(key, nonce, 0, plaintext, out, final=False, threads=2)
            return out == reference
        out = bytearray(len(plaintext))
        engine.decrypt_span(key, nonce, 0, reference, out, final=False, threads=2)
        return out == plaintext

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(task, range(64)))
