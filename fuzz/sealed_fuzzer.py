"""Fuzz the sealed-file reader (header and index parsers, ``sealtensors.numpy.load``) and the key parsers.

Targets (first argument):

``load``   the input is a whole sealed file, opened with the fixed KEYS of fuzz/make_corpus.py.
           Most mutations hit the header MAC or a chunk tag; to reach deeper, when a slot still
           unwraps the data key, the harness also *re-authenticates* the mutated header (recomputes
           its MAC under the recovered key) and loads again, so mutated lengths, slot counts and
           slots reach the checks behind the MAC.
``index``  the input is a 4-byte little-endian data length followed by an index plaintext. It goes
           to ``index.parse`` directly, then into a fully authenticated file (encrypted under a
           known data key with the right contexts) that is loaded with ``numpy.load`` and
           ``SealedReader.read_range``; whatever parses must load, with every tensor's shape.
``textcodec``  a text key (``keys.textcodec.decode``); whatever decodes must re-encode to the same
           text, stripped.
``slots``  a 2-byte little-endian slot count, then a slot table (``keys.slots.parse_records``);
           whatever parses must serialize back to the same table.
``trailer``  a signature trailer (``format.trailer.parse``); whatever parses must have a whole
           digest table and a statement that re-serializes to its bytes.
``pin``    a pin file (``keys.pins.read_pin_file``, through a temporary file).
``identity``  an identity or key file's content (the parser behind ``keys.load_identity``).
``parsers``  the five above in one target (first byte: which one), so that one run of
           scripts/fuzz.sh covers them all.

Oracle: only :class:`sealtensors.SealError` subclasses escape; anything else (ValueError,
TypeError, MemoryError, OverflowError, RecursionError, a crash) is a finding. Hangs are caught by
libFuzzer's ``-timeout``.

With atheris (``pip install atheris``)::

    python fuzz/sealed_fuzzer.py load  fuzz/corpus/load  -max_total_time=600 -timeout=10
    python fuzz/sealed_fuzzer.py index fuzz/corpus/index -max_total_time=600 -timeout=10
    python fuzz/sealed_fuzzer.py slots fuzz/corpus/slots -max_total_time=600 -timeout=10

Without atheris the same targets run under a built-in random mutator for a bounded time::

    python fuzz/sealed_fuzzer.py load fuzz/corpus/load --fallback --seconds 60
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import shlex
import struct
import sys
import time
from pathlib import Path

try:
    import atheris
except ImportError:  # the fallback mutator below still runs
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["sealtensors"]):
        import sealtensors  # noqa: F401
        from sealtensors import SealError
        from sealtensors.crypto import chunked
        from sealtensors.format import container
        from sealtensors import numpy as stnp
        from sealtensors.format.index import parse as parse_index
        from sealtensors.reader import SealedReader
        from sealtensors.format import trailer
        from sealtensors.keys import keyfile, slots, textcodec
        from sealtensors.keys.pins import read_pin_file
        from sealtensors.keys.symmetric import SymmetricKey
else:
    from sealtensors import SealError
    from sealtensors.crypto import chunked
    from sealtensors.format import container
    from sealtensors import numpy as stnp
    from sealtensors.format.index import parse as parse_index
    from sealtensors.reader import SealedReader
    from sealtensors.format import trailer
    from sealtensors.keys import keyfile, slots, textcodec
    from sealtensors.keys.pins import read_pin_file
    from sealtensors.keys.symmetric import SymmetricKey

KEYS = [bytes(range(32)), bytes(range(32, 64))]  # must match fuzz/make_corpus.py
FIXED_DATA_KEY = bytes(range(64, 96))
FIXED_FILE_ID = bytes(range(16))
MAX_INPUT = 1 << 20


def _forget(error: BaseException) -> None:
    # No kept tracebacks: each iteration's frames and buffers are freed at once.
    while error is not None:
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


def _load(blob: bytes) -> None:
    try:
        tensors = stnp.load(blob, KEYS)
    except SealError as exc:
        _forget(exc)
        return
    for array in tensors.values():
        array.tobytes()  # touch every byte of every view


def _reauthenticated(blob: bytes) -> bytes | None:
    """The mutated file with its header MAC recomputed, when a slot still yields the data key."""
    try:
        preamble = blob[:container.PREAMBLE_SIZE]
        _version, _suite, active, capacity = container.parse_preamble(preamble)
        start = container.copy_offset(active, capacity)
        header = container.parse(preamble, blob[start:start + capacity])
        # unwrap a slot directly: container.unlock would also check the (mutated) MAC
        data_key = None
        for key in KEYS:
            for record in header.slots:
                data_key = data_key or SymmetricKey(key).unwrap(record, header.file_id)
    except SealError as exc:
        _forget(exc)
        return None
    if data_key is None:
        return None
    body = container.authenticated_bytes(header)
    mac = hmac.new(container.mac_key(data_key), body, hashlib.sha256).digest()
    mac_at = start + len(body) - container.PREAMBLE_SIZE
    return blob[:mac_at] + mac + blob[mac_at + container.MAC_SIZE:]


def target_load(data: bytes) -> None:
    blob = bytes(data[:MAX_INPUT])
    _load(blob)
    again = _reauthenticated(blob)
    if again is not None and again != blob:
        _load(again)


def _craft(index_plaintext: bytes, data_length: int) -> bytes:
    index_message = chunked.encrypt(FIXED_DATA_KEY, index_plaintext,
                                    container.index_context(FIXED_FILE_ID))
    data_message = chunked.encrypt(FIXED_DATA_KEY, bytes(data_length),
                                   container.data_context(FIXED_FILE_ID, index_plaintext))
    slot = SymmetricKey(KEYS[0]).wrap(FIXED_DATA_KEY, FIXED_FILE_ID)
    header = container.new_header(FIXED_FILE_ID, len(index_message), len(data_message), 0,
                                  container.EMPTY_TRAILER_DIGEST, [slot])
    return container.header_region(header, FIXED_DATA_KEY) + index_message + data_message


def target_index(data: bytes) -> None:
    if len(data) < 4:
        return
    data_length = struct.unpack_from("<I", data)[0] % (1 << 18)
    document = bytes(data[4:MAX_INPUT])
    try:
        index = parse_index(document, data_length)
    except SealError as exc:
        _forget(exc)
        index = None
    blob = _craft(document, data_length)
    try:
        tensors = stnp.load(blob, KEYS[0])
    except SealError as exc:
        _forget(exc)
        return
    assert index is not None, "load accepted an index that parse rejected"
    assert [t.name for t in index.tensors] == list(tensors)
    for info in index.tensors:
        assert tensors[info.name].shape == info.shape
        assert tensors[info.name].nbytes == info.nbytes
    with SealedReader.from_bytes(blob, KEYS[0]) as reader:
        for info in index.tensors[:4]:
            assert reader.read_range(info.begin, info.end).nbytes == info.nbytes


def target_textcodec(data: bytes) -> None:
    text = bytes(data[:1 << 16]).decode("utf-8", "replace")
    try:
        tag, payload = textcodec.decode(text)
    except SealError as exc:
        _forget(exc)
        return
    assert textcodec.encode(tag, payload) == text.strip(), "a non-canonical text key decoded"


def target_slots(data: bytes) -> None:
    if len(data) < 2:
        return
    count = struct.unpack_from("<H", data)[0] % 1100
    table = bytes(data[2:MAX_INPUT])
    try:
        records = slots.parse_records(table, count)
    except SealError as exc:
        _forget(exc)
        return
    assert len(records) == count and b"".join(r.to_bytes() for r in records) == table
    assert len({r.slot_id for r in records}) == count


def target_trailer(data: bytes) -> None:
    raw = bytes(data[:MAX_INPUT])
    try:
        parsed = trailer.parse(raw)
    except SealError as exc:
        _forget(exc)
        return
    assert parsed.statement.to_bytes() == raw[:trailer.STATEMENT_SIZE]
    assert len(parsed.digests) % trailer.DIGEST_SIZE == 0
    assert parsed.statement.generation <= trailer.MAX_GENERATION


_PIN_PATH = None


def target_pin(data: bytes) -> None:
    global _PIN_PATH
    if _PIN_PATH is None:
        import tempfile

        handle, name = tempfile.mkstemp(suffix=".pin")
        os.close(handle)
        _PIN_PATH = Path(name)
    _PIN_PATH.write_bytes(bytes(data[:(1 << 20) + 2]))
    try:
        options = read_pin_file(_PIN_PATH)
    except SealError as exc:
        _forget(exc)
        return
    assert options["signer"] and set(options) <= {"signer", "min_generation", "expect_file_id"}


def target_identity(data: bytes) -> None:
    try:
        identity = keyfile._parse_identity(bytes(data[:1 << 17]), "<fuzz input>")
    except SealError as exc:
        _forget(exc)
        return
    # never key material in the public description
    assert "SECRET" not in identity.describe() and "SECRET" not in repr(identity)


_PARSERS = (target_textcodec, target_slots, target_trailer, target_pin, target_identity)


def target_parsers(data: bytes) -> None:
    if data:
        _PARSERS[data[0] % len(_PARSERS)](data[1:])


TARGETS = {"load": target_load, "index": target_index, "textcodec": target_textcodec,
           "slots": target_slots, "trailer": target_trailer, "pin": target_pin,
           "identity": target_identity, "parsers": target_parsers}


# --- fallback: a bounded random mutator, for machines without atheris ---------------------------

_INTERESTING = [0, 1, 2, 15, 16, 17, 55, 56, 71, 72, 1023, 1024, 1025, 16383, 16384, 16399, 16400,
                2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


def _mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(9)
        if choice == 0 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif choice == 2:
            out[rng.randint(0, len(out)):rng.randint(0, len(out))] = b""  # delete a range
        elif choice == 3:
            at = rng.randint(0, len(out))
            out[at:at] = rng.randbytes(rng.randint(1, 64))
        elif choice == 4 and len(out) >= 8:  # an interesting integer at any offset / width
            width = rng.choice((2, 4, 8))
            at = rng.randrange(max(1, len(out) - width))
            value = rng.choice(_INTERESTING) % (1 << (8 * width))
            out[at:at + width] = value.to_bytes(width, "little")
        elif choice == 5 and len(out) >= 56:  # a header field specifically
            at, width = rng.choice(((8, 2), (10, 2), (12, 4), (32, 8), (40, 8), (48, 4), (52, 4)))
            value = rng.choice(_INTERESTING) % (1 << (8 * width))
            out[at:at + width] = value.to_bytes(width, "little")
        elif choice == 6:  # splice with another corpus entry
            other = rng.choice(corpus)
            cut = rng.randint(0, len(out))
            out = out[:cut] + other[rng.randint(0, len(other)):]
        elif choice == 7 and out:  # truncate
            del out[rng.randint(0, len(out)):]
        elif choice == 8:  # JSON-ish tokens, for the index target
            token = rng.choice((b"[", b"]", b"{", b"}", b",", b":", b'"', b"-", b"1e999", b"null",
                                b"true", b"\\ud800", b'"name"', b'"shape"', b'"offsets"', b"0",
                                b"18446744073709551616", b"\xff", b"\xc0\x80"))
            at = rng.randint(0, len(out))
            out[at:at] = token
    return bytes(out[:MAX_INPUT])


def run_fallback(target, corpus_dir: Path, seconds: float, seed: int) -> int:
    corpus = [p.read_bytes() for p in sorted(corpus_dir.glob("*")) if p.is_file()]
    if not corpus:
        corpus = [b""]
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    runs = 0
    for data in corpus:
        target(data)
    while time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(corpus), corpus)
        started = time.monotonic()
        try:
            target(data)
        except Exception:
            crash = Path(f"crash-fallback-{hashlib.sha1(data).hexdigest()}")
            crash.write_bytes(data)
            print(f"sealed_fuzzer: finding after {runs} runs, input saved to {crash}",
                  file=sys.stderr)
            raise
        if time.monotonic() - started > 10:
            crash = Path(f"slow-fallback-{hashlib.sha1(data).hexdigest()}")
            crash.write_bytes(data)
            raise SystemExit(f"sealed_fuzzer: an input took over 10 s, saved to {crash}")
        runs += 1
    print(f"sealed_fuzzer fallback: {runs} runs in {seconds:.0f} s, no findings")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(__doc__)
        return 2
    target = TARGETS[argv[1]]
    rest = argv[2:]
    if atheris is None or "--fallback" in rest:
        seconds = 60.0
        if "--seconds" in rest:
            seconds = float(rest[rest.index("--seconds") + 1])
        corpus = next((Path(a) for a in rest if not a.startswith("-") and Path(a).is_dir()),
                      Path(__file__).parent / "corpus" / argv[1])
        if atheris is None:
            print("atheris is not installed: running the built-in random mutator", file=sys.stderr)
        return run_fallback(target, corpus, seconds, int(os.environ.get("FUZZ_SEED", "0")))
    # With -jobs/-workers libFuzzer starts each worker as `argv[0] <flags>` through the shell: the
    # script is not executable and a worker needs the target name too, so argv[0] is the whole,
    # quoted command that runs this target again under this very interpreter.
    relaunch = " ".join(shlex.quote(part) for part in
                        (sys.executable, str(Path(__file__).resolve()), argv[1]))
    atheris.Setup([relaunch] + rest, target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
