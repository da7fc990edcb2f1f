"""`stream-lstm run` against the real embedded broker: delivery, dead letters, crashes, stops."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_lstm.config.declared import DEFAULT_MODELS
from stream_lstm.evaluation.prequential import build_evaluator
from stream_lstm.kafka.broker import EmbeddedBroker, free_port
from stream_lstm.messages.events import Event, encode_event
from stream_lstm.offline.generator import temporal_stream
from tests.integration.conftest import Broker, checkpoint_of
from tests.integration.service_harness import (
    ServiceProcess,
    TopicReader,
    produce,
    produce_raw,
    source_offsets,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("learner_process", ["true", "false"])
def test_every_event_gets_one_prediction_in_key_order_equal_to_offline_evaluation(
    broker: Broker, topics: dict[str, str], service_factory, tmp_path: Path, learner_process: str
) -> None:
    # All events are there before the service starts, so its polls are full batches: with the
    # LSTM in a process of its own, each batch is left in flight while the one before is published.
    events = list(temporal_stream(600, n_keys=5, seed=31))
    produce(broker.bootstrap_servers, topics["input"], events)
    service = service_factory("--batch-size", "32", "--learner-process", learner_process).start()
    reader = TopicReader(broker.bootstrap_servers, topics["output"])
    records = reader.read_until(lambda r: len(r) >= 600, 90, "600 predictions")
    assert sorted(source_offsets(records)) == list(range(600))  # exactly N distinct offsets
    by_key = collections.defaultdict(list)
    for record in records:
        by_key[record["key"]].append(record["source"]["offset"])
    assert all(offsets == sorted(offsets) for offsets in by_key.values())  # per-key order kept
    for record, event in zip(sorted(records, key=lambda r: r["source"]["offset"]), events, strict=True):
        assert (record["key"], record["label"], record["ts"]) == (event.key, event.label, event.ts)
        assert list(record["predictions"]) == list(DEFAULT_MODELS)

    # The same events through the offline evaluator, cut at the service's batch boundaries
    # (every record of a batch carries the model step its weights came from).
    ordered = sorted(records, key=lambda r: r["source"]["offset"])
    boundaries = [i for i in range(1, 600) if ordered[i]["model_step"] != ordered[i - 1]["model_step"]]
    offline = build_evaluator(DEFAULT_MODELS, lstm={"hidden_size": 16, "device": "cpu"})
    expected: dict[str, list[float]] = collections.defaultdict(list)
    for start, end in zip([0, *boundaries], [*boundaries, 600], strict=True):
        for name, p in offline.process(events[start:end]).items():
            expected[name].extend(p.tolist())
    for name in DEFAULT_MODELS:  # the mixture too: it mixes exactly what the others predicted
        got = [record["predictions"][name] for record in ordered]
        np.testing.assert_allclose(got, expected[name], rtol=0, atol=1e-6, err_msg=name)
    assert len(boundaries) >= 600 // 32 - 1
    assert service.terminate() < 10
    reader.close()


def test_poison_messages_go_to_the_dead_letter_topic_and_the_stream_goes_on(
    broker: Broker, topics: dict[str, str], service_factory
) -> None:
    good = [encode_event(e) for e in temporal_stream(40, n_keys=3, seed=2)]
    poison = [
        (b"not json at all", "not_json"),
        (b'{"features": {"x": NaN}}', "non_finite"),
        (b'{"features": {"x": 1}, "label": 5}', "bad_label"),
        (b'{"label": 1}', "missing_features"),
        (b'{"features": {"x": 1}, "pad": "' + b"x" * 3000 + b'"}', "too_large"),
        (b"\xff\xfe\x00binary", "not_json"),
    ]
    messages: list[tuple[bytes, bytes]] = []
    expected_reasons: dict[int, str] = {}
    for i, value in enumerate(good):
        messages.append((b"k", value))
        if i % 6 == 2 and len(expected_reasons) < len(poison):
            bad, reason = poison[len(expected_reasons)]
            expected_reasons[len(messages)] = reason
            messages.append((b"k", bad))
    assert len(expected_reasons) == len(poison)
    produce_raw(broker.bootstrap_servers, topics["input"], messages)
    service = service_factory("--max-message-bytes", "2000", "--batch-size", "8").start()
    out = TopicReader(broker.bootstrap_servers, topics["output"])
    dead = TopicReader(broker.bootstrap_servers, topics["dead"])
    out.read_until(lambda r: len(r) >= len(good), 90, "a prediction for every good event")
    letters = dead.read_until(lambda r: len(r) >= len(poison), 30, "every dead letter")
    assert sorted(source_offsets(out.records)) == sorted(set(range(len(messages))) - set(expected_reasons))
    assert {letter["source"]["offset"]: letter["reason"] for letter in letters} == expected_reasons
    for letter in letters:
        assert letter["error"] and letter["source"]["topic"] == topics["input"]
        assert letter["source"]["partition"] == 0
    encodings = {letter["source"]["offset"]: letter["value_encoding"] for letter in letters}
    binary_offset = max(expected_reasons)  # the last poison message is the binary one
    assert encodings.pop(binary_offset) == "base64" and set(encodings.values()) == {"utf-8"}
    wait_for(
        lambda: 'stream_lstm_events_total{outcome="dead_lettered"} 6.0' in service.metrics(),
        20,
        "dead letters counted in /metrics",
    )
    assert service.terminate() < 10


def test_sigkill_mid_stream_then_restart_learns_every_event_exactly_once(
    broker: Broker, topics: dict[str, str], service_factory, tmp_path: Path
) -> None:
    events = list(temporal_stream(6000, n_keys=20, seed=8))
    produce(broker.bootstrap_servers, topics["input"], events)
    first = service_factory("--batch-size", "16", "--checkpoint-every", "500").start()
    reader = TopicReader(broker.bootstrap_servers, topics["output"])
    reader.read_until(lambda r: len(r) >= 1200, 90, "the first predictions")
    first.kill()  # SIGKILL: no chance to checkpoint
    partial = checkpoint_of(tmp_path)
    assert 0 < partial.offsets[(topics["input"], 0)] < 6000  # it did die mid-stream

    second = service_factory("--batch-size", "16", "--checkpoint-every", "500").start()
    reader.read_until(lambda r: set(source_offsets(r)) >= set(range(6000)), 120, "all predictions")
    assert second.terminate() < 10
    final = checkpoint_of(tmp_path)
    partition = (topics["input"], 0)
    assert final.offsets[partition] == 6000
    assert final.processed[partition] == 6000  # every event learned: none twice, none missed
    # The weights are saved just after the partitions: a kill between the two loses the weights'
    # last interval (never learning an event twice).
    assert 6000 - 1000 <= final.evaluator.events <= 6000
    assert final.evaluator.models["lstm"].events_learned == final.evaluator.events
    # At-least-once: only the events after the checkpoint the restart resumed from are predicted
    # again, and only once more; those before it have exactly one prediction.
    predicted = collections.Counter(source_offsets(reader.records))
    resumed_at = partial.offsets[partition]
    assert all(predicted[offset] == 1 for offset in range(resumed_at))
    assert all(1 <= predicted[offset] <= 2 for offset in range(resumed_at, 6000))


def test_graceful_stop_within_10_s_and_restart_resumes_without_replaying(
    broker: Broker, topics: dict[str, str], service_factory, tmp_path: Path
) -> None:
    events = list(temporal_stream(500, n_keys=4, seed=3))
    produce(broker.bootstrap_servers, topics["input"], events)
    first = service_factory("--checkpoint-interval", "60", "--checkpoint-every", "100000").start()
    reader = TopicReader(broker.bootstrap_servers, topics["output"])
    reader.read_until(lambda r: len(r) >= 500, 90, "500 predictions")
    assert first.terminate() < 10
    assert first.process is not None and first.process.returncode == 0
    assert checkpoint_of(tmp_path).offsets[(topics["input"], 0)] == 500  # the final checkpoint

    second = service_factory().start()
    second.wait_ready()
    produce(broker.bootstrap_servers, topics["input"], [Event(key="new", features={"a": 1.0}, label=1)])
    records = reader.read_until(lambda r: 500 in source_offsets(r), 60, "the prediction of the new event")
    assert sorted(source_offsets(records)) == list(range(501))  # nothing before it came again
    assert second.terminate() < 10
    assert checkpoint_of(tmp_path).evaluator.events == 501


def test_an_unreadable_partition_checkpoint_stops_the_service_and_is_left_as_it_was(
    broker: Broker, topics: dict[str, str], service_factory, tmp_path: Path
) -> None:
    """Going on would overwrite the partition's checkpoint with state that lost its keys."""
    produce(broker.bootstrap_servers, topics["input"], list(temporal_stream(300, n_keys=5, seed=4)))
    first = service_factory().start()
    reader = TopicReader(broker.bootstrap_servers, topics["output"])
    reader.read_until(lambda r: len(r) >= 300, 90, "300 predictions")
    assert first.terminate() < 10
    checkpoint = tmp_path / "checkpoints" / "partitions" / topics["input"] / "0.ckpt"
    damaged = checkpoint.read_bytes()[:-200]  # a torn copy, say, restored from a bad backup
    checkpoint.write_bytes(damaged)

    second = service_factory().start()
    assert second.process is not None
    wait_for(lambda: second.process.poll() is not None, 60, second.quoting_log("the service to stop"))
    assert second.process.returncode == 2
    assert "cannot continue partition" in second.log() and "damaged" in second.log()
    assert checkpoint.read_bytes() == damaged  # not overwritten
    assert len(reader.read()) == 300  # and nothing was predicted from a fresh state


def test_service_survives_the_broker_going_away_and_coming_back(
    tmp_path: Path, group_id: str, kafka_client: str
) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log")
    broker.start()
    names = {"input": "events", "output": "predictions", "dead": "dead-letters"}
    broker.create_topics(list(names.values()))
    service = ServiceProcess(
        broker.bootstrap_servers,
        names,
        group_id,
        tmp_path,
        "--checkpoint-interval",
        "1",
        "--kafka-client",
        kafka_client,
    )
    try:
        service.start()
        produce(broker.bootstrap_servers, names["input"], temporal_stream(100, n_keys=2, seed=1))
        TopicReader(broker.bootstrap_servers, names["output"]).read_until(
            lambda r: len(r) >= 100, 90, "predictions before the outage"
        )
        service.wait_ready()
        broker.stop()
        wait_for(
            lambda: (h := service.health()) is not None and h[0] == 503, 60, "/healthz to report not ready"
        )
        assert service.metric("stream_lstm_broker_connected") == 0
        service.assert_alive()

        # The embedded broker keeps data in memory only, so give the restarted one back the first
        # 100 events (as a Kafka broker with disk would have them), then 50 new ones.
        broker.start()
        broker.create_topics(list(names.values()))
        service.wait_ready(timeout=90)
        assert "Kafka unavailable" in service.log() and "connected to Kafka" in service.log()
        produce(broker.bootstrap_servers, names["input"], temporal_stream(100, n_keys=2, seed=1))
        produce(broker.bootstrap_servers, names["input"], temporal_stream(50, n_keys=2, seed=2))
        TopicReader(broker.bootstrap_servers, names["output"]).read_until(
            lambda r: set(source_offsets(r)) >= set(range(100, 150)),
            90,
            "predictions after the broker came back",
        )
        service.assert_alive()
        assert service.terminate() < 10
    finally:
        service.cleanup()
        broker.stop()


def test_exactly_once_predictions_survive_a_sigkill(
    broker: Broker, topics: dict[str, str], service_factory, tmp_path: Path
) -> None:
    events = list(temporal_stream(2000, n_keys=10, seed=5))
    # A first part only: the service checkpoints at 608 (300-event checkpoints in batches of 16)
    # and then holds the predictions of 608-749 in an open interval, which the kill throws away.
    produce(broker.bootstrap_servers, topics["input"], events[:750])
    flags = (
        "--exactly-once",
        "--batch-size",
        "16",
        "--checkpoint-every",
        "300",
        "--checkpoint-interval",
        "10",  # the kill comes well within it; the last predictions are committed by it
    )
    first = service_factory(*flags).start()
    reader = TopicReader(broker.bootstrap_servers, topics["output"], read_committed=True)
    # Kill on the checkpoint, not when predictions appear: the embedded broker shows records of an
    # open transaction to read_committed readers (Apache Kafka does not), so a kill timed by their
    # arrival could land inside the commit, where that broker leaks aborted records.
    partition = (topics["input"], 0)
    wait_for(lambda: checkpoint_of(tmp_path).offsets.get(partition, 0) >= 600, 90, "a checkpoint past 600")
    first.kill()
    assert checkpoint_of(tmp_path).offsets[partition] < 750  # it died with work in hand
    produce(broker.bootstrap_servers, topics["input"], events[750:])
    second = service_factory(*flags).start()
    records = reader.read_until(lambda r: len(r) >= 2000, 120, "all committed predictions")
    assert second.terminate() < 10
    records = reader.read()
    offsets = source_offsets(records)
    assert sorted(offsets) == list(range(2000)), collections.Counter(
        o for o in offsets if offsets.count(o) > 1
    )
    final = checkpoint_of(tmp_path)
    assert final.offsets[partition] == 2000 and final.processed[partition] == 2000
    assert 2000 - 600 <= final.evaluator.events <= 2000  # weights never learn an event twice


def test_a_service_waiting_for_its_checkpoint_topic_answers_healthz_then_runs(
    tmp_path: Path, group_id: str
) -> None:
    """A service started before its broker waits for it (its checkpoint topic too): meanwhile
    /healthz answers 503 naming what it waits for, rather than nothing (a probe would take it for
    dead), and the service runs once the broker is up."""
    late = EmbeddedBroker(port=free_port(), log_path=tmp_path / "late-broker.log")
    topics = {"input": "late-in", "output": "late-out", "dead": "late-dead"}
    service = ServiceProcess(
        late.bootstrap_servers, topics, group_id, tmp_path, "--checkpoint-topic", "late-checkpoints"
    ).start()
    try:

        def waiting() -> dict[str, Any] | None:
            service.assert_alive()
            answer = service.health()
            return answer[1] if answer is not None and "kafka_connection" in answer[1] else None

        body = wait_for(waiting, 60, "/healthz naming the broker the service waits for")
        assert body["status"] == "not_ready" and "connecting to Kafka" in body["starting"]
        assert body["kafka_connection"]["code"] == "unreachable", body
        assert body["kafka_connection"]["server"] == late.bootstrap_servers
        late.start(timeout=30)
        late.create_topics(list(topics.values()))
        produce(late.bootstrap_servers, topics["input"], temporal_stream(50, n_keys=3, seed=2))
        service.wait_ready(120)
        reader = TopicReader(late.bootstrap_servers, topics["output"])
        reader.read_until(lambda r: len(r) >= 50, 90, "50 predictions")
        assert service.terminate() < 10
    finally:
        service.cleanup()
        late.stop()
