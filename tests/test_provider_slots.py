"""Provider slots in sealed files: KMS, TPM and public-key recipients in one file, moved between providers by rewrap."""

from __future__ import annotations

import numpy as np
import pytest

import sealtensors
from sealtensors import KeyProviderError, WrongKeyError
from sealtensors.keys import generate_identity
from sealtensors.keys.provider import provider_class
from sealtensors.numpy import load_file, save_file

# The real services, started by the provider tests' own fixtures (moto in server mode, swtpm).
from test_provider_kms import _session, moto_server  # noqa: F401 - fixtures
from test_provider_tpm2 import PCR, other_tpm, tpm  # noqa: F401 - fixtures

pytestmark = pytest.mark.engine_independent

ARRAYS = {"w": np.arange(20_000, dtype=np.float32).reshape(200, 100), "b": np.ones(3, np.int8)}
X25519 = generate_identity("x25519")


def kms_provider(server, key_id=None):
    client = _session().client("kms", endpoint_url=server.url)
    key_id = key_id or client.create_key()["KeyMetadata"]["KeyId"]
    return provider_class("aws-kms")(key_id, region="us-east-1", endpoint_url=server.url,
                                     session=_session()), client, key_id


def tpm_provider(machine):
    return provider_class("tpm2")(tcti=machine.tcti, pcrs=(PCR,))


def same(arrays) -> bool:
    return all(np.array_equal(arrays[n], ARRAYS[n]) for n in ARRAYS)


def test_one_file_with_kms_tpm_and_x25519_slots(tmp_path, moto_server, tpm):
    kms, client, key_id = kms_provider(moto_server)
    machine = tpm_provider(tpm)
    path = tmp_path / "mixed.sealed"
    save_file(ARRAYS, path, [kms, machine, X25519.recipient().text()])
    assert [s["type"] for s in sealtensors.inspect(path)["slots"]] == ["provider", "provider",
                                                                        "x25519"]
    for identity in (kms, machine, X25519):
        assert same(load_file(path, identity))
    # a disabled KMS key: a clear provider error (exit code 9 in the CLI), not a wrong key
    client.disable_key(KeyId=key_id)
    with pytest.raises(KeyProviderError):
        load_file(path, kms)
    client.enable_key(KeyId=key_id)


def test_rewrap_moves_a_file_from_kms_to_the_tpm_without_touching_data(tmp_path, moto_server, tpm):
    kms, _, _ = kms_provider(moto_server)
    machine = tpm_provider(tpm)
    path = tmp_path / "m.sealed"
    save_file(ARRAYS, path, [kms])
    region = sealtensors.inspect(path)["header_size"]
    before = path.read_bytes()[region:]
    sealtensors.rewrap(path, kms, add=[machine])
    sealtensors.rewrap(path, machine, remove=[kms])
    assert path.read_bytes()[region:] == before
    assert same(load_file(path, machine))
    with pytest.raises(WrongKeyError):
        load_file(path, kms)


def test_another_tpm_does_not_own_the_slot(tmp_path, tpm, other_tpm):
    machine = tpm_provider(tpm)
    first = tmp_path / "a.sealed"
    save_file(ARRAYS, first, [machine, bytes(32)])
    # another TPM is another provider instance: it does not own the slot
    with pytest.raises((WrongKeyError, KeyProviderError)):
        load_file(first, tpm_provider(other_tpm))
    assert same(load_file(first, machine))
