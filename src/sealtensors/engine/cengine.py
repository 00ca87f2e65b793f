"""The C engine: AES-256-GCM over chunk spans in ``sealtensors._native`` (csrc/), with the GIL released.

Arguments are checked here first with :func:`~sealtensors.engine.spec.validate_span`, so messages and
exception types match the Python engine; the C code checks them again. Every C entry point returns a
status code; this module turns it into the exception the Python engine would raise:

- authentication failure or a truncated span -> :class:`IntegrityError` with ``chunk_index`` (the
  lowest failing chunk, whatever the thread timing), the destination wiped;
- a chunk that does not match its expected SHA-256 digest -> :class:`SignatureError` (an
  IntegrityError) with ``chunk_index``, the destination wiped;
- bad argument -> ``ValueError``; read failure -> ``OSError``; allocation failure -> ``MemoryError``;
  provider failure -> :class:`BackendError`.

Single messages (:mod:`sealtensors.crypto.aead` dispatches here): :meth:`CEngine.aead_seal`,
:meth:`CEngine.aead_open` and :meth:`CEngine.aead_open_into`, AES-256-GCM with AAD through the same
provider, with :mod:`sealtensors.crypto.aead`'s argument checks and messages.

AES provider: ``CEngine(provider=...)`` or ``SEALTENSORS_AES=auto|ipsecmb|openssl`` (default
``auto``: intel-ipsec-mb when it was compiled in and this CPU can run it, else OpenSSL).

Importing fails with ImportError when the compiled module belongs to another package version, so
``SEALTENSORS_BACKEND=auto`` falls back to Python and ``=c`` fails loudly.
"""

from __future__ import annotations

import errno as _errno
import os
import re

from .. import _version
from .spec import (
    CHUNK_SIZE,
    DIGEST_SIZE,
    KEY_SIZE,
    MAX_CHUNKS,
    NONCE_SIZE,
    TAG_SIZE,
    chunk_digests_view,
    validate_span,
)
from ..crypto.aead import _check as _aead_check
from ..errors import BackendError, IntegrityError, SignatureError

try:
    from .._native import ffi, lib
except ImportError as exc:  # not built: the auto backend falls back to Python
    raise ImportError(f"sealtensors C engine not built: {exc}") from exc

if lib.st_check_version(_version.__version__.encode()) != lib.ST_OK:
    raise ImportError(
        f"sealtensors._native was built for version {ffi.string(lib.st_version()).decode()}, "
        f"the package is {_version.__version__}: rebuild it (pip install -e .)"
    )
if (lib.st_key_size(), lib.st_nonce_size(), lib.st_tag_size(), lib.st_chunk_size(),
        lib.st_max_chunks(), lib.st_digest_size()) != (KEY_SIZE, NONCE_SIZE, TAG_SIZE, CHUNK_SIZE,
                                                       MAX_CHUNKS, DIGEST_SIZE):
    raise ImportError("sealtensors._native disagrees with _engine_api on the chunk geometry")

PROVIDERS = {"ipsecmb": lib.ST_PROVIDER_IPSECMB, "openssl": lib.ST_PROVIDER_OPENSSL}
_PROVIDER_NAMES = {value: name for name, value in PROVIDERS.items()}
PROVIDER_CHOICES = ("auto", *PROVIDERS)

__all__ = ["CEngine", "available_providers", "wipe", "lock_memory", "unlock_memory",
           "default_threads", "pool_size", "set_pool_idle_timeout"]


def available_providers() -> list[str]:
    """The AES providers this build can use on this CPU, preferred first."""
    return [name for name, value in PROVIDERS.items() if lib.st_provider_available(value)]


_MAX_THREADS = 256
_POSITIVE = re.compile(r"[ \t\n\v\f\r]*\+?([0-9]+)")


def default_threads() -> int:
    """Threads a call with ``threads=0`` uses: ``SEALTENSORS_THREADS`` when it is a positive integer,
    else the online CPUs this process may run on; at most 256.

    Same rule as C's ``st_default_threads()``, but the environment is read here, under the GIL: C
    code reading it while another Python thread sets a variable would race with ``setenv``.
    """
    text = os.environ.get("SEALTENSORS_THREADS", "")
    match = _POSITIVE.fullmatch(text)
    digits = match.group(1).lstrip("0") if match else ""
    if digits:
        # more than 3 significant digits is over the cap, and may be more than int() accepts
        return _MAX_THREADS if len(digits) > 3 else min(int(digits), _MAX_THREADS)
    return lib.st_cpu_count()


def pool_size() -> tuple[int, int]:
    """(helper threads alive, how many of them are idle) in the C engine's resident pool."""
    idle = ffi.new("int *")
    total = lib.st_pool_size(idle)
    return total, idle[0]


def set_pool_idle_timeout(seconds: float) -> None:
    """Helper threads idle for longer than ``seconds`` exit (default 2 s; 0: never). Process-wide."""
    if seconds < 0:
        raise ValueError("the idle timeout must be >= 0 seconds")
    lib.st_pool_set_idle_timeout(min(int(round(seconds * 1000)), 0xFFFFFFFF))


def _address(buffer, writable: bool):
    return ffi.from_buffer("uint8_t[]", buffer, require_writable=writable)


def wipe(buffer) -> None:
    """Overwrite a writable buffer with zeros in a way the compiler cannot optimise away."""
    view = memoryview(buffer)
    if view.nbytes:
        lib.st_wipe(_address(buffer, True), view.nbytes)


def lock_memory(buffer) -> int:
    """mlock the buffer's pages; returns 0 or the errno (e.g. ENOMEM / EPERM over the memlock limit)."""
    view = memoryview(buffer)
    return lib.st_lock_memory(_address(buffer, False), view.nbytes) if view.nbytes else 0


def unlock_memory(buffer) -> int:
    """munlock the buffer's pages; returns 0 or the errno."""
    view = memoryview(buffer)
    return lib.st_unlock_memory(_address(buffer, False), view.nbytes) if view.nbytes else 0


def _resolve_provider(provider: str | None) -> int:
    choice = provider if provider is not None else os.environ.get("SEALTENSORS_AES", "auto")
    choice = choice.strip().lower() or "auto"
    if choice not in PROVIDER_CHOICES:
        raise BackendError(f"AES provider {choice!r} is not one of {', '.join(PROVIDER_CHOICES)}")
    wanted = lib.ST_PROVIDER_AUTO if choice == "auto" else PROVIDERS[choice]
    resolved = lib.st_resolve_provider(wanted)
    if resolved < 0:
        raise BackendError(f"AES provider {choice!r} is unavailable in this build or on this CPU "
                           f"(available: {', '.join(available_providers()) or 'none'})")
    return resolved


def _hold(held: list, cdata):
    held.append(cdata)
    return cdata


def _release(*cdatas) -> None:
    # Drop the buffer exports now: a traceback that outlives the call (held in a reference cycle)
    # must not keep a memoryview export alive, which crashes CPython 3.11's cycle collector.
    for cdata in cdatas:
        ffi.release(cdata)


def _nbytes(buffer) -> int:
    return memoryview(buffer).nbytes


def _target(dst):
    """(address, length) of a writable destination; the Python engine's message when read-only."""
    view = memoryview(dst)
    if view.readonly:
        raise ValueError("destination buffer must be writable")
    return _address(dst, True), view.nbytes


def _message(value, what: str):
    """A zero-copy byte view of a bytes-like message; aead's TypeError for anything else."""
    try:
        return memoryview(value).cast("B")
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, not {type(value).__name__}") from None


def _check_threads(threads: int) -> int:
    threads = int(threads)
    if threads < 0:
        raise ValueError("threads must be >= 0 (0 = default)")
    return min(threads, _MAX_THREADS) if threads else default_threads()


class CEngine:
    """AES-256-GCM chunk engine in C. Thread safe: one instance may serve concurrent calls.

    ``threads`` = 0 uses :func:`default_threads`; small spans always run on the calling thread.
    Buffers are passed zero-copy; ``src`` and ``dst`` must not overlap and must stay alive and
    unmodified for the duration of the call (the GIL is released while C runs).
    """

    name = "c"

    def __init__(self, provider: str | None = None) -> None:
        self._provider = _resolve_provider(provider)
        self.provider = _PROVIDER_NAMES[self._provider]

    def info(self) -> dict:
        return {
            "backend": "c",
            "provider": self.provider,
            "cpu_path": ffi.string(lib.st_provider_cpu_path(self._provider)).decode(),
            "digest": ffi.string(lib.st_digest_path(self._provider)).decode(),
            "threads": default_threads(),
        }

    def __repr__(self) -> str:
        return f"CEngine(provider={self.provider!r})"

    # -- errors -----------------------------------------------------------------------------

    @staticmethod
    def _raise(status, fd_read: bool = False) -> None:
        code = status.code
        index = status.chunk_index if status.chunk_index >= 0 else None
        if code == lib.ST_E_AUTH:
            raise IntegrityError("chunk failed authentication", chunk_index=index)
        if code == lib.ST_E_DIGEST:
            raise SignatureError(f"data chunk {index} does not match the publisher's signature",
                                 chunk_index=index)
        if code == lib.ST_E_LENGTH:
            if fd_read:
                raise IntegrityError("file ended inside a chunk (truncated)", chunk_index=index)
            raise IntegrityError("ciphertext span has an impossible length (truncated or extended)",
                                 chunk_index=index)
        if code == lib.ST_E_IO:
            number = status.sys_errno or _errno.EIO
            raise OSError(number, os.strerror(number))
        if code == lib.ST_E_NOMEM:
            raise MemoryError("sealtensors C engine: out of memory")
        if code == lib.ST_E_PROVIDER:
            detail = f" (OpenSSL error 0x{status.provider_error:x})" if status.provider_error else ""
            raise BackendError(f"AES provider failed{detail}")
        if code == lib.ST_E_ARG:
            raise ValueError("sealtensors C engine rejected the arguments")
        raise BackendError(f"sealtensors C engine: unexpected status {code}")

    # -- engine protocol --------------------------------------------------------------------

    def encrypt_span(self, aead_key, base_nonce, first_chunk, src, dst, *, final, threads=0,
                     digests_out=None):
        self._span_mem(lib.st_encrypt_span_mem, False, aead_key, base_nonce, first_chunk, src, dst,
                       final, threads, digests_out)

    def decrypt_span(self, aead_key, base_nonce, first_chunk, src, dst, *, final, threads=0,
                     digests=None):
        self._span_mem(lib.st_decrypt_span_mem, True, aead_key, base_nonce, first_chunk, src, dst,
                       final, threads, digests)

    def _span_mem(self, entry, decrypting, aead_key, base_nonce, first_chunk, src, dst, final,
                  threads, digests):
        threads = _check_threads(threads)
        held = []
        try:
            source = _hold(held, _address(src, False))
            src_len = _nbytes(src)
            target, dst_len = _target(dst)
            _hold(held, target)
            try:
                count = validate_span(aead_key, base_nonce, first_chunk, src_len, dst_len,
                                      final=final, decrypting=decrypting)
            except IntegrityError:  # only decryption reports impossible lengths this way
                lib.st_wipe(target, dst_len)
                raise
            view = chunk_digests_view(digests, count, writable=not decrypting)
            table = _hold(held, _address(view, not decrypting)) if view is not None else ffi.NULL
            status = ffi.new("st_status *")
            key = _hold(held, _address(aead_key, False))
            nonce = _hold(held, _address(base_nonce, False))
            rc = entry(self._provider, key, nonce, first_chunk, source, src_len, target, dst_len,
                       table, view.nbytes if view is not None else 0, bool(final), threads, status)
        finally:
            _release(*held)
        if rc != lib.ST_OK:
            self._raise(status)

    def decrypt_span_fd(self, aead_key, base_nonce, first_chunk, fd, offset, length, dst, *,
                        final, threads=0, digests=None):
        threads = _check_threads(threads)
        held = []
        try:
            target, dst_len = _target(dst)
            _hold(held, target)
            try:
                count = validate_span(aead_key, base_nonce, first_chunk, length, dst_len,
                                      final=final, decrypting=True)
            except IntegrityError:
                lib.st_wipe(target, dst_len)
                raise
            view = chunk_digests_view(digests, count, writable=False)
            if not count:
                return  # an empty span reads nothing, whatever the offset (as the Python engine)
            if offset < 0 or offset + length > (1 << 63) - 1:
                lib.st_wipe(target, dst_len)
                raise OSError(_errno.EINVAL, os.strerror(_errno.EINVAL))
            table = _hold(held, _address(view, False)) if view is not None else ffi.NULL
            status = ffi.new("st_status *")
            key = _hold(held, _address(aead_key, False))
            nonce = _hold(held, _address(base_nonce, False))
            rc = lib.st_decrypt_span_fd(self._provider, key, nonce, first_chunk, int(fd), offset,
                                        length, target, dst_len, table,
                                        view.nbytes if view is not None else 0, bool(final),
                                        threads, status)
        finally:
            _release(*held)
        if rc != lib.ST_OK:
            self._raise(status, fd_read=True)

    # -- single messages (sealtensors.crypto.aead) ---------------------------------------------------

    def aead_seal(self, key, nonce, plaintext, aad=b"") -> bytes:
        """AES-256-GCM-encrypt ``plaintext`` under ``key`` (32 bytes) and ``nonce`` (12 bytes),
        authenticating ``aad`` too; returns ``ciphertext || tag`` (16 more bytes). The GIL is
        released while C runs: ``plaintext`` must not change during the call."""
        key, nonce, aad = _aead_check(key, nonce, aad)
        view = _message(plaintext, "plaintext")
        length = view.nbytes
        out = bytearray(length + TAG_SIZE)
        held = []
        try:
            source = _hold(held, _address(view, False))
            target = _hold(held, _address(out, True))
            status = ffi.new("st_status *")
            rc = lib.st_aead_seal(self._provider, key, nonce, aad, len(aad), source, length,
                                  target, target + length, status)
        finally:
            _release(*held)
        if rc != lib.ST_OK:
            self._raise(status)
        return bytes(out)

    def aead_open_into(self, key, nonce, ciphertext_and_tag, dst, aad=b"") -> None:
        """Verify ``ciphertext || tag`` and decrypt it into ``dst`` (writable, exactly
        ``len(ciphertext_and_tag) - 16`` bytes, not overlapping the inputs).

        Raises IntegrityError when the tag does not verify or the input is shorter than a tag; on
        that and any other failure after the argument checks, ``dst`` is wiped."""
        key, nonce, aad = _aead_check(key, nonce, aad)
        view = _message(ciphertext_and_tag, "ciphertext_and_tag")
        held = []
        try:
            target, dst_len = _target(dst)
            _hold(held, target)
            if view.nbytes < TAG_SIZE:
                lib.st_wipe(target, dst_len)
                raise IntegrityError(
                    f"input is {view.nbytes} bytes, shorter than the {TAG_SIZE}-byte tag")
            length = view.nbytes - TAG_SIZE
            if dst_len != length:
                raise ValueError(f"destination must be {length} bytes (the ciphertext), "
                                 f"got {dst_len}")
            source = _hold(held, _address(view, False))
            status = ffi.new("st_status *")
            rc = lib.st_aead_open(self._provider, key, nonce, aad, len(aad), source, length,
                                  source + length, target, status)
        finally:
            _release(*held)
        if rc == lib.ST_E_AUTH:
            raise IntegrityError("AES-GCM authentication failed")
        if rc != lib.ST_OK:
            self._raise(status)

    def aead_open(self, key, nonce, ciphertext_and_tag, aad=b"") -> bytes:
        """Verify and decrypt ``ciphertext || tag`` (see :func:`sealtensors.crypto.aead.open`); returns
        the plaintext. IntegrityError when the tag does not verify; no plaintext escapes."""
        key, nonce, aad = _aead_check(key, nonce, aad)
        view = _message(ciphertext_and_tag, "ciphertext_and_tag")
        if view.nbytes < TAG_SIZE:
            raise IntegrityError(
                f"input is {view.nbytes} bytes, shorter than the {TAG_SIZE}-byte tag")
        out = bytearray(view.nbytes - TAG_SIZE)
        self.aead_open_into(key, nonce, view, out, aad)
        plaintext = bytes(out)
        wipe(out)
        return plaintext
