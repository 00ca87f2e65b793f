"""Regression tests from a review of the C engine (csrc/): error paths, fault injection, parsing.

The fault-injection driver (csrc/tests/fault_inject.c) is compiled here with the system compiler
under AddressSanitizer + LeakSanitizer and links the engine with ``-Wl,--wrap`` around its own
allocations, thread and mutex creation and OpenSSL calls, so every setup and failure path runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from sealtensors.engine import cengine

pytestmark = pytest.mark.c_engine_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
WRAPPED = ["malloc", "calloc", "posix_memalign", "pthread_create", "pthread_mutex_init",
           "EVP_CIPHER_CTX_new", "EVP_CipherInit_ex", "explicit_bzero"]


def _version() -> str:
    with open(os.path.join(ROOT, "src", "sealtensors", "_version.py"), encoding="utf-8") as f:
        return re.search(r'^__version__\s*=\s*"([^"]+)"', f.read(), re.M).group(1)


def _compile_driver(tmp_path, sanitize: bool) -> str:
    cc = os.environ.get("CC", "gcc")
    if not shutil.which(cc):
        pytest.skip(f"no C compiler ({cc})")
    exe = str(tmp_path / "fault_inject")
    cmd = [cc, "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
           f'-DST_VERSION="{_version()}"', "-I" + CSRC,
           os.path.join(CSRC, "tests", "fault_inject.c"),
           *(os.path.join(CSRC, name) for name in
             ("engine.c", "provider_openssl.c", "provider_ipsecmb.c")),
           "-o", exe, "-Wl,--wrap=" + ",--wrap=".join(WRAPPED), "-lcrypto", "-lpthread"]
    if sanitize:
        cmd[1:1] = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-fno-omit-frame-pointer"]
    if "ipsecmb" in cengine.available_providers() and os.path.exists(
            "/usr/include/intel-ipsec-mb.h"):
        cmd[1:1] = ["-DST_HAVE_IPSECMB=1"]
        cmd.append("-lIPSec_MB")
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0:
        if sanitize and "sanitize" in built.stderr:
            return _compile_driver(tmp_path, False)
        pytest.skip(f"cannot build the fault-injection driver: {built.stderr[-2000:]}")
    return exe


def test_fault_injection_wipes_reports_and_does_not_leak(tmp_path, backend):
    """Every injected failure (allocation, thread or mutex creation, OpenSSL) either still yields
    the exact output on fewer workers or fails with the destination wiped, the lowest failing chunk
    reported, an empty OpenSSL error queue, and nothing leaked. A streamed decrypt (through the
    one-chunk bounce buffer) never copies a chunk that failed authentication into the destination."""
    exe = _compile_driver(tmp_path, sanitize=True)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=23",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    env.pop("LD_PRELOAD", None)
    provider = backend.split("-", 1)[1]
    run = subprocess.run([exe, provider], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    assert run.stdout.rstrip().endswith("ok")


@pytest.mark.parametrize("value", ["9" * 19, "9" * 25, "+" + "1" * 40, " " + "7" * 30])
def test_default_threads_huge_values_agree(monkeypatch, value, backend):
    """A positive integer too large for a C long is still a positive integer: capped at 256 by C
    and Python alike (C's strtol reported ERANGE and fell back to the CPU count)."""
    monkeypatch.setenv("SEALTENSORS_THREADS", value)
    assert cengine.default_threads() == 256
    assert cengine.lib.st_default_threads() == 256


def test_default_threads_survives_python_int_digit_limit(monkeypatch, backend):
    """More digits than Python's int() accepts (4300 by default) must not make every engine call
    raise ValueError; it is a huge positive integer, capped at 256 like in C."""
    limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300
    monkeypatch.setenv("SEALTENSORS_THREADS", "3" * (limit + 10))
    assert cengine.default_threads() == 256
    assert cengine.lib.st_default_threads() == 256
    monkeypatch.setenv("SEALTENSORS_THREADS", "0" * (limit + 10) + "5")
    assert cengine.default_threads() == 5 == cengine.lib.st_default_threads()
    monkeypatch.setenv("SEALTENSORS_THREADS", "0" * (limit + 10))
    assert cengine.default_threads() == cengine.lib.st_cpu_count() == cengine.lib.st_default_threads()


@pytest.mark.parametrize("offset", [2**64, -(2**64), 2**63, -1])
def test_empty_fd_span_ignores_the_offset_like_python(offset, backend):
    """An empty non-final span reads nothing: the Python engine accepts any offset, so must C
    (it raised OverflowError converting the offset to int64_t)."""
    from sealtensors.engine.pyengine import PythonEngine

    key, nonce = bytes(32), bytes(12)
    PythonEngine().decrypt_span_fd(key, nonce, 0, 0, offset, 0, bytearray(), final=False)
    cengine.CEngine(backend.split("-", 1)[1]).decrypt_span_fd(key, nonce, 0, 0, offset, 0,
                                                              bytearray(), final=False)
