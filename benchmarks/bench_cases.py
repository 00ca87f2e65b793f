"""Every measurement, defined once and shared by the pytest-benchmark tests and ``run_all.py``.

A case is a function ``case(ctx) -> (run, verify, nbytes)``: everything it does before returning is
setup (opening files, allocating and pre-faulting buffers, registering keys) and is not timed; ``run()``
is the timed operation and returns what it loaded; ``verify(result)`` asserts it is the model, byte
for byte on the checked tensors (see :func:`bench_model.check`); ``nbytes`` is the plaintext the run
produces, for GB/s.

Kinds:

- ``steady``: the operation is repeated in one process on warm, pre-faulted buffers (raw engine
  decrypt, memory copy). The first run is a warm-up and is not counted.
- ``load``: a whole load as a user calls it (allocation and first touch of fresh memory included).
  run_all.py times exactly one load per fresh process.

Threads: ``threads=None`` means every CPU (the library's default); ``1`` sets SEALTENSORS_THREADS=1
(read by the C engine on every call) and passes ``threads=1`` where the API takes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import bench_hand
import bench_model


@dataclass
class Context:
    directory: Path
    manifest: dict

    @classmethod
    def open(cls, directory) -> "Context":
        directory = Path(directory)
        return cls(directory, bench_model.load_manifest(directory))

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.manifest["key"])

    def path(self, name: str) -> str:
        return str(self.directory / name)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "steady" or "load"
    title: str
    make: Callable
    scale: float = 1.0  # multiply the measured seconds by this to get the whole model's


def _use(backend: str, provider: str | None = None):
    from sealtensors.engine import backends as _backends

    return _backends.use(backend, provider=provider)


def _threads_env(threads: int | None) -> None:
    if threads is None:
        os.environ.pop("SEALTENSORS_THREADS", None)
    else:
        os.environ["SEALTENSORS_THREADS"] = str(threads)


def _prefaulted(nbytes: int) -> np.ndarray:
    from sealtensors.engine import memory as _memory

    buffer = _memory.allocate(nbytes)  # the same kind of memory load_file decrypts into
    buffer.fill(0)
    return buffer


# -- 1 and 6: the engine on a pre-faulted buffer, and the memory bound ---------------------------

def raw_decrypt(provider: str, threads: int | None):
    def make(ctx: Context):
        from sealtensors.reader import SealedReader

        _use("c", provider)
        _threads_env(threads)
        reader = SealedReader.open(ctx.path("model.sealed"), ctx.key)
        buffer = _prefaulted(reader.data_length)
        count = threads or 0

        def run():
            reader.read_all_into(buffer, threads=count)
            return buffer

        def verify(result):
            bench_model.check_bytes(result, reader.index, ctx.manifest["model"])

        return run, verify, reader.data_length

    return make


def memory_copy(ctx: Context):
    """numpy.copyto of the plaintext between two pre-faulted buffers: the memory bound."""
    from sealtensors.reader import SealedReader

    _use("c")
    with SealedReader.open(ctx.path("model.sealed"), ctx.key) as reader:
        source = _prefaulted(reader.data_length)
        reader.read_all_into(source)
        index = reader.index
    target = _prefaulted(len(source))

    def run():
        np.copyto(target, source)
        return target

    def verify(result):
        bench_model.check_bytes(result, index, ctx.manifest["model"])

    return run, verify, len(source)


# -- 2, 4, 6: whole loads ----------------------------------------------------------------------

def seal_numpy(provider: str | None = None, threads: int | None = None, backend: str = "c",
               file: str = "model.sealed", part: str = "model"):
    def make(ctx: Context):
        import sealtensors.numpy

        _use(backend, provider)
        _threads_env(threads)
        path, key = ctx.path(file), ctx.key

        def run():
            return sealtensors.numpy.load_file(path, key)

        return run, lambda r: bench_model.check(r, ctx.manifest[part]), ctx.manifest[part]["nbytes"]

    return make


def seal_torch(ctx: Context):
    import sealtensors.torch

    _use("c")
    _threads_env(None)
    path, key = ctx.path("model.sealed"), ctx.key

    def run():
        return sealtensors.torch.load_file(path, key)

    return run, lambda r: bench_model.check(r, ctx.manifest["model"]), ctx.manifest["model"]["nbytes"]


def seal_numpy_hugepages(mode: str):
    """load_file with SEALTENSORS_HUGEPAGES=mode."""
    def make(ctx: Context):
        os.environ["SEALTENSORS_HUGEPAGES"] = mode
        return seal_numpy()(ctx)

    return make


def seal_numpy_lazy(ctx: Context):
    """load_file with the destination memory of before the fresh-VM work: MADV_HUGEPAGE over the
    whole mapping and nothing populated, so the decrypting threads take the page faults."""
    from sealtensors.engine import memory as _memory

    _memory._populate = lambda address, length, mode: _memory._libc.madvise(
        address, length, _memory._MADV_HUGEPAGE)
    return seal_numpy()(ctx)


def seal_numpy_pooled(ctx: Context):
    """The second load of the same file in one process with the buffer pool on: the first load's
    buffer (dropped in setup) is wiped, pooled and reused, so no page is faulted."""
    import gc

    import sealtensors.numpy

    os.environ["SEALTENSORS_POOL_BYTES"] = str(4 << 30)
    run, verify, nbytes = seal_numpy()(ctx)
    first = run()
    verify(first)
    del first
    gc.collect()
    return run, verify, nbytes


def safetensors_torch(ctx: Context):
    import safetensors.torch

    path = ctx.path("plain.safetensors")

    def run():
        return safetensors.torch.load_file(path)

    return run, lambda r: bench_model.check(r, ctx.manifest["model"]), ctx.manifest["model"]["nbytes"]


# -- first touch of fresh memory: what a page fault costs on this machine ------------------------

def first_touch(how: str):
    """Map a model-sized buffer and fault every page in, in a fresh process; ``how``:
    ``touch_4k`` / ``touch_thp``: write every byte from one thread (memset) without / with
    MADV_HUGEPAGE, the write-fault path decrypting threads take; ``populate_never`` /
    ``populate_always`` / ``populate_auto``: ``_memory.allocate`` under that SEALTENSORS_HUGEPAGES.
    ``nbytes`` is the model's size, so GB/s compares with the loads."""
    def make(ctx: Context):
        import ctypes

        from sealtensors.engine import memory as _memory

        nbytes = ctx.manifest["model"]["nbytes"]
        if how.startswith("populate_"):
            os.environ["SEALTENSORS_HUGEPAGES"] = how.split("_", 1)[1]

            def run():
                return _memory.allocate(nbytes)
        else:
            advice = _memory._MADV_HUGEPAGE if how == "touch_thp" else _memory._MADV_NOHUGEPAGE
            _memory._populate = lambda address, length, mode: _memory._libc.madvise(
                address, length, advice)

            def run():
                buffer = _memory.allocate(nbytes)
                ctypes.memset(buffer.ctypes.data, 1, nbytes)
                return buffer

        def verify(result):
            assert len(result) == nbytes and result[::1 << 20].all() == (how.startswith("touch"))

        return run, verify, nbytes

    return make


def safetensors_numpy(ctx: Context):
    import safetensors.numpy

    path = ctx.path("plain.safetensors")

    def run():
        return safetensors.numpy.load_file(path)

    return run, lambda r: bench_model.check(r, ctx.manifest["model"]), ctx.manifest["model"]["nbytes"]


def hand_written(ctx: Context):
    path, key = ctx.path("hand.bin"), bytes.fromhex(ctx.manifest["hand_key"])

    def run():
        return bench_hand.load_file(path, key)

    return run, lambda r: bench_model.check(r, ctx.manifest["model"]), ctx.manifest["model"]["nbytes"]


def cryptotensors_load(framework: str):
    def make(ctx: Context):
        import cryptotensors

        module = __import__(f"cryptotensors.{framework}", fromlist=["load_file"])
        keys = ctx.manifest["cryptotensors"]
        if keys is None:
            raise RuntimeError("the model was built without cryptotensors installed")
        cryptotensors.register_direct_key_provider(keys=[keys["enc"], keys["sign"]])
        path = ctx.path("crypto.safetensors")

        def run():
            return module.load_file(path)

        return (run, lambda r: bench_model.check(r, ctx.manifest["model"]),
                ctx.manifest["model"]["nbytes"])

    return make


def _slice_scale() -> float:
    model = sum(bench_model.nbytes_of(d, s) for _, d, s in bench_model.spec())
    sliced, total = 0, 0
    for _, d, s in bench_model.spec():
        if total >= bench_model.SLICE_BYTES:
            break
        sliced += bench_model.nbytes_of(d, s)
        total += bench_model.nbytes_of(d, s)
    return model / sliced


SLICE_SCALE = _slice_scale()

CASES = {case.name: case for case in [
    Case("copy", "steady", "numpy.copyto, pre-faulted (memory bound)", memory_copy),
    Case("raw_ipsecmb", "steady", "engine read_all_into, ipsec-mb, all threads",
         raw_decrypt("ipsecmb", None)),
    Case("raw_openssl", "steady", "engine read_all_into, OpenSSL, all threads",
         raw_decrypt("openssl", None)),
    Case("raw_ipsecmb_1t", "steady", "engine read_all_into, ipsec-mb, 1 thread",
         raw_decrypt("ipsecmb", 1)),
    Case("raw_openssl_1t", "steady", "engine read_all_into, OpenSSL, 1 thread",
         raw_decrypt("openssl", 1)),
    Case("seal_numpy", "load", "sealtensors.numpy.load_file (auto: ipsec-mb), all threads",
         seal_numpy()),
    Case("seal_numpy_openssl", "load", "sealtensors.numpy.load_file, OpenSSL, all threads",
         seal_numpy("openssl")),
    Case("seal_numpy_ipsecmb_1t", "load", "sealtensors.numpy.load_file, ipsec-mb, 1 thread",
         seal_numpy("ipsecmb", 1)),
    Case("seal_numpy_openssl_1t", "load", "sealtensors.numpy.load_file, OpenSSL, 1 thread",
         seal_numpy("openssl", 1)),
    Case("seal_numpy_auto", "load", "sealtensors.numpy.load_file, SEALTENSORS_HUGEPAGES=auto",
         seal_numpy_hugepages("auto")),
    Case("seal_numpy_always", "load", "sealtensors.numpy.load_file, SEALTENSORS_HUGEPAGES=always",
         seal_numpy_hugepages("always")),
    Case("seal_numpy_lazy", "load",
         "sealtensors.numpy.load_file, old memory (MADV_HUGEPAGE, faults in the decrypt threads)",
         seal_numpy_lazy),
    Case("seal_numpy_pooled", "load", "sealtensors.numpy.load_file, 2nd load, SEALTENSORS_POOL_BYTES",
         seal_numpy_pooled),
    Case("seal_torch", "load", "sealtensors.torch.load_file, all threads", seal_torch),
    Case("safetensors_torch", "load", "safetensors.torch.load_file (unencrypted)", safetensors_torch),
    Case("touch_4k", "load", "first touch: memset of fresh memory, 4 KiB pages", first_touch("touch_4k")),
    Case("touch_thp", "load", "first touch: memset of fresh memory, MADV_HUGEPAGE",
         first_touch("touch_thp")),
    Case("populate_never", "load", "first touch: _memory.allocate, HUGEPAGES=never",
         first_touch("populate_never")),
    Case("populate_always", "load", "first touch: _memory.allocate, HUGEPAGES=always",
         first_touch("populate_always")),
    Case("populate_auto", "load", "first touch: _memory.allocate, HUGEPAGES=auto",
         first_touch("populate_auto")),
    Case("safetensors_numpy", "load", "safetensors.numpy.load_file (unencrypted)",
         safetensors_numpy),
    Case("hand_written", "load", "hand-written cryptography AESGCM, 4 MiB chunks, thread pool",
         hand_written),
    Case("cryptotensors_numpy", "load", "cryptotensors.numpy.load_file",
         cryptotensors_load("numpy")),
    Case("cryptotensors_torch", "load", "cryptotensors.torch.load_file",
         cryptotensors_load("torch")),
    Case("seal_python_slice", "load",
         "sealtensors.numpy.load_file, pure-Python engine (slice, scaled to the model)",
         seal_numpy(backend="python", file="slice.sealed", part="slice"), SLICE_SCALE),
    Case("seal_c_slice", "load", "sealtensors.numpy.load_file, C engine (same slice, scaled)",
         seal_numpy(file="slice.sealed", part="slice"), SLICE_SCALE),
]}
