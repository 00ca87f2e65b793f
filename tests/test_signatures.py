"""Publisher signatures: forgeries by data-key holders, rollback under pins, real revocation by reseal."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import sealtensors
from sealtensors import IntegrityError, SignatureError, WrongKeyError
from sealtensors.crypto import chunked
from sealtensors.engine import backends
from sealtensors.format import container
from sealtensors.keys import SigningKey, SymmetricKey, VerifyingKey, generate_identity
from sealtensors.numpy import load, load_file, save, save_file

PUBLISHER = SigningKey.generate()
MALLORY = SigningKey.generate()
ALICE, BOB = bytes(range(32)), bytes(range(32, 64))
ARRAYS = {"w": np.arange(40_000, dtype=np.float32).reshape(400, 100),
          "b": np.arange(5, dtype=np.int64)}


def header_of(blob: bytes) -> container.Header:
    _v, _s, active, capacity = container.parse_preamble(blob[:32])
    return container.parse(blob[:32], blob[32 + active * capacity:32 + (active + 1) * capacity])


def forge(blob: bytes, holder_key: bytes, change) -> bytes:
    """What a holder of the data key can do: keep every slot byte for byte, re-encrypt the data
    with ``change(plaintext)`` applied, recompute the header MAC."""
    header = header_of(blob)
    data_key = container.unlock(header, [SymmetricKey(holder_key)]).data_key
    index = chunked.decrypt(data_key, blob[header.index_offset:header.data_offset],
                            container.index_context(header.file_id))
    context = container.data_context(header.file_id, index)
    message = blob[header.data_offset:header.trailer_offset]
    plain = bytearray(chunked.decrypt(data_key, message, context))
    change(plain)
    keys, _ = chunked.derive(data_key, message[:chunked.SALT_SIZE], context)
    cipher = bytearray(len(message) - chunked.HEADER_SIZE)
    backends.engine().encrypt_span(keys.aead_key, keys.base_nonce, 0, bytes(plain), cipher,
                                   final=True, threads=1)
    body = blob[:header.data_offset + chunked.HEADER_SIZE] + bytes(cipher)
    forged = body + blob[header.trailer_offset:]
    preamble, copy = container.build(header, data_key)
    offset = container.copy_offset(header.active, header.capacity)
    return forged[:offset] + copy + forged[offset + header.capacity:]


def poison(plain: bytearray) -> None:
    plain[0:4] = np.float32(1e30).tobytes()


def test_signed_file_loads_with_and_without_signer():
    blob = save(ARRAYS, [ALICE], signer=PUBLISHER, generation=3)
    for options in ({}, {"signer": PUBLISHER.verifying_key}, {"signer": PUBLISHER.verifying_key.text()},
                    {"signer": [MALLORY.verifying_key, PUBLISHER.verifying_key]}):
        out = load(blob, ALICE, **options)
        assert all(np.array_equal(out[n], ARRAYS[n]) for n in ARRAYS)


def test_co_recipient_forgery_passes_without_signer_and_fails_with_it():
    blob = save(ARRAYS, [ALICE, BOB], signer=PUBLISHER, generation=1)
    forged = forge(blob, BOB, poison)  # Bob rewrites what Alice will load
    assert load(forged, ALICE)["w"][0, 0] == np.float32(1e30)
    with pytest.raises(SignatureError) as info:
        load(forged, ALICE, signer=PUBLISHER.verifying_key)
    assert info.value.chunk_index == 0 and "'w'" in str(info.value)
    with pytest.raises(SignatureError):
        sealtensors.numpy.load(forged, ALICE, signer=PUBLISHER.verifying_key.text())


def test_removed_recipient_forgery_is_refused_with_signer(tmp_path):
    path = tmp_path / "m.sealed"
    save_file(ARRAYS, path, [ALICE, BOB], signer=PUBLISHER, generation=1)
    kept_copy = path.read_bytes()  # Bob kept the file (and so the data key)
    sealtensors.rewrap(path, ALICE, remove=[BOB])
    current = path.read_bytes()
    # Bob forges content for the current file: he re-encrypts with the data key he kept.
    header = header_of(current)
    forged_data = forge(kept_copy, BOB, poison)
    old = header_of(kept_copy)
    forged = current[:header.index_offset] + forged_data[old.index_offset:]
    data_key = container.unlock(old, [SymmetricKey(BOB)]).data_key
    preamble, copy = container.build(header, data_key)  # he can MAC the header too
    offset = container.copy_offset(header.active, header.capacity)
    forged = forged[:offset] + copy + forged[offset + header.capacity:]
    assert load(forged, ALICE)["w"][0, 0] == np.float32(1e30)
    with pytest.raises(SignatureError):
        load(forged, ALICE, signer=PUBLISHER.verifying_key)


def test_output_copy_holder_cannot_forge_for_the_original(tmp_path):
    path = tmp_path / "m.sealed"
    save_file(ARRAYS, path, [ALICE], signer=PUBLISHER, generation=1)
    copy = tmp_path / "for-bob.sealed"
    sealtensors.rewrap(path, ALICE, add=[BOB], remove=[ALICE], dst=copy)
    forged_copy = forge(copy.read_bytes(), BOB, poison)
    original = path.read_bytes()
    header = header_of(original)
    forged = original[:header.index_offset] + forged_copy[header_of(forged_copy).index_offset:]
    data_key = container.unlock(header_of(copy.read_bytes()), [SymmetricKey(BOB)]).data_key
    _, new_copy = container.build(header, data_key)
    offset = container.copy_offset(header.active, header.capacity)
    forged = forged[:offset] + new_copy + forged[offset + header.capacity:]
    assert load(forged, ALICE)["w"][0, 0] == np.float32(1e30)
    with pytest.raises(SignatureError):
        load(forged, ALICE, signer=PUBLISHER.verifying_key)


def test_forger_who_also_resigns_with_his_own_key_is_not_accepted():
    blob = save(ARRAYS, [ALICE, BOB], signer=MALLORY, generation=9)
    with pytest.raises(SignatureError, match="not an accepted signer"):
        load(blob, ALICE, signer=PUBLISHER.verifying_key)


def test_unsigned_file_is_refused_when_a_signer_is_required():
    blob = save(ARRAYS, [ALICE])
    with pytest.raises(SignatureError, match="not signed"):
        load(blob, ALICE, signer=PUBLISHER.verifying_key)


def test_trailer_tampering_is_detected():
    blob = save(ARRAYS, [ALICE], signer=PUBLISHER, generation=1)
    header = header_of(blob)
    for position in (header.trailer_offset + 40, header.trailer_offset + 2300,
                     len(blob) - 1):
        damaged = bytearray(blob)
        damaged[position] ^= 1
        # without a signer the trailer is not read by loaders...
        assert np.array_equal(load(bytes(damaged), ALICE)["w"], ARRAYS["w"])
        # ...but with one, or in a whole-file verify, it is authenticated by the header
        with pytest.raises(IntegrityError):
            load(bytes(damaged), ALICE, signer=PUBLISHER.verifying_key)


def test_generation_pins_refuse_rollback(tmp_path):
    old = tmp_path / "v1.sealed"
    new = tmp_path / "v2.sealed"
    save_file(ARRAYS, old, [ALICE], signer=PUBLISHER, generation=100)
    save_file(ARRAYS, new, [ALICE], signer=PUBLISHER, generation=101)
    load_file(new, ALICE, signer=PUBLISHER.verifying_key, min_generation=101)
    with pytest.raises(SignatureError, match="older than the pinned"):
        load_file(old, ALICE, signer=PUBLISHER.verifying_key, min_generation=101)
    file_id = sealtensors.inspect(new)["file_id"]
    load_file(new, ALICE, signer=PUBLISHER.verifying_key, expect_file_id=file_id)
    with pytest.raises(SignatureError, match="pinned"):
        load_file(old, ALICE, signer=PUBLISHER.verifying_key, expect_file_id=file_id)
    with pytest.raises(ValueError):
        load_file(new, ALICE, min_generation=1)  # a pin without a signer makes no sense


def test_pin_file_and_trust_file(tmp_path):
    path = tmp_path / "m.sealed"
    save_file(ARRAYS, path, [ALICE], signer=PUBLISHER, generation=50)
    pin = tmp_path / "sealtensors.lock"
    pin.write_text(json.dumps({"signers": [PUBLISHER.verifying_key.text()], "min_generation": 50}))
    assert sealtensors.verify(path, ALICE, pin=pin)["generation"] == 50
    pin.write_text(json.dumps({"signers": [PUBLISHER.verifying_key.text()], "min_generation": 51}))
    with pytest.raises(SignatureError):
        sealtensors.verify(path, ALICE, pin=pin)
    with pytest.raises(SignatureError):
        load_file(path, ALICE, pin=pin)
    trust = tmp_path / "trusted-publishers"
    trust.write_text(f"# ours\n{MALLORY.verifying_key.text()}\n\n{PUBLISHER.verifying_key.text()}\n")
    assert sealtensors.verify(path, ALICE, signer=trust)["signed"]
    trust.write_text(f"{MALLORY.verifying_key.text()}\n")
    with pytest.raises(SignatureError):
        sealtensors.verify(path, ALICE, signer=trust)


def test_random_access_checks_only_what_it_reads():
    blob = save(ARRAYS, [ALICE, BOB], signer=PUBLISHER, generation=1)

    def poison_b(plain: bytearray) -> None:
        plain[-1] ^= 0x7F  # the last byte of "b", far from "w"'s first rows

    forged = forge(blob, BOB, poison_b)
    import tempfile, os

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "f.sealed")
        open(path, "wb").write(forged)
        with sealtensors.safe_open(path, "np", key=ALICE, signer=PUBLISHER.verifying_key) as handle:
            rows = handle.get_slice("w")[:3]
            assert np.array_equal(rows, ARRAYS["w"][:3])
            with pytest.raises(SignatureError):
                handle.get_tensor("b")


def test_reseal_locks_out_a_removed_recipient_for_real(tmp_path):
    path = tmp_path / "m.sealed"
    save_file(ARRAYS, path, [ALICE, BOB], signer=PUBLISHER, generation=1)
    bob_copy = path.read_bytes()
    bob_data_key = container.unlock(header_of(bob_copy), [SymmetricKey(BOB)]).data_key
    with pytest.raises(ValueError, match="signed"):
        sealtensors.reseal(path, ALICE, recipients=[ALICE])  # would silently drop the signature
    sealtensors.reseal(path, ALICE, recipients=[ALICE], signer=PUBLISHER, generation=2)
    new = path.read_bytes()
    header = header_of(new)
    assert header.file_id != header_of(bob_copy).file_id
    with pytest.raises(WrongKeyError):
        load(new, BOB)
    # Bob's old data key opens no slot and authenticates nothing of the new file
    with pytest.raises(IntegrityError):
        chunked.decrypt(bob_data_key, new[header.index_offset:header.data_offset],
                        container.index_context(header.file_id))
    out = load(new, ALICE, signer=PUBLISHER.verifying_key, min_generation=2)
    assert all(np.array_equal(out[n], ARRAYS[n]) for n in ARRAYS)


def test_verifying_key_text_round_trip_and_damage():
    text = PUBLISHER.verifying_key.text()
    assert VerifyingKey.parse(text) == PUBLISHER.verifying_key
    with pytest.raises(sealtensors.InvalidKeyError):
        VerifyingKey.parse(text[:-2])
    with pytest.raises(sealtensors.InvalidKeyError):
        VerifyingKey.parse(generate_identity("x25519").recipient().text())
    assert "SECRET" not in repr(PUBLISHER) and PUBLISHER.text() not in repr(PUBLISHER)


def test_signing_requires_a_generation_in_range():
    with pytest.raises(ValueError):
        save(ARRAYS, [ALICE], signer=PUBLISHER, generation=-1)
    with pytest.raises(ValueError):
        save(ARRAYS, [ALICE], generation=5)  # a generation without a signature


def test_cli_signature_flow(tmp_path, capsys):
    from sealtensors import cli
    from safetensors.numpy import save_file as plain_save

    plain = tmp_path / "m.safetensors"
    plain_save(ARRAYS, str(plain))
    def run(*argv):
        code = cli.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    assert run("keygen", "--type", "signing", "-o", tmp_path / "pub.key")[0] == 0
    assert run("keygen", "--type", "x25519", "-o", tmp_path / "alice.id")[0] == 0
    code, recipient, _ = run("key", "public", tmp_path / "alice.id")
    code, verifying, _ = run("key", "public", tmp_path / "pub.key")
    assert recipient.startswith("st-x25519:") and verifying.startswith("st-sign:")
    sealed = tmp_path / "m.sealed"
    assert run("seal", plain, sealed, "-r", recipient.strip(), "--sign-with", tmp_path / "pub.key",
               "--generation", "7")[0] == 0
    code, out, _ = run("verify", sealed, "-i", tmp_path / "alice.id", "--signer", verifying.strip())
    assert code == 0 and "generation 7" in out
    code, _, err = run("verify", sealed, "-i", tmp_path / "alice.id", "--signer",
                       MALLORY.verifying_key.text())
    assert code == cli.EXIT_SIGNATURE and "signature" in err
    code, _, _ = run("verify", sealed, "-i", tmp_path / "alice.id", "--signer", verifying.strip(),
                     "--min-generation", "8")
    assert code == cli.EXIT_SIGNATURE
