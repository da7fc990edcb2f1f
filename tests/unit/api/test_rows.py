"""River rows as events: what is accepted is what the service accepts, and it survives learning,
prediction and the checkpoint's data form; everything else is one clear ValueError."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_lstm import LSTMClassifier
from stream_lstm.api.rows import RowReader, label_of
from stream_lstm.errors import ConfigError, EventError
from stream_lstm.messages.decoding import decode_event
from stream_lstm.messages.events import Event, encode_event
from stream_lstm.state.codec import decode_tree, encode_tree

READER = RowReader(key_field="key", ts_field="ts")

names = st.one_of(st.text(max_size=8), st.text(min_size=250, max_size=300), st.integers(), st.none())
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e18, max_value=1e18),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.booleans(),
    st.text(max_size=8),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.binary(max_size=4),
    st.datetimes(),
)
any_rows = st.dictionaries(names, values, max_size=6).flatmap(
    lambda x: st.fixed_dictionaries(
        {}, optional={"key": st.one_of(st.text(max_size=6), st.integers(), values), "ts": values}
    ).map(lambda extra: {**x, **extra})
)
# Rows of plausible values (any text, any finite number in range), most of them accepted.
plain_values = st.one_of(
    st.floats(min_value=-1e18, max_value=1e18),
    st.booleans(),
    st.text(max_size=8),
    st.none(),
    st.integers(-5, 5),
)
plain_rows = st.dictionaries(st.text(min_size=1, max_size=8), plain_values, max_size=6)
rows = st.one_of(plain_rows, any_rows)


def accepted(x: dict[Any, Any]) -> Event | None:
    try:
        return READER.event(x)
    except EventError as error:
        assert str(error) and "\n" not in str(error)  # one line saying what is wrong
        return None


@settings(max_examples=300, deadline=None)
@given(rows)
def test_a_row_is_an_event_or_a_value_error_and_the_decoder_accepts_what_is_accepted(
    x: dict[Any, Any],
) -> None:
    event = accepted(x)
    if event is None:
        return
    assert all(isinstance(v, float) and math.isfinite(v) for v in event.features.values())
    # The same values as a message (categories aside, which this version's decoder reads apart).
    plain = Event(key=event.key, ts=event.ts, features=event.features, label=event.label)
    assert decode_event(encode_event(plain)) == plain


READER_FIELDS = {"key_field": "key", "ts_field": "ts"}
MODEL = LSTMClassifier(
    hidden_size=4, tbptt_steps=2, max_keys=16, max_features=8, device="cpu", **READER_FIELDS
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows, st.sampled_from([True, False, 0, 1, None, np.bool_(True), 1.0]))
def test_an_accepted_row_is_learned_predicted_and_checkpointed(x: dict[Any, Any], y: Any) -> None:
    if accepted(x) is None:
        with pytest.raises(ValueError):
            MODEL.learn_one(x, y)
        return
    MODEL.learn_one(x, y)
    proba = MODEL.predict_proba_one(x)
    assert set(proba) == {False, True} and math.isclose(sum(proba.values()), 1.0)
    assert all(0.0 <= p <= 1.0 for p in proba.values())
    _, tree = decode_tree(encode_tree(MODEL.to_state(), "lstm"), "bytes", ("lstm",))
    restored = LSTMClassifier.from_state(tree, "model", **READER_FIELDS)
    assert restored.predict_proba_one(x) == proba


@pytest.mark.parametrize(
    ("x", "message"),
    [
        ({"x": float("nan")}, "feature 'x' must be finite, got nan"),
        ({"x": -float("inf")}, "feature 'x' must be finite, got -inf"),
        ({"x": 2e18}, r"feature 'x' is out of range \(\|x\| > 1e\+18\): 2e\+18"),
        ({"x": 10**400}, "feature 'x' is out of range"),
        ({"x": [1.0]}, "feature 'x' must be a number, a bool, a string or None, got list"),
        ({"x": b"1"}, "got bytes"),
        ({3: 1.0}, "feature names must be strings, got 3 .int.: rename the field"),
        ({"": 1.0}, "feature name '' has 0 bytes"),
        ({"a" * 257: 1.0}, "has 257 bytes"),
        ({"\ud800": 1.0}, "not valid Unicode"),
        ({"city": "\udfff"}, "the value of category 'city' is not valid Unicode"),
        ({"key": 1.5}, "key field 'key' must be a string or an integer, got 1.5"),
        ({"key": "k" * 1025}, "key of 1,025 bytes exceeds the limit of 1,024"),
        ({"ts": "yesterday"}, "ts must be a number or an ISO-8601 time"),
        ({"ts": True}, "time field 'ts' must be a number, a time or a string, got True"),
        ({"ts": float("inf")}, "time field 'ts' must be finite"),
    ],
)
def test_refused_rows_say_what_is_wrong(x: dict[Any, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        READER.event(x)


def test_what_each_value_becomes() -> None:
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    event = READER.event(
        {
            "key": 42,
            "ts": moment.replace(tzinfo=None),
            "n": np.int64(3),
            "f": np.float32(0.5),
            "b": np.bool_(True),
            "c": "red",
            "gone": None,
        }
    )
    assert event == Event(
        key="42", ts=moment.timestamp(), features={"b": 1.0, "f": 0.5, "n": 3.0}, categories={"c": "red"}
    )
    assert READER.event({"ts": np.datetime64("1970-01-01T00:01:00")}).ts == 60.0
    assert READER.event({"ts": "1970-01-01T00:01:00Z", "key": None}) == Event(ts=60.0)
    assert READER.event({"ts": pd.Timestamp("1970-01-01 00:02:00")}).ts == 120.0


@pytest.mark.parametrize("y", ["yes", 2, 0.5, float("nan"), "1"])
def test_labels_are_binary(y: Any) -> None:
    with pytest.raises(ValueError, match="label must be True/False or 1/0"):
        label_of(y)


def test_zero_one_labels_read_as_false_true() -> None:
    model = LSTMClassifier(hidden_size=4, tbptt_steps=2, device="cpu")
    model.learn_one({"x": 1.0}, 1)
    proba = model.predict_proba_one({"x": 1.0})
    assert proba[1] == proba[True] and proba[0] == proba[False]
    assert model.predict_one({"x": 1.0}) in (0, 1)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"key_field": "a", "ts_field": "a"}, "must name different fields"),
        ({"key_field": ""}, "key_field must be a field name"),
        ({"ts_field": 3}, "ts_field must be a field name"),
    ],
)
def test_field_names_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LSTMClassifier(device="cpu", **fields)


def test_string_values_are_categories_the_model_learns_from() -> None:
    """A label that only a category tells: after learning, the category moves the prediction."""
    model = LSTMClassifier(hidden_size=8, tbptt_steps=2, learning_rate=0.05, device="cpu")
    rng = np.random.default_rng(0)
    colours = rng.choice(["red", "blue", "green"], size=600).tolist()
    X = pd.DataFrame({"colour": colours, "noise": rng.normal(size=len(colours))})
    y = pd.Series([colour == "red" for colour in colours])
    for start in range(0, len(X), 16):
        model.learn_many(X.iloc[start : start + 16], y.iloc[start : start + 16])
    red, blue = (model.predict_proba_one({"colour": c, "noise": 0.0})[True] for c in ("red", "blue"))
    assert red > blue + 0.3, (red, blue)
