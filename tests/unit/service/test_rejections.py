"""A record refused for good is not an outage: the service, on a scripted Kafka client
(stream_lstm.testing) that refuses chosen records at once (at produce) or later (at the flush
before a checkpoint).

The real-broker test (tests/integration/test_hostile_input.py) refuses a record over the
producer's limit with both clients; this client also makes the broker refuse one afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.kafka.interface import (
    KafkaSettings,
    Message,
)
from stream_lstm.messages.events import Event, encode_event
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.service.stream_service import ServiceSettings, StreamService
from stream_lstm.state.directory_store import DirectoryStore
from stream_lstm.telemetry.metrics import Telemetry
from stream_lstm.testing import ScriptedKafka

TOPIC, OUT, DEAD = "in", "out", "dead"
PARTITION = (TOPIC, 0)
EVENTS = 120


def refusing_kafka(
    messages: list[Message],
    *,
    at_once: Iterable[tuple[str, int]] = (),
    later: Iterable[tuple[str, int]] = (),
) -> ScriptedKafka:
    """One partition polled in batches of 16, on a scripted client that refuses the records of
    chosen inputs: (topic, input offset) pairs whose record ``produce`` refuses (``at_once``), or
    whose record a flush (exactly-once: the transaction) refuses every time it is sent (``later``)."""
    kafka = ScriptedKafka({PARTITION: messages})
    kafka.refuse_at_once = {(topic, (*PARTITION, offset)) for topic, offset in at_once}
    kafka.refuse_later = {(topic, (*PARTITION, offset)) for topic, offset in later}
    return kafka


def outputs(kafka: ScriptedKafka, topic: str) -> dict[int, list[dict]]:
    """The records delivered to ``topic``, by the offset of their input."""
    by_offset: dict[int, list[dict]] = {}
    for record in kafka.delivered_to(topic):
        by_offset.setdefault(record["source"]["offset"], []).append(record)
    return by_offset


def stream_with_a_malformed_message(malformed_at: int) -> list[Message]:
    values = [encode_event(event) for event in temporal_stream(EVENTS, n_keys=4, seed=5)]
    values.insert(malformed_at, b"not json")
    return [Message(TOPIC, 0, offset, b"k", value, None) for offset, value in enumerate(values)]


def run(
    tmp_path: Path,
    kafka: ScriptedKafka,
    *,
    exactly_once: bool = False,
    features_dropped_before: int = 0,
    **overrides: int,
) -> tuple[StreamService, Telemetry, DirectoryStore]:
    settings = ServiceSettings(
        kafka=KafkaSettings("scripted:9092", TOPIC, OUT, DEAD, "group", exactly_once=exactly_once),
        checkpoint_dir=tmp_path / "checkpoints",
        batch_size=16,
        # A flush (where the broker's refusals surface) every two batches.
        checkpoint_every=overrides.pop("checkpoint_every", 32),
        checkpoint_interval_s=10**9,
        instance_id="one",
        **overrides,
    )

    def new_evaluator() -> PrequentialEvaluator:
        models = build_models(["lstm", "logreg", "no_change"], lstm={"hidden_size": 4, "device": "cpu"})
        models["lstm"].features_dropped = features_dropped_before  # as a loaded checkpoint may hold
        return PrequentialEvaluator(models)

    telemetry = Telemetry()
    service = StreamService(
        settings, new_evaluator=new_evaluator, telemetry=telemetry, kafka_factory=kafka.connect
    )
    kafka.when_done = service.stop
    service.run()
    assert not kafka.timed_out, "the stream was not done within 60 s: something loops"
    return service, telemetry, DirectoryStore(settings.checkpoint_dir)


def counter(telemetry: Telemetry, name: str, **labels: str) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


def assert_every_offset_predicted_or_dead_lettered(kafka: ScriptedKafka, dead: set[int]) -> None:
    predicted = set(outputs(kafka, OUT))
    assert predicted | set(outputs(kafka, DEAD)) == set(range(len(kafka.messages[PARTITION])))
    assert predicted.isdisjoint(dead)


def assert_each_input_counted_once(telemetry: Telemetry, kafka: ScriptedKafka) -> None:
    outcomes = {
        o: counter(telemetry, "stream_lstm_events_total", outcome=o)
        for o in ("processed", "dead_lettered", "skipped")
    }
    if kafka.rewinds == 0:  # a rollback counts the events it processes again
        assert sum(outcomes.values()) == len(kafka.messages[PARTITION]), outcomes


def assert_learned_once(store: DirectoryStore, learned: int) -> None:
    saved = store.load_partition(PARTITION)
    instance = store.load_instance("one")
    assert saved is not None and instance is not None
    assert saved.offset == EVENTS + 1
    assert saved.events == learned  # every valid event learned once, refused prediction or not
    assert instance.evaluator.models["lstm"].events_learned == learned


@pytest.mark.parametrize(
    ("when", "exactly_once"), [("at_once", False), ("later", False), ("at_once", True), ("later", True)]
)
def test_a_refused_prediction_is_replaced_by_a_dead_letter_and_the_event_learned_once(
    tmp_path: Path, when: str, exactly_once: bool
) -> None:
    messages = stream_with_a_malformed_message(malformed_at=50)
    refused = {(OUT, 20), (OUT, 70)}
    kafka = refusing_kafka(messages, **{when: refused})
    service, telemetry, store = run(tmp_path, kafka, exactly_once=exactly_once)
    letters = outputs(kafka, DEAD)
    assert {offset: [r["reason"] for r in records] for offset, records in letters.items()} == {
        20: ["output_rejected"],
        50: ["not_json"],
        70: ["output_rejected"],
    }
    assert letters[20][0]["error"].startswith("record_too_large: scripted")
    assert_every_offset_predicted_or_dead_lettered(kafka, {20, 50, 70})
    assert_learned_once(store, learned=EVENTS)
    assert counter(telemetry, "stream_lstm_rejected_records_total", output="predictions") == 2
    assert counter(telemetry, "stream_lstm_dead_letters_total", reason="output_rejected") == 2
    # The broker was never the problem: it was never reported away.
    assert service.health()[1]["broker_connected"] and service.health()[1]["last_error"] is None
    assert counter(telemetry, "stream_lstm_broker_connected") == 1
    assert_each_input_counted_once(telemetry, kafka)
    if when == "at_once":
        assert kafka.rewinds == 0  # refused at produce: no rollback at all


@pytest.mark.parametrize(("when", "exactly_once"), [("at_once", False), ("later", False), ("later", True)])
def test_an_input_whose_dead_letter_is_refused_is_counted_and_skipped(
    tmp_path: Path, when: str, exactly_once: bool
) -> None:
    messages = stream_with_a_malformed_message(malformed_at=40)
    kafka = refusing_kafka(messages, **{when: {(DEAD, 40)}})
    _, telemetry, store = run(tmp_path, kafka, exactly_once=exactly_once)
    assert 40 not in outputs(kafka, DEAD) and 40 not in outputs(kafka, OUT)
    assert set(outputs(kafka, OUT)) == set(range(len(messages))) - {40}
    assert counter(telemetry, "stream_lstm_skipped_records_total", reason="dead_letter_rejected") == 1
    assert counter(telemetry, "stream_lstm_rejected_records_total", output="dead_letters") >= 1
    assert_each_input_counted_once(telemetry, kafka)
    assert_learned_once(store, learned=EVENTS)


@pytest.mark.parametrize(
    ("prediction", "dead_letter"), [("later", "at_once"), ("at_once", "later"), ("later", "later")]
)
def test_a_refused_prediction_whose_dead_letter_is_refused_too_is_skipped(
    tmp_path: Path, prediction: str, dead_letter: str
) -> None:
    messages = stream_with_a_malformed_message(malformed_at=100)
    refusals: dict[str, set] = {"at_once": set(), "later": set()}
    refusals[prediction].add((OUT, 30))
    refusals[dead_letter].add((DEAD, 30))
    kafka = refusing_kafka(messages, **refusals)
    _, telemetry, store = run(tmp_path, kafka)
    assert 30 not in outputs(kafka, OUT) and 30 not in outputs(kafka, DEAD)
    assert counter(telemetry, "stream_lstm_skipped_records_total", reason="dead_letter_rejected") == 1
    assert_learned_once(store, learned=EVENTS)


def test_prediction_records_of_accepted_events_are_small() -> None:
    """Bounded by construction: the largest key the decoder accepts, escaped, fits in a record."""
    from stream_lstm.evaluation.prequential import MODEL_NAMES
    from stream_lstm.messages.events import DEFAULT_LIMITS
    from stream_lstm.messages.records import prediction_value

    key = "\x01" * DEFAULT_LIMITS.max_key_bytes  # each escapes to six bytes
    value = prediction_value(
        Event(key=key, ts=-1e18, label=1), ("t" * 249, 2**31, 2**63), dict.fromkeys(MODEL_NAMES, 0.5), 2**63
    )
    assert len(value) < 7_000


def test_counts_a_loaded_learner_brings_along_are_not_counted_again(tmp_path: Path) -> None:
    """The guard counters count what this process sees: a resumed learner's history is not news."""
    kafka = refusing_kafka(stream_with_a_malformed_message(malformed_at=10))
    _, telemetry, _ = run(tmp_path, kafka, features_dropped_before=5)
    assert counter(telemetry, "stream_lstm_features_dropped_total", model="lstm") == 0


def test_large_dead_letters_are_flushed_before_they_pile_up(tmp_path: Path) -> None:
    """A flood of large bad messages: the service checkpoints (waiting for the broker) once the
    records produced since the last checkpoint reach max_unflushed_bytes, not only every
    checkpoint_every messages."""
    messages = [Message(TOPIC, 0, offset, b"k", b"x" * 60_000, None) for offset in range(48)]
    bounded = refusing_kafka(messages)
    run(tmp_path / "bounded", bounded, checkpoint_every=10**6, max_unflushed_bytes=200_000)
    unbounded = refusing_kafka(messages)
    run(tmp_path / "unbounded", unbounded, checkpoint_every=10**6)
    assert len(outputs(bounded, DEAD)) == len(outputs(unbounded, DEAD)) == 48
    assert unbounded.flushes == 1  # the final checkpoint only
    assert bounded.flushes >= 3  # after each batch of 16 (~1 MB of dead letters), then the final one
