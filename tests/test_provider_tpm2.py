"""The TPM 2.0 provider against swtpm software TPMs started by the tests."""

from __future__ import annotations

import os
import shutil
import socket

import pytest
from service_process import ServiceProcess

from sealtensors.errors import FormatError, KeyProviderError
from sealtensors.keys.provider import BINDING_LABEL, provider_class

try:
    import tpm2_pytss
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA
except ImportError as exc:  # CI installs it: a missing one is a failure, not a skip
    raise ImportError(f"the TPM provider tests need tpm2-pytss ({exc}); "
                      "install the 'test' and 'tpm' extras (and apt libtss2-dev)") from exc

FILE_ID = bytes.fromhex("5a5a5a5a000102030405060708090a0b")
BINDING = BINDING_LABEL + FILE_ID
OTHER_BINDING = BINDING_LABEL + bytes(16)
PCR = 23  # the debug PCR: free to extend on a software TPM


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free loopback ports")


class SoftwareTpm:
    """``swtpm socket --tpm2`` with its own state directory, on loopback ports P (TPM) and P+1."""

    def __init__(self, state_dir) -> None:
        binary = shutil.which("swtpm")
        if binary is None:
            pytest.fail("swtpm is not installed: apt-get install swtpm swtpm-tools (.ci/run does)")
        self.port = _free_port_pair()
        self.tcti = f"swtpm:host=127.0.0.1,port={self.port}"
        self._service = ServiceProcess(
            "swtpm", [binary, "socket", "--tpm2", "--tpmstate", f"dir={state_dir}",
                      "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                      "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                      "--flags", "not-need-init,startup-clear"], self.port, timeout=20)

    def extend_pcr(self, index: int) -> None:
        with tpm2_pytss.ESAPI(self.tcti) as esys:
            digests = TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256,
                                                  digest=TPMU_HA(sha256=os.urandom(32)))])
            esys.pcr_extend(getattr(ESYS_TR, f"PCR{index}"), digests)

    def stop(self) -> None:
        self._service.stop()


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    machine = SoftwareTpm(tmp_path_factory.mktemp("swtpm-a"))
    try:
        yield machine
    finally:
        machine.stop()


@pytest.fixture(scope="module")
def other_tpm(tmp_path_factory):
    machine = SoftwareTpm(tmp_path_factory.mktemp("swtpm-b"))
    try:
        yield machine
    finally:
        machine.stop()


def _provider(machine, pcrs=(PCR,)):
    return provider_class("tpm2")(tcti=machine.tcti, pcrs=pcrs)


def test_round_trip_sealed_to_the_tpm(tpm):
    provider = _provider(tpm)
    data_key = os.urandom(32)
    payload = provider.wrap(data_key, BINDING)
    assert data_key not in payload
    assert provider.unwrap(payload, BINDING) == data_key
    assert payload[0] == 1 and int.from_bytes(payload[1:3], "big") == TPM2_ALG.SHA256
    assert int.from_bytes(payload[3:7], "big") == 1 << PCR


def test_extending_the_pcr_after_sealing_is_a_pcr_mismatch(tpm):
    provider = _provider(tpm)
    payload = provider.wrap(os.urandom(32), BINDING)
    tpm.extend_pcr(PCR)
    with pytest.raises(KeyProviderError) as info:
        provider.unwrap(payload, BINDING)
    assert str(info.value).startswith("tpm2: PCR mismatch: sha256:23 changed since the key was "
                                      "sealed")
    assert "\n" not in str(info.value)
    # Sealed anew in the new state, a key opens again: the policy follows the PCR values.
    data_key = os.urandom(32)
    assert provider.unwrap(provider.wrap(data_key, BINDING), BINDING) == data_key


def test_wrong_binding_is_refused_by_the_tpm(tpm):
    provider = _provider(tpm)
    payload = provider.wrap(os.urandom(32), BINDING)
    with pytest.raises(KeyProviderError, match="the TPM refused the payload: file binding does "
                                               "not match"):
        provider.unwrap(payload, OTHER_BINDING)


def test_another_tpm_cannot_unwrap(tpm, other_tpm):
    payload = _provider(tpm).wrap(os.urandom(32), BINDING)
    assert _provider(other_tpm).unwrap(payload, BINDING) is None
    # Even with the check on the primary's name forged away, the other TPM refuses the object.
    other_name = _primary_name(other_tpm)
    name_length = int.from_bytes(payload[7:9], "big")
    forged = (payload[:7] + len(other_name).to_bytes(2, "big") + other_name
              + payload[9 + name_length:])
    with pytest.raises(KeyProviderError, match="rejected the sealed object"):
        _provider(other_tpm).unwrap(forged, BINDING)


def _primary_name(machine) -> bytes:
    payload = _provider(machine, pcrs=()).wrap(os.urandom(32), BINDING)
    length = int.from_bytes(payload[7:9], "big")
    return payload[9:9 + length]


def test_no_pcr_policy_still_binds_the_file(tpm):
    provider = _provider(tpm, pcrs=())
    data_key = os.urandom(32)
    payload = provider.wrap(data_key, BINDING)
    tpm.extend_pcr(PCR)
    assert provider.unwrap(payload, BINDING) == data_key
    with pytest.raises(KeyProviderError, match="file binding does not match"):
        provider.unwrap(payload, OTHER_BINDING)


def test_malformed_and_tampered_payloads(tpm):
    provider = _provider(tpm)
    payload = provider.wrap(os.urandom(32), BINDING)
    with pytest.raises(FormatError, match="tpm2 payload"):
        provider.unwrap(payload[:20], BINDING)
    with pytest.raises(FormatError, match="trailing bytes"):
        provider.unwrap(payload + b"\x00", BINDING)
    tampered = payload[:-3] + bytes([payload[-3] ^ 1]) + payload[-2:]
    with pytest.raises(KeyProviderError, match="rejected the sealed object"):
        provider.unwrap(tampered, BINDING)


def test_unreachable_tpm_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = provider_class("tpm2")(tcti=f"swtpm:host=127.0.0.1,port={port}", pcrs=(PCR,))
    with pytest.raises(KeyProviderError, match=r"cannot reach the TPM \(tcti swtpm:host="):
        provider.wrap(os.urandom(32), BINDING)


def test_configuration_is_checked_and_repr_is_plain(tpm):
    with pytest.raises(ValueError, match="PCR indexes must be 0..23"):
        provider_class("tpm2")(pcrs=(24,))
    assert repr(_provider(tpm)) == f"Tpm2Provider(tcti={tpm.tcti!r}, pcrs=(23,), pcr_bank='sha256')"
