"""Write the seed corpus for fuzz/sealed_fuzzer.py: a handful of real small sealed files.

Usage: python fuzz/make_corpus.py [OUTDIR]   (default fuzz/corpus)

Creates OUTDIR/load/*.sealed (whole sealed files, sealed for the fixed keys in KEYS, which the
harness knows) and OUTDIR/index/*.json (index plaintexts, for the index-parser target). Randomness
(data keys, file ids, salts) comes from a seeded generator so the corpus is reproducible; that is
for fuzzing only, never for real files.
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

    (out / "load").mkdir(parents=True, exist_ok=True)
    (out / "index").mkdir(parents=True, exist_ok=True)
    for name, (tensors, metadata, keys) in samples().items():
        blob = stnp.save(tensors, list(keys), metadata=metadata)
        (out / "load" / f"{name}.sealed").write_bytes(blob)
        with SealedReader.from_bytes(blob, list(keys)) as reader:
            header = reader.header
            count = container.parse_fixed(blob[:container.FIXED_HEADER_SIZE])[5]
            data_key = container.unlock(header, blob[:container.header_size(count)], list(keys))
        from sealtensors.crypto import chunked
        index = chunked.decrypt(data_key, blob[header.index_offset:header.data_offset],
                                container.index_context(header.file_id))
        data_len = chunked.plaintext_length(header.data_length)
        # index target input: 4-byte little-endian data length, then the index plaintext
        (out / "index" / f"{name}.json").write_bytes(data_len.to_bytes(4, "little") + index)
    print(f"corpus written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
