"""Write the seed corpus for fuzz/sealed_fuzzer.py: a handful of real small sealed files.

Usage: python fuzz/make_corpus.py [OUTDIR]   (default fuzz/corpus)

Creates OUTDIR/load/*.sealed (whole sealed files, sealed for the fixed keys in KEYS, which the
harness knows), OUTDIR/index/*.json (index plaintexts, for the index-parser target), and seeds for
the key parsers: OUTDIR/textcodec (a text key of every tag), OUTDIR/slots (slot tables of every
type, from real files and crafted), OUTDIR/trailer (a real signature trailer), OUTDIR/pin (pin
files), OUTDIR/identity (identity and key files of every form), and OUTDIR/parsers (all of those,
each behind the byte that selects its parser in the ``parsers`` target). Randomness (data keys,
file ids, salts) comes from a seeded generator so the corpus is reproducible; that is for fuzzing
only, never for real files.
"""

from __future__ import annotations

import random
import secrets
import sys
from pathlib import Path

import numpy as np

KEYS = (bytes(range(32)), bytes(range(32, 64)))  # the harness opens files with these


def _deterministic_randomness(seed: int) -> None:
    rng = random.Random(seed)
    secrets.token_bytes = lambda n=32: rng.randbytes(n)  # corpus only


def samples() -> dict[str, tuple[dict, dict | None, tuple[bytes, ...]]]:
    rng = np.random.default_rng(0)
    return {
        "empty": ({}, None, KEYS[:1]),
        "scalar": ({"s": np.array(3.5, dtype=np.float64)}, {}, KEYS[:1]),
        "two-recipients": ({"w": np.arange(24, dtype=np.int32).reshape(2, 3, 4),
                            "b": np.zeros(0, dtype=np.uint8)}, {"format": "pt"}, KEYS),
        "second-key-only": ({"x": np.ones((3,), dtype=np.float16)}, None, KEYS[1:]),
        "multi-chunk": ({"big": rng.integers(0, 255, 40000, dtype=np.uint8),
                         "tail": np.arange(7, dtype=np.int64)}, {"k": "v" * 50}, KEYS[:1]),
        "many-tensors": ({f"layer.{i}.weight": np.full((i + 1,), i, dtype=np.float32)
                          for i in range(12)}, {"n": "12"}, KEYS[:1]),
        "unicode": ({"名前/é": np.array([True, False]), "\x00nul": np.zeros((1, 1), np.int8)},
                    {"ключ": "значение"}, KEYS[:1]),
    }


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent / "corpus"
    _deterministic_randomness(1234)
    from sealtensors import numpy as stnp
    from sealtensors.format import container
    from sealtensors.reader import SealedReader

    from sealtensors.crypto import chunked
    from sealtensors.keys.keyfile import as_identities

    for target in ("load", "index", "parsers") + PARSERS:
        (out / target).mkdir(parents=True, exist_ok=True)
    tables = {}
    for name, (tensors, metadata, keys) in samples().items():
        blob = stnp.save(tensors, list(keys), metadata=metadata)
        (out / "load" / f"{name}.sealed").write_bytes(blob)
        with SealedReader.from_bytes(blob, list(keys)) as reader:
            header = reader.header
        data_key = container.unlock(header, as_identities(list(keys))).data_key
        index = chunked.decrypt(data_key, blob[header.index_offset:header.data_offset],
                                container.index_context(header.file_id))
        data_len = chunked.plaintext_length(header.data_length)
        # index target input: 4-byte little-endian data length, then the index plaintext
        (out / "index" / f"{name}.json").write_bytes(data_len.to_bytes(4, "little") + index)
        tables[name] = header.slots
    signed = stnp.save({"w": np.arange(9000, dtype=np.float32)}, list(KEYS[:1]),
                       signer=_signing_key(), generation=5)
    (out / "load" / "signed.sealed").write_bytes(signed)
    for target, seeds in parser_seeds(tables, signed).items():
        for name, seed in seeds.items():
            (out / target / name).write_bytes(seed)
            selector = bytes([PARSERS.index(target)])
            (out / "parsers" / f"{target}-{name}").write_bytes(selector + seed)
    print(f"corpus written to {out}")
    return 0


# The key-parser targets of fuzz/sealed_fuzzer.py, in the order its ``parsers`` target selects them.
PARSERS = ("textcodec", "slots", "trailer", "pin", "identity")


def _signing_key():
    from sealtensors.keys.signing import SigningKey

    return SigningKey(bytes(range(64)))  # corpus only


def parser_seeds(tables: dict, signed: bytes) -> dict[str, dict[str, bytes]]:
    import json
    import struct

    from sealtensors.format import container
    from sealtensors.keys import generate_identity, identity_text, textcodec
    from sealtensors.keys.keyfile import format_key
    from sealtensors.keys.passphrase import Passphrase
    from sealtensors.keys.slots import PROVIDER, SlotRecord

    seeds: dict[str, dict[str, bytes]] = {target: {} for target in PARSERS}
    for tag, size in textcodec.ALL_TAGS.items():
        seeds["textcodec"][f"{tag}.txt"] = \
            textcodec.encode(tag, bytes(i % 251 for i in range(size))).encode() + b"\n"
    identities = {kind: generate_identity(kind) for kind in ("symmetric", "x25519", "xwing")}
    records = []
    for name, slots in tables.items():
        records += slots
        seeds["slots"][f"{name}.table"] = struct.pack("<H", len(slots)) + \
            b"".join(r.to_bytes() for r in slots)
    data_key, file_id = bytes(32), bytes(16)
    typed = [identities["x25519"].recipient().wrap(data_key, file_id),
             identities["xwing"].recipient().wrap(data_key, file_id),
             Passphrase("fuzz", log2_n=15).wrap(data_key, file_id),
             SlotRecord(PROVIDER, bytes(range(16)), b"\x03kms" + bytes(40))]
    for record in typed:
        seeds["slots"][f"type-{record.slot_type}.table"] = b"\x01\x00" + record.to_bytes()
    mixed = [tables["two-recipients"][0]] + typed
    seeds["slots"]["mixed.table"] = struct.pack("<H", len(mixed)) + \
        b"".join(r.to_bytes() for r in mixed)
    header = container.parse(signed[:32], signed[32:32 + int.from_bytes(signed[16:20], "little")])
    seeds["trailer"]["signed.trailer"] = signed[header.trailer_offset:]
    verifying = _signing_key().verifying_key.text()
    seeds["pin"]["full.pin"] = json.dumps({"signers": [verifying], "min_generation": 5,
                                           "file_id": header.file_id.hex()}).encode()
    seeds["pin"]["signers-only.pin"] = json.dumps({"signers": [verifying]}).encode()
    for kind, identity in identities.items():
        seeds["identity"][f"{kind}.key"] = identity_text(identity).encode()
    seeds["identity"]["raw.key"] = KEYS[0]
    seeds["identity"]["legacy.key"] = f"sealtensors-key-v1:{KEYS[1].hex()}\n".encode()
    seeds["identity"]["plain.key"] = format_key(KEYS[1]).encode()
    seeds["identity"]["signing.key"] = (_signing_key().text() + "\n").encode()
    return seeds


if __name__ == "__main__":
    sys.exit(main(sys.argv))
