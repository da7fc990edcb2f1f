"""``--start-from`` on a real broker, with both clients: where a new group starts reading its topic."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_lstm.offline.generator import temporal_stream
from tests.integration.conftest import Broker, checkpoint_of
from tests.integration.service_harness import TopicReader, produce, source_offsets, wait_for

pytestmark = pytest.mark.slow

HISTORY = 200


def test_latest_neither_predicts_nor_learns_the_history_but_every_later_event(
    broker: Broker, topics: dict[str, str], service_factory, tmp_path: Path
) -> None:
    events = list(temporal_stream(HISTORY + 400, n_keys=4, seed=5))
    produce(broker.bootstrap_servers, topics["input"], events[:HISTORY])
    service = service_factory("--start-from", "latest").start()
    service.wait_ready()
    reader = TopicReader(broker.bootstrap_servers, topics["output"])
    later = iter(events[HISTORY:])
    written = HISTORY

    def first_prediction() -> list:
        # Written one at a time until one is predicted: "the end" is wherever the partition ended
        # when the service was given it, which this test cannot see from outside.
        nonlocal written
        service.assert_alive()
        produce(broker.bootstrap_servers, topics["input"], [next(later)])
        written += 1
        return reader.read()

    wait_for(first_prediction, 90, "a prediction of an event written after the start", interval=0.05)
    written += produce(broker.bootstrap_servers, topics["input"], list(later)[:100])
    records = reader.read_until(
        lambda r: max(source_offsets(r)) == written - 1, 60, f"predictions up to offset {written - 1}"
    )
    offsets = sorted(source_offsets(records))
    assert offsets[0] >= HISTORY  # nothing of the history
    assert offsets == list(range(offsets[0], written))  # everything from where it started
    service.terminate()
    reader.close()
    saved = checkpoint_of(tmp_path)
    assert list(saved.processed.values()) == [len(offsets)]  # learned: those events, and only those
    assert list(saved.offsets.values()) == [written]


def test_earliest_the_default_predicts_and_learns_the_whole_history(
    broker: Broker, topics: dict[str, str], service_factory, tmp_path: Path
) -> None:
    events = list(temporal_stream(HISTORY + 50, n_keys=4, seed=6))
    produce(broker.bootstrap_servers, topics["input"], events[:HISTORY])
    service = service_factory("--start-from", "earliest").start()
    service.wait_ready()
    produce(broker.bootstrap_servers, topics["input"], events[HISTORY:])
    reader = TopicReader(broker.bootstrap_servers, topics["output"])
    records = reader.read_until(lambda r: len(r) >= len(events), 90, f"{len(events)} predictions")
    assert sorted(source_offsets(records)) == list(range(len(events)))
    service.terminate()
    reader.close()
    assert list(checkpoint_of(tmp_path).processed.values()) == [len(events)]
