"""The C engine's resident helper pool: reuse across calls, concurrent callers, fork().

Helper threads are created on the first parallel call and reused afterwards. These tests check
what must not change because of that: results and the lowest failing chunk under concurrent calls
with different thread counts, and a forked child (which inherits no threads) decrypting in
parallel after its parent did.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from sealtensors.engine import cengine
from sealtensors.errors import IntegrityError

pytestmark = pytest.mark.c_engine_only

CHUNK = 16384
ENC = CHUNK + 16
CHUNKS = 300
PLAIN = CHUNKS * CHUNK + 777
KEY, NONCE = bytes(range(32)), bytes(range(12))


@pytest.fixture
def engine(backend):
    return cengine.CEngine(backend.split("-", 1)[1])


@pytest.fixture
def sealed(engine):
    plaintext = os.urandom(PLAIN)
    ciphertext = bytearray(PLAIN + (CHUNKS + 1) * 16)
    engine.encrypt_span(KEY, NONCE, 0, plaintext, ciphertext, final=True, threads=1)
    return plaintext, bytes(ciphertext)


def _decrypt_all_ways(engine, ciphertext, fd, threads):
    """Decrypt from memory and with pread; returns both plaintexts."""
    out_mem, out_fd = bytearray(PLAIN), bytearray(PLAIN)
    engine.decrypt_span(KEY, NONCE, 0, ciphertext, out_mem, final=True, threads=threads)
    engine.decrypt_span_fd(KEY, NONCE, 0, fd, 0, len(ciphertext), out_fd, final=True,
                           threads=threads)
    return bytes(out_mem), bytes(out_fd)


def _in_child(body) -> int:
    """Run body() in a forked child (killed by SIGALRM if it hangs); returns its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(60)  # a deadlocked child dies instead of hanging the test run
            code = 0 if body() else 3
        except BaseException:  # noqa: BLE001 - report anything as a failed child
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def test_forked_child_decrypts_in_parallel(engine, sealed, tmp_path):
    """The parent's helpers do not exist in a child: its first parallel call must start new ones
    (not wait forever for the parent's), and the parent's pool must still work afterwards."""
    plaintext, ciphertext = sealed
    path = tmp_path / "span"
    path.write_bytes(ciphertext)
    with open(path, "rb") as f:
        assert _decrypt_all_ways(engine, ciphertext, f.fileno(), 4) == (plaintext, plaintext)

        def child():
            return all(_decrypt_all_ways(engine, ciphertext, f.fileno(), threads) ==
                       (plaintext, plaintext) for threads in (2, 4, 7))

        assert _in_child(child) == 0
        assert _decrypt_all_ways(engine, ciphertext, f.fileno(), 4) == (plaintext, plaintext)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads running
def test_fork_while_another_thread_decrypts(engine, sealed):
    """fork() from one thread while another is in the middle of parallel calls: the child gets a
    consistent, empty pool."""
    plaintext, ciphertext = sealed
    stop = threading.Event()
    errors = []

    def busy():
        out = bytearray(PLAIN)
        while not stop.is_set():
            engine.decrypt_span(KEY, NONCE, 0, ciphertext, out, final=True, threads=3)
            if out != plaintext:
                errors.append("wrong plaintext in the parent")

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        def child():
            out = bytearray(PLAIN)
            engine.decrypt_span(KEY, NONCE, 0, ciphertext, out, final=True, threads=3)
            return out == plaintext

        for _ in range(5):
            assert _in_child(child) == 0
    finally:
        stop.set()
        thread.join()
    assert not errors


def test_concurrent_callers_share_the_pool(engine, sealed):
    """More callers than helpers, each with its own thread count, tampered spans among them: every
    call gets its own right answer and the lowest failing chunk, and none deadlocks."""
    plaintext, ciphertext = sealed
    failures = []

    def caller(k):
        for round_ in range(6):
            threads = (k * 3 + round_) % 9  # 0 = the default
            out = bytearray(PLAIN)
            engine.decrypt_span(KEY, NONCE, 0, ciphertext, out, final=True, threads=threads)
            if out != plaintext:
                failures.append(("plaintext", k, threads))
            bad = bytearray(ciphertext)
            low = (k * 41 + round_ * 13) % CHUNKS
            bad[low * ENC + 5] ^= 1
            bad[(CHUNKS - 1) * ENC] ^= 1  # a higher failure must not win
            out = bytearray(b"\xaa") * PLAIN
            try:
                engine.decrypt_span(KEY, NONCE, 0, bytes(bad), out, final=True, threads=threads)
                failures.append(("tampered span decrypted", k, threads))
            except IntegrityError as exc:
                if exc.chunk_index != low or any(out):
                    failures.append(("tampered", k, threads, exc.chunk_index, low))

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in callers), "a caller is stuck"
    assert not failures, failures[:5]


def _threads_alive() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture
def short_idle_timeout():
    cengine.set_pool_idle_timeout(0.1)
    try:
        yield 0.1
    finally:
        cengine.set_pool_idle_timeout(2.0)


def _wait_for(predicate, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_idle_helpers_retire(engine, sealed, short_idle_timeout):
    """A call with many threads leaves many helpers; once idle past the timeout they exit (threads
    and memory), and the next parallel call starts what it needs again."""
    plaintext, ciphertext = sealed
    before = _threads_alive()
    out = bytearray(PLAIN)
    engine.decrypt_span(KEY, NONCE, 0, ciphertext, out, final=True, threads=16)
    assert out == plaintext
    total, idle = cengine.pool_size()
    assert total >= 1 and idle == total
    assert _wait_for(lambda: cengine.pool_size() == (0, 0))
    assert _wait_for(lambda: _threads_alive() <= before)
    out[:] = bytes(PLAIN)
    engine.decrypt_span(KEY, NONCE, 0, ciphertext, out, final=True, threads=4)
    assert out == plaintext
    assert 1 <= cengine.pool_size()[0] <= 3


def test_pool_shrinks_to_what_recent_calls_use(engine, sealed, short_idle_timeout):
    """After one threads=16 call, calls with threads=4 keep reusing the three helpers that came
    back last; the other twelve retire."""
    import time

    plaintext, ciphertext = sealed
    out = bytearray(PLAIN)
    engine.decrypt_span(KEY, NONCE, 0, ciphertext, out, final=True, threads=16)
    grown = cengine.pool_size()[0]
    assert grown > 3
    stop = time.monotonic() + 1.0
    while time.monotonic() < stop:
        engine.decrypt_span(KEY, NONCE, 0, ciphertext, out, final=True, threads=4)
        assert out == plaintext
    assert 1 <= cengine.pool_size()[0] <= 3


def test_no_idle_timeout_keeps_helpers(engine, sealed):
    import time

    plaintext, ciphertext = sealed
    cengine.set_pool_idle_timeout(0)
    try:
        out = bytearray(PLAIN)
        engine.decrypt_span(KEY, NONCE, 0, ciphertext, out, final=True, threads=8)
        kept = cengine.pool_size()[0]
        time.sleep(0.3)
        assert cengine.pool_size()[0] == kept > 0
    finally:
        cengine.set_pool_idle_timeout(2.0)
    with pytest.raises(ValueError):
        cengine.set_pool_idle_timeout(-1)
