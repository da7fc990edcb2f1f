"""The Kafka-facing commands `stream-lstm produce` and `stream-lstm broker`, for real."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from stream_lstm.cli.main import main
from stream_lstm.kafka.broker import free_port
from stream_lstm.messages.decoding import decode_event
from stream_lstm.offline.generator import temporal_stream, write_csv
from tests.integration.conftest import Broker
from tests.integration.service_harness import wait_for


def read_all(bootstrap: str, topic: str, expected: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    records: list = []

    def enough() -> bool:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
        return len(records) >= expected

    wait_for(enough, 30, f"{expected} records on {topic}")
    consumer.close()
    return records


def test_produce_replays_a_csv_in_file_order_keyed_by_entity(
    broker: Broker, topic_name: str, tmp_path: Path, capsys: pytest.CaptureFixture, kafka_client: str
) -> None:
    broker.create_topics([topic_name])
    events = list(temporal_stream(120, n_keys=4, seed=12))
    path = tmp_path / "events.csv"
    write_csv(events, path)
    with path.open("a") as handle:
        handle.write("k1,1.0,1,zzz,1,1\n")  # a bad row: reported, skipped
    argv = ["produce", str(path), "--bootstrap-servers", broker.bootstrap_servers, "--topic", topic_name]
    argv += ["--kafka-client", kafka_client]
    assert main([*argv, "--label", "label", "--key", "key", "--ts", "ts"]) == 0
    out, err = capsys.readouterr()
    assert "produced 120 events" in out and "events.csv:122: skipped" in err
    records = read_all(broker.bootstrap_servers, topic_name, 120)
    assert [decode_event(r.value, r.key) for r in records] == events
    assert all(r.key == e.key.encode() for r, e in zip(records, events, strict=True))


def test_produce_synthetic_with_limit(broker: Broker, topic_name: str) -> None:
    broker.create_topics([topic_name])
    argv = ["produce", "--synthetic", "--keys", "3", "--limit", "50", "--rate", "10000"]
    assert main([*argv, "--bootstrap-servers", broker.bootstrap_servers, "--topic", topic_name]) == 0
    records = read_all(broker.bootstrap_servers, topic_name, 50)
    assert len(records) == 50 and {r.key for r in records} <= {b"k0", b"k1", b"k2"}


def test_an_unknown_kafka_client_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["produce", "--synthetic", "--kafka-client", "librdkafka"])
    assert exit_info.value.code == 2
    assert "unknown Kafka client 'librdkafka'; choose from kafka-python, confluent" in capsys.readouterr().err


def test_produce_needs_a_source(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["produce", "--topic", "t"])
    assert exit_info.value.code == 2 and "give either FILE.csv or --synthetic" in capsys.readouterr().err


def test_broker_command_prints_ready_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "stream_lstm", "broker", "--port", str(port), "--topics", "a,b"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"broker ready on 127.0.0.1:{port}"
        consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}")
        assert {"a", "b"} <= consumer.topics()
        consumer.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert "broker stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
