"""Run one sealtensors operation in a fresh process, collect garbage, and count how many copies of a
32-byte key are still readable anywhere in this process's memory (``/proc/self/mem``).

Driven by tests/test_key_residue.py (not collected by pytest itself). The key to look for arrives
masked (``key XOR mask``) so that the probe itself never holds the whole key in one piece: it
searches for the first half and checks the second half through the mask, so a hit is always a copy
made by the code under test, never the probe's own pattern.

Usage: ``python key_residue_probe.py OPERATION SEALED_PATH KEY_FILE_HEX MASKED_HEX MASK_HEX [WORK_DIR]``
(``KEY_FILE_HEX``: the recipient key that opens the file). Prints one JSON line:
``{"operation": ..., "copies": N, "where": [mapping names]}``.
"""

from __future__ import annotations

import gc
import json
import os
import sys


def _readable_mappings():
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else "[anon]"
            if fields[1][0] != "r" or name in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            yield low, high, name


def find_copies(first_half: bytes, masked_second: bytes, mask_second: bytes) -> list[tuple[int, str]]:
    """(address, mapping name) of every place the key (first_half || masked_second ^ mask_second)
    sits in this process's readable memory."""
    window = 1 << 20
    overlap = len(first_half) + len(masked_second) - 1
    buffer = bytearray(window + overlap)
    view = memoryview(buffer)
    import ctypes

    own_low = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
    own_high = own_low + len(buffer)
    hits = []
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        for low, high, name in list(_readable_mappings()):
            position = low
            while position < high:
                length = min(window + overlap, high - position)
                try:
                    got = os.preadv(fd, [view[:length]], position)
                except OSError:
                    break
                if got <= 0:
                    break
                start = 0
                while True:
                    found = buffer.find(first_half, start, got)
                    if found < 0:
                        break
                    address = position + found
                    start = found + 1
                    if own_low <= address < own_high:
                        continue  # the probe's own scanning buffer
                    if found + 32 > got:
                        continue  # the next window (which overlaps this one) sees it whole
                    tail = buffer[found + 16:found + 32]
                    if bytes(a ^ b for a, b in zip(tail, mask_second)) == masked_second:
                        hits.append((address, name))
                    tail[:] = bytes(16)
                if position + got >= high:
                    break
                position += max(1, got - overlap)
    finally:
        os.close(fd)
        buffer[:] = bytes(len(buffer))
    return hits


_held: list = []


def run(operation: str, path: str, key: bytes, work_dir: str) -> None:
    import numpy as np

    import sealtensors
    import sealtensors.numpy as stn

    if operation == "nothing":
        return
    if operation == "hold_reader":  # the control: an open reader holds the key, the probe sees it
        from sealtensors.reader import SealedReader

        _held.append(SealedReader.open(path, key))
        _held[-1].verify()
        return
    if operation == "numpy.load_file":
        tensors = stn.load_file(path, key)
        assert tensors
    elif operation == "verify":
        sealtensors.verify(path, key)
    elif operation == "load_into":
        size = sealtensors.buffer_size(path, key)
        buffer = np.empty(size, np.uint8)
        sealtensors.load_into(path, key, buffer)
    elif operation == "load_into_names":
        names = ["w", "f"]
        size = sealtensors.buffer_size(path, key, names)
        buffer = np.empty(size, np.uint8)
        sealtensors.load_into(path, key, buffer, names=names)
    elif operation == "safe_open":
        with sealtensors.safe_open(path, "np", key=key) as handle:
            for name in handle.keys():
                handle.get_tensor(name)
                handle.get_slice(name)[...]
    elif operation == "torch.load_file":
        import sealtensors.torch as stt

        assert stt.load_file(path, key)
    elif operation == "unseal_file":
        sealtensors.unseal_file(path, os.path.join(work_dir, "out.safetensors"), key,
                                overwrite=True)
    else:
        raise SystemExit(f"unknown operation {operation!r}")


def main(argv: list[str]) -> None:
    operation, path, key_hex, masked_hex, mask_hex = argv[:5]
    work_dir = argv[5] if len(argv) > 5 else os.path.dirname(path)
    masked, mask = bytes.fromhex(masked_hex), bytes.fromhex(mask_hex)
    first_half = bytes(a ^ b for a, b in zip(masked[:16], mask[:16]))
    # Import (and, for the C engine, load the provider) before the operation, so the count is
    # about the operation and not about one-off start-up state.
    import sealtensors.engine.backends as backends

    backends.engine()
    run(operation, path, bytes.fromhex(key_hex), work_dir)
    gc.collect()
    gc.collect()
    found = find_copies(first_half, masked[16:], mask[16:])
    where = [name for _, name in found]
    if os.environ.get("PROBE_DEBUG"):
        import ctypes
        for address, name in found:
            size = ctypes.c_ssize_t.from_address(address - 16).value
            print("debug", hex(address), name, "bytes-size?", size, file=sys.stderr)
    print(json.dumps({"operation": operation, "copies": len(where), "where": where}))


if __name__ == "__main__":
    main(sys.argv[1:])
