"""Both clients tell the service of partitions lost (the member was evicted) apart from partitions
revoked: a revocation lets the service checkpoint them, a loss must not (another member may own
them already)."""

from __future__ import annotations

import pytest
from kafka import TopicPartition

from stream_lstm.kafka import connect
from stream_lstm.kafka.interface import KafkaSettings, Partition
from stream_lstm.kafka.kafka_python import _Rebalance


def test_kafka_python_reports_lost_partitions_as_lost_not_revoked() -> None:
    calls: list[tuple[str, list[Partition]]] = []
    listener = _Rebalance(
        lambda p: calls.append(("assigned", p)),
        lambda p: calls.append(("revoked", p)),
        lambda p: calls.append(("lost", p)),
    )
    listener.on_partitions_lost({TopicPartition("in", 1), TopicPartition("in", 0)})
    listener.on_partitions_revoked({TopicPartition("in", 2)})
    assert calls == [("lost", [("in", 0), ("in", 1)]), ("revoked", [("in", 2)])]


def test_without_a_lost_callback_a_loss_is_a_revocation() -> None:
    calls: list[tuple[str, list[Partition]]] = []
    listener = _Rebalance(lambda p: None, lambda p: calls.append(("revoked", p)), None)
    listener.on_partitions_lost({TopicPartition("in", 0)})
    assert calls == [("revoked", [("in", 0)])]


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_open_kafka_hands_the_lost_callback_to_either_client(
    client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: dict[str, object] = {}

    class Recording:
        def __init__(self, settings: KafkaSettings, **callbacks: object) -> None:
            received.update(callbacks)

    module = (
        "stream_lstm.kafka.confluent.ConfluentIO"
        if client == "confluent"
        else ("stream_lstm.kafka.kafka_python.KafkaPythonIO")
    )
    monkeypatch.setattr(module, Recording)

    def lost(partitions: list[Partition]) -> None:
        pass

    settings = KafkaSettings(
        bootstrap_servers="127.0.0.1:9",
        input_topic="in",
        output_topic="out",
        dead_letter_topic="dead",
        group_id="group",
        client=client,
    )
    connect.open_kafka(settings, on_assigned=print, on_revoked=print, on_lost=lost)
    assert received["on_lost"] is lost
