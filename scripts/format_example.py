"""Regenerate section 14 of docs/FORMAT.md (the worked example) from a freshly sealed file.

    .venv/bin/python scripts/format_example.py            # rewrites the section in place
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import numpy as np

import sealtensors.numpy as stn
from sealtensors.crypto import chunked
from sealtensors.crypto.hkdf import hkdf_expand
from sealtensors.format import container
from sealtensors.keys.symmetric import CONTEXT_LABEL, SymmetricKey

DOC = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


def hexdump(data: bytes) -> str:
    """xxd -a -g1 style: 16 bytes a line, runs of identical all-zero lines collapsed to '*'."""
    lines, previous_zero = [], False
    for offset in range(0, len(data), 16):
        row = data[offset:offset + 16]
        zero = len(row) == 16 and not any(row)
        if zero and previous_zero and offset + 16 < len(data):
            if lines[-1] != "*":
                lines.append("*")
            continue
        previous_zero = zero
        hexes = " ".join(f"{b:02x}" for b in row).ljust(47)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{offset:08x}: {hexes}  {text}")
    return "\n".join(lines)


def main() -> None:
    key = bytes(range(32))
    blob = stn.save({"weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 2,
                     "bias": np.array([-1, 0, 1], dtype=np.int8)},
                    key, metadata={"model": "example"})
    pre = blob[:32]
    _v, _s, active, capacity = container.parse_preamble(pre)
    header = container.parse(pre, blob[32:32 + capacity])
    identity = SymmetricKey(key)
    unlocked = container.unlock(header, [identity])
    dek = unlocked.data_key
    slot = header.slots[0]
    fid = header.file_id
    slot_keys, slot_commit = chunked.derive(key, slot.body[:24], CONTEXT_LABEL + fid)
    index_msg = blob[header.index_offset:header.data_offset]
    index_plain = chunked.decrypt(dek, index_msg, container.index_context(fid))
    index_keys, index_commit = chunked.derive(dek, index_msg[:24], container.index_context(fid))
    data_msg = blob[header.data_offset:header.trailer_offset]
    data_keys, data_commit = chunked.derive(dek, data_msg[:24],
                                            container.data_context(fid, index_plain))
    table_end = 32 + 88 + 20 + len(slot.body)
    R = header.region_size
    digest = hashlib.sha512(index_plain).hexdigest()
    section = f"""## 14. Worked example

The file below is a real sealed file, produced by

```python
import numpy as np, sealtensors.numpy as stn
key = bytes(range(32))                      # 00 01 02 ... 1f, for the example only
blob = stn.save({{"weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 2,
                 "bias": np.array([-1, 0, 1], dtype=np.int8)}},
                key, metadata={{"model": "example"}})
```

(`scripts/format_example.py` regenerates this section.) The DEK, file id and salts were drawn at
random by that run; they are all recoverable with the key, and listed below so that an
implementation can check each step. `tests/test_independent_reader.py` reads this very dump out of
this document and opens it with both the independent reader and sealtensors.

Whole file ({len(blob)} bytes, `xxd -a -g1`: a `*` line stands for repeated all-zero lines):

<!-- example-hexdump -->
```
{hexdump(blob)}
```
<!-- example-hexdump -->

Structure (capacity `C` = {capacity}, so `R = 32 + 2C` = {R}):

| offset (hex) | size | field | value |
|---|---:|---|---|
| `000` | 8 | magic | `SEALTENS` |
| `008` | 2 | version | `02 00` = 2 |
| `00a` | 2 | suite | `01 00` = 1 |
| `00c` | 1 | active copy | 0 |
| `010` | 4 | capacity | {capacity} |
| `020` | 16 | copy 0: file id | `{fid.hex()}` |
| `030` | 8 | sequence | 0 |
| `038` | 8 | index_length | {header.index_length} |
| `040` | 8 | data_length | {header.data_length} |
| `048` | 8 | trailer_length | 0 (unsigned) |
| `050` | 32 | trailer digest | zero |
| `070` | 4 | slot count | 1 |
| `074` | 4 | slot table length | {20 + len(slot.body)} |
| `078` | 1+1+2 | slot 0: type, reserved, body length | 1 (symmetric), 0, 104 |
| `07c` | 16 | slot 0: slot id | `{slot.slot_id.hex()}` |
| `08c` | 104 | slot 0: wrapped DEK | salt `{slot.body[:24].hex()}`, commitment, one chunk of 32 + 16 |
| `{table_end:03x}` | 32 | header MAC | `{header.mac.hex()}` |
| `{table_end + 32:03x}` | | zero padding to the end of copy 0, then copy 1 (zero) | |
| `{R:03x}` | {header.index_length} | index message | salt `{index_msg[:24].hex()}` ... |
| `{header.data_offset:03x}` | {header.data_length} | data message | salt `{data_msg[:24].hex()}` ... |
| `{len(blob):03x}` | | end of file | {R} + {header.index_length} + {header.data_length} = {len(blob)} |

Intermediate values:

```
recipient key      {key.hex()}
file id            {fid.hex()}
slot id            HKDF-Expand-SHA-512(key, "sealtensors/v2/slot-id" 00 || file id, 16)
                   = {identity.slot_id(fid).hex()}
slot context       "sealtensors/v2/slot/symmetric" 00 || file id
slot  aead key     {slot_keys.aead_key.hex()}
slot  base nonce   {slot_keys.base_nonce.hex()}
slot  commitment   {slot_commit.hex()}
DEK                {dek.hex()}
mac key            {container.mac_key(dek).hex()}
header MAC         HMAC-SHA-256(mac key, file[0x000:0x020] || file[0x020:0x{table_end:03x}])
index aead key     {index_keys.aead_key.hex()}
index base nonce   {index_keys.base_nonce.hex()}
index commitment   {index_commit.hex()}
SHA-512(index)     {digest[:64]}
                   {digest[64:]}
data aead key      {data_keys.aead_key.hex()}
data base nonce    {data_keys.base_nonce.hex()}
data commitment    {data_commit.hex()}
```

Index plaintext ({len(index_plain)} bytes, canonical form):

```
{index_plain.decode()}
```

Data plaintext (67 bytes): `weight` at `[0, 24)`, 40 zero bytes of padding to offset 64, `bias` at
`[64, 67)`, and nothing after the last tensor:

```
00000000 0000003f 0000803f 0000c03f 00000040 00002040   weight: 0.0 0.5 1.0 1.5 2.0 2.5 (F32 LE)
00 * 40                                                 padding
ff 00 01                                                bias: -1 0 1 (I8)
```

"""
    text = DOC.read_text()
    start = text.index("## 14. Worked example")
    end = text.index("## 15. Constants")
    DOC.write_text(text[:start] + section + text[end:])
    print(f"section 14 rewritten ({len(blob)}-byte example)", file=sys.stderr)


if __name__ == "__main__":
    main()
