"""Third-party key providers through the entry-point group, and the guard every provider gets."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest

from sealtensors.errors import FormatError, KeyProviderError
from sealtensors.keys import provider as provider_mod
from sealtensors.keys.provider import (BINDING_LABEL, ENTRY_POINT_GROUP, KeyProvider,
                                       provider_class, provider_names)

PLUGIN_SOURCE = Path(__file__).parent / "providers_plugin" / "st_test_provider"
BINDING = BINDING_LABEL + bytes(range(16))
OTHER_BINDING = BINDING_LABEL + bytes(range(1, 17))


@pytest.fixture(scope="module")
def plugin_installed(tmp_path_factory):
    """The test plug-in on sys.path with a .dist-info declaring its entry points."""
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(PLUGIN_SOURCE, root / "st_test_provider")
    dist = root / "st_test_provider-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: st-test-provider\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "test-local-aes = st_test_provider:LocalAesProvider\n"
        "test-not-a-provider = st_test_provider:NotAProvider\n"
        "test-missing-module = st_test_provider_absent:Nothing\n")
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("st_test_provider", None)
        importlib.invalidate_caches()


def test_entry_point_provider_is_found_by_name(plugin_installed):
    cls = provider_class("test-local-aes")
    assert cls.__module__ == "st_test_provider"
    assert issubclass(cls, KeyProvider)
    assert "test-local-aes" in provider_names()
    assert {"aws-kms", "pkcs11", "tpm2"} <= set(provider_names())


def test_entry_point_provider_round_trip_and_binding(plugin_installed):
    provider = provider_class("test-local-aes")(os.urandom(32))
    data_key = os.urandom(32)
    payload = provider.wrap(data_key, BINDING)
    assert data_key not in payload
    assert provider.unwrap(payload, BINDING) == data_key
    with pytest.raises(KeyProviderError, match="refused"):
        provider.unwrap(payload, OTHER_BINDING)


def test_unknown_name_is_a_clear_error(plugin_installed):
    with pytest.raises(KeyProviderError, match="no key provider named 'no-such-provider' is "
                                               "installed"):
        provider_class("no-such-provider")


def test_entry_point_that_is_not_a_provider_is_refused(plugin_installed):
    with pytest.raises(KeyProviderError, match="not a KeyProvider subclass"):
        provider_class("test-not-a-provider")
    with pytest.raises(KeyProviderError, match="cannot be loaded: ModuleNotFoundError"):
        provider_class("test-missing-module")


def test_builtin_names_resolve_without_importing_their_dependencies():
    for name, module in (("aws-kms", "boto3"), ("pkcs11", "pkcs11"), ("tpm2", "tpm2_pytss")):
        was_loaded = module in sys.modules
        cls = provider_class(name)
        assert cls.name == name
        if not was_loaded:
            assert module not in sys.modules, f"resolving {name!r} imported {module}"


def test_guard_turns_plugin_crashes_into_one_line_provider_errors(plugin_installed):
    cls = provider_class("test-local-aes")
    with pytest.raises(KeyProviderError) as info:
        cls(os.urandom(32), behaviour="crash").wrap(os.urandom(32), BINDING)
    assert str(info.value) == "test-local-aes: wrap failed: ZeroDivisionError: plug-in bug"
    with pytest.raises(KeyProviderError, match="unwrap failed: ZeroDivisionError"):
        cls(os.urandom(32), behaviour="crash").unwrap(b"x" * 40, BINDING)
    with pytest.raises(KeyProviderError, match="16-byte data key"):
        cls(os.urandom(32), behaviour="short-key").unwrap(b"x" * 40, BINDING)


def test_guard_checks_arguments(plugin_installed):
    provider = provider_class("test-local-aes")(os.urandom(32))
    with pytest.raises(ValueError, match="data_key must be 32 bytes"):
        provider.wrap(b"k" * 31, BINDING)
    with pytest.raises(TypeError, match="binding must be bytes"):
        provider.wrap(b"k" * 32, "not bytes")
    with pytest.raises(FormatError, match="payload of 0 bytes"):
        provider.unwrap(b"", BINDING)
    with pytest.raises(FormatError, match="payload of 8193 bytes"):
        provider.unwrap(b"p" * (provider_mod.MAX_PAYLOAD_BYTES + 1), BINDING)


def test_guard_applies_to_subclasses_of_subclasses(plugin_installed):
    base = provider_class("test-local-aes")

    class Derived(base):
        def wrap(self, data_key, binding):
            return b""  # an empty payload is never valid

    with pytest.raises(KeyProviderError, match="0-byte payload"):
        Derived(os.urandom(32)).wrap(os.urandom(32), BINDING)
