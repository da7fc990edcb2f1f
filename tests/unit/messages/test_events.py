"""Decoding Kafka message values into events, and the reason code of every malformed one."""

from __future__ import annotations

import pytest

from stream_lstm.errors import EventError
from stream_lstm.messages.decoding import DECODE_ERROR_CODES, decode_event
from stream_lstm.messages.events import Event, encode_event


def test_decodes_a_full_message_and_prefers_the_key_in_the_value() -> None:
    event = decode_event(
        b'{"key": "u1", "ts": "2024-01-01T00:00:00Z", "features": {"a": 1, "b": -2.5}, "label": 0}', b"other"
    )
    assert event == Event(key="u1", ts=1704067200.0, features={"a": 1.0, "b": -2.5}, label=0)


def test_message_key_is_the_entity_key_when_the_value_has_none() -> None:
    assert decode_event(b'{"features": {}}', b"sensor-9").key == "sensor-9"
    assert decode_event(b'{"features": {}, "label": null}', None).key == ""


def test_round_trip() -> None:
    event = Event(key="k", ts=12.5, features={"x": 0.25}, label=1)
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"\xff\xfe not json", "not_json"),
        (b"{", "not_json"),
        (None, "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"label": 1}', "missing_features"),
        (b'{"features": [1, 2]}', "missing_features"),
        (b'{"features": {"x": [1.0]}}', "bad_feature"),
        (b'{"features": {"x": {"y": 1}}}', "bad_feature"),
        (b'{"features": {"x": "NaN"}}', "non_finite"),
        (b'{"features": {"x": "1e300"}}', "out_of_range"),
        (b'{"features": {"city": "\\udc00"}}', "bad_category"),
        (b'{"features": {"city": "' + b"p" * 300 + b'"}}', "bad_category"),
        (b'{"features": {"x": NaN}}', "non_finite"),
        (b'{"features": {"x": -Infinity}}', "non_finite"),
        (b'{"features": {"x": 1e999}}', "non_finite"),
        (b'{"features": {}, "label": 2}', "bad_label"),
        (b'{"features": {}, "label": "yes"}', "bad_label"),
        (b'{"features": {}, "label": [1]}', "bad_label"),
        (b'{"features": {}, "ts": "yesterday"}', "bad_ts"),
        (b'{"features": {}, "ts": "nan"}', "bad_ts"),
        (b'{"features": {}, "key": 7.5}', "bad_key"),
        (b'{"features": {}, "key": true}', "bad_key"),
        (b'{"features": {"x": 1}, "pad": "' + b"x" * 2000 + b'"}', "too_large"),
    ],
)
def test_malformed_messages_raise_with_a_bounded_reason_code(value: bytes | None, code: str) -> None:
    with pytest.raises(EventError) as error:
        decode_event(value, max_bytes=1000)
    assert error.value.code == code
    assert code in DECODE_ERROR_CODES
    assert str(error.value)  # a readable message for the dead-letter record


def test_invalid_utf8_message_key_is_a_bad_key() -> None:
    with pytest.raises(EventError) as error:
        decode_event(b'{"features": {}}', b"\xff")
    assert error.value.code == "bad_key"


def test_numbers_too_large_for_a_float_are_errors_not_crashes() -> None:
    with pytest.raises(EventError) as feature_error:
        decode_event(b'{"features": {"x": 1' + b"0" * 400 + b"}}")
    assert feature_error.value.code == "non_finite"
    with pytest.raises(EventError) as ts_error:
        decode_event(b'{"features": {}, "ts": 1' + b"0" * 400 + b"}")
    assert ts_error.value.code == "bad_ts"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
def test_every_json_text_encoding_is_read(encoding: str) -> None:
    """What json.loads reads from bytes: UTF-8 with or without a BOM, UTF-16 and UTF-32."""
    value = '{"key": "é", "features": {"x": 1.5}, "label": 1}'.encode(encoding)
    assert decode_event(value) == Event(key="é", features={"x": 1.5}, label=1)
