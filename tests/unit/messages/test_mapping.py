"""Message mapping: each setting reads users' own message shapes, the same way for JSON and CSV."""

from __future__ import annotations

import json

import pytest

from stream_lstm.errors import ConfigError, EventError
from stream_lstm.messages.decoding import decode_event
from stream_lstm.messages.events import Event
from stream_lstm.messages.mapping import MessageMapping
from stream_lstm.offline.csv_source import CsvEventSource


def decode(message: dict, mapping: MessageMapping, key: bytes | None = None) -> Event:
    return decode_event(json.dumps(message).encode(), key, mapping=mapping)


def test_the_default_shape_reads_numbers_booleans_text_and_null() -> None:
    event = decode(
        {"key": "a", "ts": 5, "features": {"x": 1, "on": False, "city": "Oslo", "gone": None, "s": "2.5"}},
        MessageMapping(),
    )
    assert event == Event(
        key="a", ts=5.0, features={"x": 1.0, "on": 0.0, "s": 2.5}, label=None, categories={"city": "Oslo"}
    )


def test_key_ts_and_label_are_dot_paths_into_nested_objects() -> None:
    mapping = MessageMapping(key="device.id", ts="meta.at", label="result.ok")
    message = {
        "device": {"id": 17},
        "meta": {"at": "1970-01-01T00:00:09Z"},
        "result": {"ok": True},
        "features": {},
    }
    assert decode(message, mapping) == Event(key="17", ts=9.0, features={}, label=1)
    # A path that leads nowhere is a missing field: the message key, no time, no label.
    assert decode({"device": 3, "features": {}}, mapping, key=b"m-key") == Event(key="m-key")


def test_features_field_is_a_path_or_the_message_itself() -> None:
    nested = MessageMapping(features_field="data.values")
    assert decode({"data": {"values": {"x": 1}}}, nested).features == {"x": 1.0}
    with pytest.raises(EventError, match=r"set features_field, --features-field, to '\.'") as error:
        decode({"x": 1}, nested)
    assert error.value.code == "missing_features"
    flat = MessageMapping(features_field=".", key="device.id", label="y")
    event = decode({"device": {"id": "d"}, "ts": 3, "y": 0, "load": 0.5, "city": "Rome"}, flat)
    # The key's, time's and label's top-level fields are no features.
    assert event == Event(key="d", ts=3.0, features={"load": 0.5}, label=0, categories={"city": "Rome"})


def test_features_and_ignore_choose_the_fields_read() -> None:
    message = {"features": {"a": 1, "b": 2, "junk": [1, 2], "note": {"x": 1}}}
    assert decode(message, MessageMapping(features=frozenset({"a", "b"}))).features == {"a": 1.0, "b": 2.0}
    assert decode(message, MessageMapping(ignore=frozenset({"junk", "note"}))).features == {
        "a": 1.0,
        "b": 2.0,
    }
    with pytest.raises(EventError, match="leave it out with ignore") as error:
        decode(message, MessageMapping())
    assert error.value.code == "bad_feature"


def test_categorical_fields_are_categories_even_when_numbers() -> None:
    mapping = MessageMapping(categorical=frozenset({"zip", "floor", "vip"}))
    event = decode({"features": {"zip": 75001, "floor": 2.0, "vip": True, "x": 3}}, mapping)
    assert event.categories == {"zip": "75001", "floor": "2", "vip": "true"}
    assert event.features == {"x": 3.0}


@pytest.mark.parametrize(
    ("positive", "values", "labels"),
    [
        ("yes", ["yes", "no", "maybe", " yes ", None, ""], [1, 0, 0, 1, None, None]),
        ("3", [3, 3.0, "3", 0, "1"], [1, 1, 1, 0, 0]),
        ("true", [True, False], [1, 0]),
    ],
)
def test_positive_label_makes_any_labels_binary(positive: str, values: list, labels: list) -> None:
    mapping = MessageMapping(positive_label=positive)
    assert [decode({"features": {}, "label": value}, mapping).label for value in values] == labels


def test_default_labels_are_0_1_or_true_false_and_others_say_what_to_do() -> None:
    values = [0, 1, 0.0, 1.0, True, False, "1", "0", "true", "False", None]
    labels = [0, 1, 0, 1, 1, 0, 1, 0, 1, 0, None]
    assert [decode({"features": {}, "label": value}, MessageMapping()).label for value in values] == labels
    with pytest.raises(EventError, match="--positive-label") as error:
        decode({"features": {}, "label": "yes"}, MessageMapping())
    assert error.value.code == "bad_label"


@pytest.mark.parametrize(
    "arguments",
    [{"key": "device..id"}, {"ts": "."}, {"features_field": "a."}, {"positive_label": " "}, {"ignore": [""]}],
)
def test_a_mapping_that_cannot_mean_anything_is_refused(arguments: dict) -> None:
    with pytest.raises(ConfigError):
        MessageMapping(**arguments)


def test_csv_rows_read_the_same_way(tmp_path) -> None:
    """The same options on a CSV file: features, ignore, categorical, positive label, booleans."""
    path = tmp_path / "rows.csv"
    path.write_text(
        "id,zip,city,on,x,note,outcome\nd1,75001,Paris,TRUE,1.5,free text,yes\nd2,,Lyon,false,,,no\n"
    )
    source = CsvEventSource(
        path,
        label="outcome",
        key="id",
        ignore=["note"],
        categorical=["zip", "city"],
        positive_label="yes",
    )
    assert list(source) == [
        Event(
            key="d1", features={"on": 1.0, "x": 1.5}, label=1, categories={"zip": "75001", "city": "Paris"}
        ),
        Event(key="d2", features={"on": 0.0}, label=0, categories={"city": "Lyon"}),
    ]
    only = CsvEventSource(path, label="outcome", key="id", features=["x"], positive_label="yes")
    assert [dict(event.features) for event in only] == [{"x": 1.5}, {}]
    assert only.skipped == 0
