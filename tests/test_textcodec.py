"""The text form of keys (keys/textcodec.py): tag, canonical unpadded base64url, 4-byte checksum; every
malformed spelling is an InvalidKeyError that does not echo the string."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, strategies as st

from sealtensors.errors import InvalidKeyError
from sealtensors.keys import textcodec
from sealtensors.keys.keyfile import parse_recipient
from sealtensors.keys.signing import VerifyingKey

pytestmark = pytest.mark.engine_independent  # parsing only: one engine is enough

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def payload_for(tag: str) -> bytes:
    return bytes((7 * i + len(tag)) % 256 for i in range(textcodec.ALL_TAGS[tag]))


def independent(tag: str, payload: bytes) -> str:
    check = hashlib.sha256(tag.encode() + b":" + payload).digest()[:4]
    return tag + ":" + base64.urlsafe_b64encode(payload + check).decode().rstrip("=")


TAGS = sorted(textcodec.ALL_TAGS)


@pytest.mark.parametrize("tag", TAGS)
def test_round_trip_matches_the_specification(tag):
    payload = payload_for(tag)
    text = textcodec.encode(tag, payload)
    assert text == independent(tag, payload)
    assert textcodec.decode(text) == (tag, payload)
    assert textcodec.decode(f"  {text}\n") == (tag, payload)  # surrounding whitespace is trimmed
    assert textcodec.tag_of(text) == tag
    assert (tag.lower() == tag) == (tag in textcodec.PUBLIC_TAGS)


def test_encode_refuses_wrong_payload_sizes():
    with pytest.raises(ValueError):
        textcodec.encode("st-x25519", bytes(31))
    with pytest.raises(ValueError):
        textcodec.encode("st-nope", bytes(32))


def _rejected(text: str, match: str | None = None, allowed=None) -> InvalidKeyError:
    with pytest.raises(InvalidKeyError, match=match) as info:
        textcodec.decode(text, allowed)
    body = text.partition(":")[2].strip()
    if len(body) >= 12:
        assert body not in str(info.value) and body[:12] not in str(info.value)
    return info.value


@pytest.mark.parametrize("text", ["", ":", "st-x25519", "st-x25519AAAA", "st-foo:AAAA",
                                  "ST-x25519:AAAA", "st-X25519:AAAA", "x25519:AAAA",
                                  " st-sign :AAAA", "sealtensors-key-v1:00"])
def test_unknown_or_missing_tag(text):
    _rejected(text, "not a sealtensors key string")


@pytest.mark.parametrize("tag", TAGS)
def test_bad_base64_characters(tag):
    text = textcodec.encode(tag, payload_for(tag))
    head, body = text.split(":")
    for bad in ("+", "/", "=", ".", " ", "\n", "é", "\x00"):
        _rejected(f"{head}:{body[:10]}{bad}{body[11:]}")
    _rejected(text + "=")
    _rejected(text + "==")


@pytest.mark.parametrize("tag", [t for t in TAGS if (textcodec.ALL_TAGS[t] + 4) % 3])
def test_non_canonical_trailing_bits(tag):
    """Payload + check lengths that are not a multiple of 3 leave unused bits in the last
    character: any non-zero value there is another spelling of the same bytes, refused."""
    text = textcodec.encode(tag, payload_for(tag))
    last = ALPHABET.index(text[-1])
    unused = 2 if (textcodec.ALL_TAGS[tag] + 4) % 3 == 2 else 4
    assert last % (1 << unused) == 0
    for bits in range(1, 1 << unused):
        spelled = text[:-1] + ALPHABET[last | bits]
        assert base64.urlsafe_b64decode(spelled.split(":")[1] + "==") \
            == base64.urlsafe_b64decode(text.split(":")[1] + "==")
        _rejected(spelled, "canonical")


@pytest.mark.parametrize("tag", TAGS)
def test_wrong_length(tag):
    text = textcodec.encode(tag, payload_for(tag))
    _rejected(text + "AAAA", "bytes where")
    _rejected(text[:-4], "bytes where")
    longer = textcodec.encode("st-xwing", payload_for("st-xwing")).split(":")[1]
    if tag != "st-xwing":
        _rejected(f"{tag}:{longer}", "bytes where")


@pytest.mark.parametrize("tag", TAGS)
def test_truncated_at_every_length(tag):
    text = textcodec.encode(tag, payload_for(tag))
    step = max(1, len(text) // 60)
    for end in range(len(tag) + 1, len(text), step):
        _rejected(text[:end])


@pytest.mark.parametrize("tag", TAGS)
def test_bad_checksum(tag):
    text = textcodec.encode(tag, payload_for(tag))
    head, body = text.split(":")
    for position in (0, len(body) // 2, len(body) - 3):
        swapped = ALPHABET[(ALPHABET.index(body[position]) + 1) % 64]
        _rejected(f"{head}:{body[:position]}{swapped}{body[position + 1:]}", "checksum")
    # the check covers the tag: the same body under another tag of the same size
    for other in TAGS:
        if other != tag and textcodec.ALL_TAGS[other] == textcodec.ALL_TAGS[tag]:
            _rejected(f"{other}:{body}", "checksum")


def test_inner_whitespace_is_refused():
    text = textcodec.encode("st-x25519", payload_for("st-x25519"))
    for broken in (text[:20] + " " + text[20:], text[:20] + "\n" + text[20:],
                   text.replace(":", ": "), text[:20] + "\t" + text[20:]):
        _rejected(broken)


@pytest.mark.parametrize("secret_tag", sorted(textcodec.SECRET_TAGS))
def test_secret_where_a_public_key_is_expected(secret_tag):
    secret = textcodec.encode(secret_tag, payload_for(secret_tag))
    err = _rejected(secret, "cannot be used here", allowed=tuple(textcodec.PUBLIC_TAGS))
    assert secret not in str(err)
    with pytest.raises(InvalidKeyError) as info:
        parse_recipient(secret)
    assert secret.split(":")[1][:12] not in str(info.value)
    with pytest.raises(InvalidKeyError):
        VerifyingKey.parse(secret)


def test_public_key_of_another_type_is_refused():
    xwing = textcodec.encode("st-xwing", payload_for("st-xwing"))
    _rejected(xwing, "cannot be used here", allowed=("st-x25519",))
    with pytest.raises(InvalidKeyError):
        VerifyingKey.parse(xwing)


@given(st.text(max_size=120))
def test_random_strings(text):
    try:
        tag, payload = textcodec.decode(text)
    except InvalidKeyError:
        return
    assert len(payload) == textcodec.ALL_TAGS[tag]


@given(st.sampled_from(TAGS), st.binary(min_size=0, max_size=80))
def test_random_bodies_under_a_known_tag(tag, raw):
    text = tag + ":" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    try:
        decoded_tag, payload = textcodec.decode(text)
    except InvalidKeyError:
        return
    assert decoded_tag == tag and raw == payload + hashlib.sha256(
        tag.encode() + b":" + payload).digest()[:4]
