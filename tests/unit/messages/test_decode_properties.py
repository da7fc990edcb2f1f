"""Decoding is complete: whatever the decoder accepts survives every later step; the rest is a
dead letter with a known reason. Property-based, over arbitrary bytes and over valid messages
mutated the way a hostile producer would (surrogates, control characters, huge and tiny numbers,
deep nesting, duplicated fields, wrong types)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_lstm.errors import EventError
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.messages.decoding import DECODE_ERROR_CODES, decode_event
from stream_lstm.messages.events import DEFAULT_LIMITS, Event, InputLimits, encode_event
from stream_lstm.messages.mapping import DEFAULT_MAPPING, FLAT, MessageMapping
from stream_lstm.messages.records import (
    DEAD_LETTER_REASONS,
    dead_letter_key,
    dead_letter_value,
    prediction_value,
)
from stream_lstm.state.directory_store import DirectoryStore, InstanceState, PartitionState

#: The producer's default record limit (kafka-python's max_request_size; librdkafka's is lower).
PRODUCER_LIMIT = 1_000_000

#: Any string, lone surrogates and control characters included.
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=40)
HOSTILE_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e18, -1e18, 1e18 * (1 + 1e-15), 1e39, 1e150, 1e308, -1e308, 5e-324, -0.0, 2.0**63]),
    st.integers(min_value=-(10**30), max_value=10**30),
)
WRONG_TYPES = st.one_of(st.none(), st.booleans(), ANY_TEXT, st.lists(st.integers(), max_size=3), st.just({}))


@pytest.fixture(scope="module")
def evaluator() -> PrequentialEvaluator:
    """One small evaluator learns every accepted event in turn, so hostile events follow each other."""
    models = build_models(
        ["lstm", "logreg", "logreg_lags", "no_change"],
        lstm={"hidden_size": 4, "tbptt_steps": 3, "device": "cpu"},
    )
    return PrequentialEvaluator(models)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> DirectoryStore:
    return DirectoryStore(tmp_path_factory.mktemp("checkpoints"))


def survives_every_step(
    event: Event,
    evaluator: PrequentialEvaluator,
    store: DirectoryStore,
    mapping: MessageMapping = DEFAULT_MAPPING,
) -> None:
    """Encode, learn, checkpoint and produce ``event``: what the service does with it. ``mapping``:
    the one it was decoded with (its encoding is the default shape, with the same categories)."""
    assert decode_event(encode_event(event), mapping=MessageMapping(categorical=mapping.categorical)) == event
    predictions = evaluator.process([event])
    probabilities = {name: float(values[0]) for name, values in predictions.items()}
    assert all(0.0 <= p <= 1.0 for p in probabilities.values()), probabilities
    key = event.key.encode()
    value = prediction_value(event, ("events", 0, 2**62), probabilities, 10**12)
    assert len(key) + len(value) < PRODUCER_LIMIT
    assert json.loads(value)["key"] == event.key
    partition = PartitionState(
        topic="events",
        partition=0,
        offset=1,
        events=1,
        keys=[event.key],
        key_state=evaluator.export_keys([event.key]),
        instance="test",
    )
    store.save_partition(partition)
    store.save_instance(InstanceState(evaluator=evaluator, instance="test"))
    loaded = store.load_partition(("events", 0))
    assert loaded is not None and loaded.keys == [event.key]
    assert store.load_instance("test") is not None


def refused_as_a_dead_letter(value: bytes | None, key: bytes | None, error: EventError) -> None:
    """A refused message has a known reason and a dead letter that fits in a record."""
    assert error.code in DECODE_ERROR_CODES and error.code in DEAD_LETTER_REASONS
    dead = dead_letter_value(
        value=value, reason=error.code, error=str(error), source=("events", 0, 1), key_bytes=len(key or b"")
    )
    dead_key = dead_letter_key(key, DEFAULT_LIMITS.max_key_bytes)
    assert len(dead) + len(dead_key or b"") < 400 * 1024
    assert json.loads(dead)["reason"] == error.code


def decode_or_dead_letter(
    value: bytes | None,
    key: bytes | None,
    evaluator: PrequentialEvaluator,
    store: DirectoryStore,
    mapping: MessageMapping = DEFAULT_MAPPING,
) -> Event | None:
    try:
        event = decode_event(value, key, mapping=mapping)
    except EventError as error:
        refused_as_a_dead_letter(value, key, error)
        return None
    survives_every_step(event, evaluator, store, mapping)
    return event


PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(value=st.binary(max_size=300), key=st.one_of(st.none(), st.binary(max_size=40)))
def test_arbitrary_bytes_decode_or_become_dead_letters(
    value: bytes, key: bytes | None, evaluator: PrequentialEvaluator, store: DirectoryStore
) -> None:
    decode_or_dead_letter(value, key, evaluator, store)


@st.composite
def hostile_messages(draw: st.DrawFn) -> bytes:
    """A valid message, then some of its parts replaced by hostile ones, as JSON text."""
    fields: dict[str, object] = {
        "key": draw(st.one_of(ANY_TEXT, WRONG_TYPES, st.just("k" * 2000))),
        "ts": draw(st.one_of(HOSTILE_NUMBERS, st.none(), ANY_TEXT, st.just("2024-01-01T00:00:00Z"))),
        "features": draw(
            st.one_of(
                st.dictionaries(ANY_TEXT, st.one_of(HOSTILE_NUMBERS, WRONG_TYPES), max_size=6),
                st.dictionaries(st.text(max_size=3), st.floats(-10, 10), min_size=257, max_size=260),
                WRONG_TYPES,
            )
        ),
        "label": draw(st.one_of(st.sampled_from([0, 1, None, 0.0, 1.0]), HOSTILE_NUMBERS, WRONG_TYPES)),
    }
    for name in draw(st.sets(st.sampled_from(list(fields)), max_size=2)):
        del fields[name]
    text = json.dumps(fields, ensure_ascii=draw(st.booleans()), allow_nan=True)
    if draw(st.booleans()) and text != "{}":  # the same field twice
        text = text[:-1] + ', "label": 0}'
    if draw(st.integers(0, 9)) == 0:  # nested far past the parser's limit, in a field or at the top
        depth = draw(st.sampled_from([100, 10_000, 100_000]))
        text = text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "utf-8-sig"]))
    return text.encode(encoding, "surrogatepass")


@PROPERTY
@given(value=hostile_messages(), key=st.one_of(st.none(), st.binary(max_size=20)))
def test_hostile_messages_decode_or_become_dead_letters(
    value: bytes, key: bytes | None, evaluator: PrequentialEvaluator, store: DirectoryStore
) -> None:
    decode_or_dead_letter(value, key, evaluator, store)


#: A user's mapping that uses every setting: flat messages, a nested key, text labels, a forced category.
USER_MAPPING = MessageMapping(
    key="device.id",
    ts="meta.time",
    label="outcome",
    features_field=FLAT,
    ignore=frozenset({"note"}),
    categorical=frozenset({"zip"}),
    positive_label="yes",
)


@st.composite
def hostile_flat_messages(draw: st.DrawFn) -> bytes:
    """A flat message for :data:`USER_MAPPING` with hostile names, values, keys and labels."""
    fields: dict[str, object] = draw(
        st.dictionaries(ANY_TEXT, st.one_of(HOSTILE_NUMBERS, WRONG_TYPES, ANY_TEXT), max_size=6)
    )
    fields["device"] = draw(
        st.one_of(
            st.fixed_dictionaries({"id": st.one_of(ANY_TEXT, HOSTILE_NUMBERS, WRONG_TYPES)}), WRONG_TYPES
        )
    )
    fields["meta"] = {"time": draw(st.one_of(HOSTILE_NUMBERS, ANY_TEXT, st.none()))}
    fields["zip"] = draw(st.one_of(HOSTILE_NUMBERS, WRONG_TYPES, ANY_TEXT))
    fields["outcome"] = draw(st.one_of(st.sampled_from(["yes", "no", None]), HOSTILE_NUMBERS, WRONG_TYPES))
    fields["note"] = draw(WRONG_TYPES)
    text = json.dumps(fields, ensure_ascii=draw(st.booleans()), allow_nan=True)
    return text.encode(draw(st.sampled_from(["utf-8", "utf-16"])), "surrogatepass")


@PROPERTY
@given(value=hostile_flat_messages(), key=st.one_of(st.none(), st.binary(max_size=20)))
def test_hostile_messages_in_a_users_shape_decode_or_become_dead_letters(
    value: bytes, key: bytes | None, evaluator: PrequentialEvaluator, store: DirectoryStore
) -> None:
    decode_or_dead_letter(value, key, evaluator, store, USER_MAPPING)


@pytest.mark.parametrize(
    ("value", "key", "code"),
    [
        (b'{"key": "\\ud800", "features": {}}', None, "bad_key"),
        (b'{"features": {"\\udfff": 1}}', None, "bad_feature_name"),
        (b'{"features": {"": 1}}', None, "bad_feature_name"),
        (b'{"features": {"x": 1e39}}', None, "out_of_range"),
        (b'{"features": {"x": 1e150}}', None, "out_of_range"),
        (b'{"features": {}, "ts": -1e308}', None, "bad_ts"),
        (b'{"features": {}, "label": 7, "label": 0}', None, "duplicate_field"),
        (b'{"features": {"x": 1, "x": 2}}', None, "duplicate_field"),
        (b'{"features": {}, "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "too_deep"),
        (b'{"features": {}, "key": "' + b"k" * 1025 + b'"}', None, "key_too_long"),
        (b'{"features": {}}', b"k" * 1025, "key_too_long"),
        (b'{"features": {"' + b"n" * 257 + b'": 1}}', None, "bad_feature_name"),
        (json.dumps({"features": {f"f{i}": 1 for i in range(257)}}).encode(), None, "too_many_features"),
    ],
)
def test_each_case_of_the_issue_is_refused_with_its_own_reason(
    value: bytes, key: bytes | None, code: str
) -> None:
    with pytest.raises(EventError) as error:
        decode_event(value, key)
    assert error.value.code == code
    assert len(str(error.value)) < 300  # the error text never repeats a hostile input whole


def test_limits_are_settings() -> None:
    limits = InputLimits(max_key_bytes=4, max_name_bytes=2, max_features=1, max_abs_value=10.0)
    assert decode_event(b'{"key": "abcd", "features": {"ab": 10}}', limits=limits).features == {"ab": 10.0}
    for value in (
        b'{"key": "abcde", "features": {}}',
        b'{"features": {"abc": 1}}',
        b'{"features": {"a": 1, "b": 2}}',
        b'{"features": {"a": 10.5}}',
        b'{"features": {}, "ts": 11}',
    ):
        with pytest.raises(EventError):
            decode_event(value, limits=limits)


def test_largest_accepted_values_keep_the_learner_finite(
    evaluator: PrequentialEvaluator, store: DirectoryStore
) -> None:
    """The limits themselves, in the order that hurt most: a spike after a constant column, and
    a time gap across the whole range."""
    top = DEFAULT_LIMITS.max_abs_value
    events = [Event(key="edge", ts=-top, features={"x": 1.0}, label=1) for _ in range(5)]
    events += [
        Event(key="edge", ts=top, features={"x": top}, label=0),
        Event(key="edge", ts=-top, features={"x": -top, "y": 5e-324}, label=1),
    ]
    for event in events:
        survives_every_step(event, evaluator, store)
    assert all(math.isfinite(float(p)) for p in evaluator.process(events)["lstm"])


def test_accepted_events_survive_a_checkpoint_round_trip(tmp_path: Path) -> None:
    """Keys and names at their limits, with every kind of character, come back from a checkpoint."""
    key = "\x00\x1f\u2028\U0001f600" + "k" * (DEFAULT_LIMITS.max_key_bytes - 9)
    name = "\x7f\ufeff" + "n" * (DEFAULT_LIMITS.max_name_bytes - 4)
    event = decode_event(json.dumps({"key": key, "features": {name: -1e18}, "label": 1}).encode())
    assert event.key == key and len(key.encode()) == DEFAULT_LIMITS.max_key_bytes
    models = build_models(["lstm", "logreg", "no_change"], lstm={"hidden_size": 4, "device": "cpu"})
    survives_every_step(event, PrequentialEvaluator(models), DirectoryStore(tmp_path))


@pytest.mark.parametrize(
    ("value", "encoding"),
    [(b"\x01" * 100_000, "base64"), ("é😀".encode() * 20_000, "utf-8"), (b"\xff" * 100_000, "base64")],
)
def test_a_dead_letter_never_grows_past_base64_of_its_copy(value: bytes, encoding: str) -> None:
    """Text that JSON escaping would blow up (six bytes per control character) is copied as base64."""
    letter = dead_letter_value(
        value=value, reason="not_json", error="x" * 10_000, source=("t", 0, 0), key_bytes=0
    )
    record = json.loads(letter)
    assert record["value_encoding"] == encoding and record["truncated"] and record["error_truncated"]
    assert len(letter) < 90 * 1024
