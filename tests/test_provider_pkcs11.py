"""The PKCS#11 provider against SoftHSM2 tokens created in a temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from sealtensors.errors import FormatError, KeyProviderError
from sealtensors.keys.provider import BINDING_LABEL, provider_class

try:
    import pkcs11
except ImportError as exc:  # CI installs it: a missing one is a failure, not a skip
    raise ImportError(f"the PKCS#11 provider tests need python-pkcs11 ({exc}); "
                      "install the 'test' and 'pkcs11' extras") from exc

FILE_ID = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
BINDING = BINDING_LABEL + FILE_ID
OTHER_BINDING = BINDING_LABEL + bytes(16)
MODULE_CANDIDATES = ("/usr/lib/softhsm/libsofthsm2.so",
                     "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                     "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")
USER_PIN = "4711-test-pin"
TOKEN, OTHER_TOKEN = "sealtensors-a", "sealtensors-b"


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory):
    """Two initialised SoftHSM2 tokens under a private SOFTHSM2_CONF; yields the module path."""
    tool = shutil.which("softhsm2-util")
    module = next((path for path in MODULE_CANDIDATES if os.path.exists(path)), None)
    if tool is None or module is None:
        pytest.fail("SoftHSM2 is not installed (softhsm2-util / libsofthsm2.so missing): "
                    "apt-get install softhsm2 (.ci/run does)")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    previous = os.environ.get("SOFTHSM2_CONF")
    # SoftHSM reads SOFTHSM2_CONF once, when the module is initialised in this process.
    os.environ["SOFTHSM2_CONF"] = str(conf)
    for label in (TOKEN, OTHER_TOKEN):
        subprocess.run([tool, "--init-token", "--free", "--label", label, "--pin", USER_PIN,
                        "--so-pin", "so-" + USER_PIN], check=True, capture_output=True)
    try:
        yield module
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


def _provider(module, token=TOKEN, key="kek-1", **kwargs):
    kwargs.setdefault("pin", USER_PIN)
    return provider_class("pkcs11")(token, key, module=module, **kwargs)


@pytest.fixture(scope="module")
def kek(softhsm):
    provider = _provider(softhsm)
    provider.generate_key()
    return provider


def test_round_trip_with_a_key_generated_in_the_token(kek):
    data_key = os.urandom(32)
    payload = kek.wrap(data_key, BINDING)
    assert data_key not in payload
    assert kek.unwrap(payload, BINDING) == data_key
    label_length = payload[1]
    assert payload[2:2 + label_length] == b"kek-1"
    assert len(payload) == 1 + 1 + label_length + 1 + 12 + 32 + 16


def test_key_is_sensitive_and_never_extractable(kek, softhsm):
    assert kek.key_attributes() == {"sensitive": True, "extractable": False,
                                    "always_sensitive": True, "never_extractable": True,
                                    "token": True, "private": True}
    token = pkcs11.lib(softhsm).get_token(token_label=TOKEN)
    with token.open(user_pin=USER_PIN) as session:
        key = session.get_key(label="kek-1", object_class=pkcs11.ObjectClass.SECRET_KEY)
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[pkcs11.Attribute.VALUE]


def test_wrong_binding_is_refused_by_the_token(kek):
    payload = kek.wrap(os.urandom(32), BINDING)
    with pytest.raises(KeyProviderError, match="refused the payload: file binding does not match"):
        kek.unwrap(payload, OTHER_BINDING)
    tampered = payload[:-1] + bytes([payload[-1] ^ 0x80])
    with pytest.raises(KeyProviderError, match="refused the payload"):
        kek.unwrap(tampered, BINDING)


def test_wrong_pin_is_a_clear_error(kek, softhsm):
    payload = kek.wrap(os.urandom(32), BINDING)
    with pytest.raises(KeyProviderError) as info:
        _provider(softhsm, pin="0000-wrong").unwrap(payload, BINDING)
    assert str(info.value) == f"pkcs11: wrong PIN for token {TOKEN!r}"


def test_pin_from_file_or_environment(kek, softhsm, tmp_path, monkeypatch):
    data_key = os.urandom(32)
    payload = kek.wrap(data_key, BINDING)
    pin_file = tmp_path / "pin"
    pin_file.write_text(USER_PIN + "\n")
    assert _provider(softhsm, pin=None, pin_file=pin_file).unwrap(payload, BINDING) == data_key
    monkeypatch.setenv("MY_TOKEN_PIN", USER_PIN)
    assert _provider(softhsm, pin=None, pin_env="MY_TOKEN_PIN").unwrap(payload, BINDING) == data_key
    monkeypatch.delenv("SEALTENSORS_PKCS11_PIN", raising=False)
    with pytest.raises(KeyProviderError, match="no PIN: set SEALTENSORS_PKCS11_PIN"):
        _provider(softhsm, pin=None).unwrap(payload, BINDING)
    with pytest.raises(KeyProviderError, match="cannot read the PIN file"):
        _provider(softhsm, pin=None, pin_file=tmp_path / "absent").unwrap(payload, BINDING)


def test_absent_token_is_a_clear_error(kek, softhsm):
    payload = kek.wrap(os.urandom(32), BINDING)
    with pytest.raises(KeyProviderError) as info:
        _provider(softhsm, token="no-such-token").unwrap(payload, BINDING)
    assert str(info.value) == f"pkcs11: token 'no-such-token' not present (module {softhsm})"


def test_missing_module_is_a_clear_error(tmp_path):
    with pytest.raises(KeyProviderError, match="does not exist"):
        _provider(str(tmp_path / "libnothing.so")).wrap(os.urandom(32), BINDING)


def test_key_not_in_token_means_not_this_providers_slot(kek, softhsm):
    """Decision: a payload naming a key this token does not hold unwraps to None (the reader
    tries the file's other slots, and reports WrongKeyError if none opens); wrapping with a
    missing key is an error."""
    payload = kek.wrap(os.urandom(32), BINDING)
    assert _provider(softhsm, token=OTHER_TOKEN).unwrap(payload, BINDING) is None
    assert _provider(softhsm, key="kek-other").unwrap(payload, BINDING) is None
    with pytest.raises(KeyProviderError, match="no AES key labelled 'kek-1' in token"):
        _provider(softhsm, token=OTHER_TOKEN).wrap(os.urandom(32), BINDING)


def test_same_label_in_another_token_is_refused(softhsm, kek):
    other = _provider(softhsm, token=OTHER_TOKEN, key="kek-same")
    mine = _provider(softhsm, key="kek-same")
    if not _has_key(mine):
        mine.generate_key()
        other.generate_key()
    payload = mine.wrap(os.urandom(32), BINDING)
    with pytest.raises(KeyProviderError, match="refused the payload"):
        other.unwrap(payload, BINDING)


def _has_key(provider) -> bool:
    try:
        provider.key_attributes()
    except KeyProviderError:
        return False
    return True


def test_generate_key_refuses_a_duplicate_and_payloads_are_checked(kek):
    with pytest.raises(KeyProviderError, match="already holds a key labelled 'kek-1'"):
        kek.generate_key()
    with pytest.raises(FormatError, match="pkcs11 payload"):
        kek.unwrap(b"\x01\x05kek-1", BINDING)
    with pytest.raises(FormatError, match="unknown version"):
        kek.unwrap(b"\x09" + bytes(70), BINDING)


def test_repr_holds_no_pin(kek):
    assert USER_PIN not in repr(kek)
    assert repr(kek) == ("Pkcs11Provider(token_label='sealtensors-a', key_label='kek-1', "
                         f"module={kek.module!r})")
