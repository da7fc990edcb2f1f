"""The signed envelope and signed manifests: whatever is changed, added or left out is refused."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_lstm.errors import CheckpointRejected, ConfigError
from stream_lstm.state.signing import (
    HEADER_BYTES,
    MIN_KEY_BYTES,
    CheckpointSigner,
    check_key,
    is_signed,
    unseal,
)

KEY = b"k" * MIN_KEY_BYTES
OTHER_KEY = b"o" * MIN_KEY_BYTES
NAME = "partitions/events/3"
SIGNER = CheckpointSigner(KEY)


@given(payload=st.binary(max_size=200))
def test_a_sealed_payload_opens_to_itself(payload: bytes) -> None:
    sealed = SIGNER.seal(payload, NAME)
    assert is_signed(sealed) and len(sealed) == HEADER_BYTES + len(payload)
    assert SIGNER.open(sealed, NAME, "here") == payload


@given(payload=st.binary(min_size=1, max_size=200), data=st.data())
def test_any_changed_byte_is_refused(payload: bytes, data: st.DataObject) -> None:
    sealed = bytearray(SIGNER.seal(payload, NAME))
    index = data.draw(st.integers(0, len(sealed) - 1), label="index")
    sealed[index] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(CheckpointRejected) as error:
        SIGNER.open(bytes(sealed), NAME, "here")
    assert error.value.reason in ("unsigned", "bad_signature")  # a changed magic reads as unsigned


@given(payload=st.binary(max_size=200), data=st.data())
def test_a_truncated_or_extended_envelope_is_refused(payload: bytes, data: st.DataObject) -> None:
    sealed = SIGNER.seal(payload, NAME)
    cut = data.draw(st.integers(len(b"STREAM-LSTM-SIGNED\n"), len(sealed) - 1), label="cut")
    with pytest.raises(CheckpointRejected, match="refused"):
        SIGNER.open(sealed[:cut], NAME, "here")
    with pytest.raises(CheckpointRejected, match="wrong signature"):
        SIGNER.open(sealed + data.draw(st.binary(min_size=1, max_size=8)), NAME, "here")


def test_a_wrong_key_another_name_or_no_signature_is_refused() -> None:
    sealed = SIGNER.seal(b"state", NAME)
    with pytest.raises(CheckpointRejected, match="key this instance does not have") as error:
        CheckpointSigner(OTHER_KEY).open(sealed, NAME, "here")
    assert error.value.reason == "bad_signature"
    with pytest.raises(CheckpointRejected, match="another name") as error:
        SIGNER.open(sealed, "partitions/events/4", "here")
    assert error.value.reason == "bad_signature"
    with pytest.raises(CheckpointRejected, match="here is not signed") as error:
        SIGNER.open(b"STREAM-LSTM-CHECKPOINT\n\x00\x01state", NAME, "here")
    assert error.value.reason == "unsigned"


def test_a_previous_key_verifies_but_never_signs() -> None:
    old = CheckpointSigner(OTHER_KEY).seal(b"state", NAME)
    rotated = CheckpointSigner(KEY, [OTHER_KEY])
    assert rotated.open(old, NAME, "here") == b"state"
    assert rotated.seal(b"state", NAME) == SIGNER.seal(b"state", NAME)
    assert OTHER_KEY.decode() not in repr(rotated) and KEY.decode() not in repr(rotated)


def test_without_a_key_a_signed_checkpoint_loads_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert unseal(None, SIGNER.seal(b"state", NAME), NAME, "here") == b"state"
    assert "here is signed, but no checkpoint key is set" in caplog.text
    assert unseal(None, b"plain", NAME, "here") == b"plain"
    with pytest.raises(CheckpointRejected, match="refused"):
        unseal(SIGNER, b"plain", NAME, "here")


def manifest() -> dict:
    return {
        "format": 1,
        "version": "abc",
        "chunks": 2,
        "bytes": 10,
        "sha256": "00" * 32,
        "written": 1764900000.123,
        "epoch": 17,
    }


def stored(value: dict) -> dict:
    """As a reader gets it back from the topic."""
    return json.loads(json.dumps(value).encode())


def test_a_signed_manifest_verifies_after_a_round_trip_through_json() -> None:
    SIGNER.check_manifest(stored(SIGNER.sign_manifest(manifest(), NAME)), NAME, "here")


@given(
    field=st.sampled_from(["format", "version", "chunks", "bytes", "sha256", "written", "epoch", "key_id"]),
    value=st.one_of(st.integers(), st.text(max_size=10), st.floats(allow_nan=False), st.none()),
)
def test_any_changed_manifest_field_is_refused(field: str, value: object) -> None:
    signed = stored(SIGNER.sign_manifest(manifest(), NAME))
    if signed[field] == value and type(signed[field]) is type(value):
        return  # not a change
    signed[field] = value
    with pytest.raises(CheckpointRejected, match="refused"):
        SIGNER.check_manifest(signed, NAME, "here")


def test_a_manifest_is_refused_unsigned_with_another_key_under_another_name_or_with_a_field_added() -> None:
    with pytest.raises(CheckpointRejected) as error:
        SIGNER.check_manifest(manifest(), NAME, "here")
    assert error.value.reason == "unsigned"
    signed = stored(CheckpointSigner(OTHER_KEY).sign_manifest(manifest(), NAME))
    with pytest.raises(CheckpointRejected) as error:
        SIGNER.check_manifest(signed, NAME, "here")
    assert error.value.reason == "bad_signature"
    signed = stored(SIGNER.sign_manifest(manifest(), NAME))
    with pytest.raises(CheckpointRejected, match="wrong signature"):
        SIGNER.check_manifest(signed, "partitions/events/4", "here")  # replayed under another key
    with pytest.raises(CheckpointRejected, match="wrong signature"):
        SIGNER.check_manifest({**signed, "extra": 1}, NAME, "here")
    for broken in ({**signed, "hmac": 5}, {**signed, "key_id": "zz"}, {**signed, "hmac": "é"}):
        with pytest.raises(CheckpointRejected, match="refused"):
            SIGNER.check_manifest(broken, NAME, "here")


def test_a_short_key_is_a_config_error_that_never_shows_the_key() -> None:
    with pytest.raises(ConfigError, match="--checkpoint-key must be at least 32 bytes long") as error:
        check_key("short-secret-value", "--checkpoint-key")
    assert "short-secret-value" not in str(error.value)
    assert check_key("é" * 16, "--checkpoint-key") == ("é" * 16).encode()  # bytes of UTF-8, not characters
