"""The checkpointer's outcomes: each one, and that it changes nothing it does not report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stream_lstm.errors import CheckpointError
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.kafka.interface import DeliveryFailed, DeliveryPending, KafkaSettings, Message, Partition
from stream_lstm.messages.events import Event
from stream_lstm.service.checkpointer import Checkpointer, CheckpointOutcome
from stream_lstm.service.health import Health
from stream_lstm.service.ledger import Ledger
from stream_lstm.service.publisher import Publisher, RefusedOutputs
from stream_lstm.service.settings import ServiceSettings
from stream_lstm.state.directory_store import DirectoryStore
from stream_lstm.telemetry.metrics import Telemetry

P = ("in", 0)


class FlushingKafka:
    """Only what a checkpoint calls: ``flush`` (failing as told) and ``commit`` (recorded)."""

    def __init__(self, flush_error: Exception | None = None) -> None:
        self.flush_error = flush_error
        self.commits: list[dict[Partition, int]] = []

    def flush(self, timeout_s: float) -> None:
        if self.flush_error is not None:
            raise self.flush_error

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        self.commits.append(dict(offsets))


def setup(tmp_path: Path, kafka: FlushingKafka) -> tuple[Checkpointer, Publisher, Ledger, DirectoryStore]:
    settings = ServiceSettings(
        kafka=KafkaSettings("localhost:1", "in", "out", "dead", "group"),
        checkpoint_dir=tmp_path,
        instance_id="one",
        checkpoint_interval_s=3600.0,  # due by count or bytes only, in these tests
    )
    telemetry = Telemetry(CollectorRegistry())
    health = Health("localhost:1", telemetry)
    ledger = Ledger()
    ledger.assign([P])
    ledger.record(
        [Message("in", 0, 6, b"a", b"{}", None)],
        [(Message("in", 0, 6, b"a", b"{}", None), Event(key="a", features={}, label=1))],
        {},
    )
    store = DirectoryStore(tmp_path)
    checkpointer = Checkpointer(store, settings, telemetry, ledger, health, instance_saved=False)
    publisher = Publisher(kafka, settings, telemetry, health, RefusedOutputs())  # type: ignore[arg-type]
    publisher.unflushed_bytes = 100
    return checkpointer, publisher, ledger, store


def evaluator() -> PrequentialEvaluator:
    return PrequentialEvaluator(build_models(["no_change"]))


def test_done_writes_the_checkpoints_then_commits_their_offsets(tmp_path: Path) -> None:
    kafka = FlushingKafka()
    checkpointer, publisher, ledger, store = setup(tmp_path, kafka)
    assert checkpointer.checkpoint_and_commit(kafka, evaluator(), publisher) is CheckpointOutcome.DONE
    assert store.load_partition(P).offset == 7 and store.has_instance("one")
    assert kafka.commits == [{P: 7}]
    assert ledger.since_checkpoint == 0 and publisher.unflushed_bytes == 0
    # Nothing new since: nothing is written or committed again.
    assert checkpointer.checkpoint_and_commit(kafka, evaluator(), publisher) is CheckpointOutcome.DONE
    assert kafka.commits == [{P: 7}]


def test_an_idle_checkpoint_still_reads_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing new to write, the store is still read (a topic store then writes again a
    checkpoint of ours that a stale owner's followed), but not inside a rebalance callback."""
    kafka = FlushingKafka()
    checkpointer, publisher, _, store = setup(tmp_path, kafka)
    assert checkpointer.checkpoint_and_commit(kafka, evaluator(), publisher) is CheckpointOutcome.DONE
    reads: list[str] = []
    monkeypatch.setattr(store, "refresh", lambda: reads.append("refresh"))
    assert checkpointer.checkpoint_and_commit(kafka, evaluator(), publisher) is CheckpointOutcome.DONE
    assert reads == ["refresh"] and kafka.commits == [{P: 7}]
    assert (
        checkpointer.checkpoint_and_commit(kafka, evaluator(), publisher, in_callback=True)
        is CheckpointOutcome.DONE
    )
    assert reads == ["refresh"]


@pytest.mark.parametrize(
    ("flush_error", "outcome"),
    [
        (DeliveryPending("not acknowledged yet"), CheckpointOutcome.PENDING),
        (DeliveryFailed("the broker went away"), CheckpointOutcome.NEEDS_ROLLBACK),
    ],
)
def test_an_unfinished_flush_writes_and_commits_nothing(
    tmp_path: Path, flush_error: Exception, outcome: CheckpointOutcome
) -> None:
    kafka = FlushingKafka(flush_error)
    checkpointer, publisher, ledger, store = setup(tmp_path, kafka)
    assert checkpointer.checkpoint_and_commit(kafka, evaluator(), publisher) is outcome
    assert store.partitions() == [] and not store.has_instance("one") and kafka.commits == []
    assert ledger.since_checkpoint == 1 and publisher.unflushed_bytes == 100
    assert not checkpointer.health.broker_connected


def test_a_refused_checkpoint_write_is_failed_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = FlushingKafka()
    checkpointer, publisher, ledger, store = setup(tmp_path, kafka)

    def refuse(state: object) -> int:
        raise CheckpointError("disk full")

    monkeypatch.setattr(store, "save_instance", refuse)
    assert checkpointer.checkpoint_and_commit(kafka, evaluator(), publisher) is CheckpointOutcome.FAILED
    assert kafka.commits == [] and ledger.since_checkpoint == 1
    assert checkpointer.health.checkpoint_error == "disk full"
    monkeypatch.undo()
    assert checkpointer.checkpoint_and_commit(kafka, evaluator(), publisher) is CheckpointOutcome.DONE
    assert checkpointer.health.checkpoint_error is None and kafka.commits == [{P: 7}]


def test_a_checkpoint_is_due_by_count_or_bytes(tmp_path: Path) -> None:
    kafka = FlushingKafka()
    checkpointer, _, ledger, _ = setup(tmp_path, kafka)
    assert not checkpointer.due(0)  # one message, nothing waiting
    assert checkpointer.due(checkpointer.settings.max_unflushed_bytes)
    ledger.since_checkpoint = checkpointer.settings.checkpoint_every
    assert checkpointer.due(0)
    ledger.since_checkpoint = 0
    assert not checkpointer.due(checkpointer.settings.max_unflushed_bytes)
