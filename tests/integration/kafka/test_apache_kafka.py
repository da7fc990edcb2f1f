"""The Apache Kafka test broker itself: its secured listeners, and what it keeps across restarts."""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from stream_lstm.testing.apache_kafka import ApacheKafkaBroker
from stream_lstm.testing.certificates import make_certificates


def sasl_options(kafka: ApacheKafkaBroker, mechanism: str, password: str | None = None) -> dict[str, Any]:
    user = kafka.users[mechanism]
    return {
        "bootstrap_servers": kafka.sasl_ssl_bootstrap_servers,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user.username,
        "sasl_plain_password": password if password is not None else user.password,
        "ssl_cafile": str(kafka.certificates.ca),
    }


def mtls_options(kafka: ApacheKafkaBroker, certificate: Path | None, key: Path | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.ssl_bootstrap_servers,
        "security_protocol": "SSL",
        "ssl_cafile": str(kafka.certificates.ca),
    }
    if certificate is not None:
        options.update(ssl_certfile=str(certificate), ssl_keyfile=str(key))
    return options


def refused(options: dict[str, Any], topic: str) -> None:
    """A producer with ``options`` cannot get a record acknowledged within a few seconds."""
    with pytest.raises((KafkaError, ssl.SSLError)):
        producer = KafkaProducer(**options, bootstrap_timeout_ms=4000, max_block_ms=4000)
        try:
            producer.send(topic, key=b"k", value=b"x").get(timeout=4)
        finally:
            producer.close(timeout=1)


def round_trip(options: dict[str, Any], topic: str, value: bytes) -> list[bytes]:
    """Produce ``value`` through a client with ``options``, then read the topic back through one."""
    producer = KafkaProducer(**options, acks="all", request_timeout_ms=10_000, max_block_ms=10_000)
    try:
        producer.send(topic, key=b"k", value=value).get(timeout=10)
    finally:
        producer.close(timeout=5)
    consumer = KafkaConsumer(**options, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    try:
        consumer.assign([partition])
        consumer.seek_to_beginning()
        end = consumer.end_offsets([partition])[partition]
        values: list[bytes] = []
        deadline = time.monotonic() + 20
        while consumer.position(partition) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                values.extend(record.value for record in records)
        return values
    finally:
        consumer.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_sasl_ssl_users_round_trip_and_a_wrong_password_is_refused(
    apache_kafka: ApacheKafkaBroker, topic_name: str, mechanism: str
) -> None:
    apache_kafka.create_topics([topic_name])
    assert round_trip(sasl_options(apache_kafka, mechanism), topic_name, b"secret") == [b"secret"]
    refused(sasl_options(apache_kafka, mechanism, password="wrong"), topic_name)


def test_the_ssl_listener_requires_a_certificate_of_the_test_ca(
    apache_kafka: ApacheKafkaBroker, topic_name: str, tmp_path: Path
) -> None:
    apache_kafka.create_topics([topic_name])
    certificates = apache_kafka.certificates
    options = mtls_options(apache_kafka, certificates.client_certificate, certificates.client_key)
    assert round_trip(options, topic_name, b"mtls") == [b"mtls"]
    for certificate, key in [(None, None), (certificates.stranger_certificate, certificates.stranger_key)]:
        refused(mtls_options(apache_kafka, certificate, key), topic_name)


def test_a_client_that_does_not_trust_the_test_ca_is_refused(
    apache_kafka: ApacheKafkaBroker, topic_name: str, tmp_path: Path
) -> None:
    apache_kafka.create_topics([topic_name])
    other = make_certificates(tmp_path / "other")  # a CA the broker's certificate is not signed by
    refused({**sasl_options(apache_kafka, "SCRAM-SHA-512"), "ssl_cafile": str(other.ca)}, topic_name)


def test_records_and_committed_offsets_survive_a_restart_graceful_or_not(
    own_apache_kafka: ApacheKafkaBroker, topic_name: str, group_id: str
) -> None:
    kafka = own_apache_kafka
    kafka.create_topics([topic_name])
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    for i in range(10):
        producer.send(topic_name, key=b"k", value=str(i).encode())
    producer.flush(timeout=30)
    producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=group_id, enable_auto_commit=False
    )
    partition = TopicPartition(topic_name, 0)
    consumer.assign([partition])
    consumer.commit({partition: OffsetAndMetadata(7, "", -1)})
    consumer.close()

    for restart in (kafka.restart, lambda: (kafka.kill(), kafka.start())):
        pid = kafka.pid
        started = time.monotonic()
        restart()
        assert kafka.running and kafka.pid != pid, f"took {time.monotonic() - started:.1f} s"
        consumer = KafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers, group_id=group_id, enable_auto_commit=False
        )
        try:
            assert consumer.committed(partition) == 7
            consumer.assign([partition])
            consumer.seek_to_beginning()
            values = []
            deadline = time.monotonic() + 30
            while len(values) < 10 and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=200).values():
                    values.extend(int(record.value) for record in records)
            assert values == list(range(10))
        finally:
            consumer.close()
