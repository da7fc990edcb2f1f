"""The service, ``produce`` and ``demo`` on secured listeners of Apache Kafka, with both clients.

Each listener the way users meet it: SASL_SSL with SCRAM-SHA-512 (a self-run cluster), SASL_SSL
with PLAIN (the form hosted services use) and mTLS. One run per listener and client covers the
whole service: predictions, dead letters, the checkpoint topic store and ``--exactly-once``, all
through the secured listener. The SASL runs log at DEBUG (the client libraries' own debug output
included) and then look for the password everywhere the service shows something.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from stream_lstm.config.secret import MASK, Secret
from stream_lstm.kafka.broker import free_port
from stream_lstm.kafka.connect import EventWriter
from stream_lstm.kafka.security import KafkaSecurity
from stream_lstm.messages.events import encode_event
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.testing.apache_kafka import ApacheKafkaBroker
from tests.integration.service_harness import ServiceProcess, TopicReader, wait_for

pytestmark = pytest.mark.slow

LISTENERS = ("SCRAM-SHA-512", "PLAIN", "mTLS")
EVENTS = 300
BAD_MESSAGES = [b"not json", b'{"key": "k"}', b'{"label": "maybe"}']


def named_topics(kafka: ApacheKafkaBroker) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    names = {"input": f"in-{suffix}", "output": f"out-{suffix}", "dead": f"dead-{suffix}"}
    kafka.create_topics(list(names.values()), partitions=1)
    return names


def connection(
    kafka: ApacheKafkaBroker, listener: str, secret_file: Path
) -> tuple[str, list[str], KafkaSecurity]:
    """Bootstrap servers, the service's flags and the same settings as a KafkaSecurity."""
    ca = str(kafka.certificates.ca)
    if listener == "mTLS":
        certificate, key = str(kafka.certificates.client_certificate), str(kafka.certificates.client_key)
        flags = ["--security-protocol", "SSL", "--ssl-ca-file", ca, "--ssl-cert-file", certificate]
        flags += ["--ssl-key-file", key]
        security = KafkaSecurity(protocol="SSL", ssl_ca_file=ca, ssl_cert_file=certificate, ssl_key_file=key)
        return kafka.ssl_bootstrap_servers, flags, security
    user = kafka.users[listener]
    secret_file.write_text(user.password + "\n")
    flags = ["--security-protocol", "SASL_SSL", "--ssl-ca-file", ca, "--sasl-mechanism", listener]
    flags += ["--sasl-username", user.username, "--sasl-password-file", str(secret_file)]
    security = KafkaSecurity(
        protocol="SASL_SSL",
        ssl_ca_file=ca,
        sasl_mechanism=listener,
        sasl_username=user.username,
        sasl_password=Secret(user.password),
    )
    return kafka.sasl_ssl_bootstrap_servers, flags, security


@pytest.mark.parametrize("listener", LISTENERS)
def test_the_whole_service_runs_over_a_secured_listener(
    apache_kafka: ApacheKafkaBroker, listener: str, kafka_client: str, group_id: str, tmp_path: Path
) -> None:
    """Predictions (exactly once, in transactions), dead letters and the checkpoint topic, all
    over the secured listener; the events are produced over it too; no secret shows anywhere."""
    topics = named_topics(apache_kafka)
    bootstrap, flags, security = connection(apache_kafka, listener, tmp_path / "password")
    writer = EventWriter(bootstrap, topics["input"], client=kafka_client, security=security)
    for event in temporal_stream(EVENTS, n_keys=20, seed=3):
        writer.send(event.key, encode_event(event))
    for value in BAD_MESSAGES:
        writer.send("bad", value)
    writer.close()

    debug = ["--log-level", "DEBUG"] if listener != "mTLS" else []
    if kafka_client == "confluent" and debug:
        debug += ["--kafka-option", "debug=security,broker,protocol"]  # librdkafka's own, verbose
    service = ServiceProcess(
        bootstrap,
        topics,
        group_id,
        tmp_path,
        *flags,
        "--kafka-client", kafka_client,
        "--exactly-once",
        "--checkpoint-topic", f"checkpoints-{group_id}",
        "--checkpoint-interval", "1",
        "--models", "lstm,no_change",
        # An option every client takes, and that the service also sets (it overrides, not clashes).
        "--kafka-option", "client.id=stream-lstm-secured", "--kafka-option", "request.timeout.ms=30000",
        *debug,
    ).start()  # fmt: skip
    predictions = TopicReader(apache_kafka.bootstrap_servers, topics["output"], read_committed=True)
    dead = TopicReader(apache_kafka.bootstrap_servers, topics["dead"], read_committed=True)
    try:
        service.wait_ready(timeout=90)
        records = predictions.read_until(lambda r: len(r) >= EVENTS, 120, "every event's prediction")
        dead_letters = dead.read_until(lambda r: len(r) >= len(BAD_MESSAGES), 60, "the dead letters")
        wait_for(
            lambda: (service.metric("stream_lstm_last_checkpoint_timestamp_seconds") or 0) > 0,
            60,
            "a checkpoint",
        )
        health = service.health()
        metrics = service.metrics()
        service.terminate(timeout=30)
        assert sorted(r["source"]["offset"] for r in records) == list(range(EVENTS))
        assert len(dead_letters) == len(BAD_MESSAGES)
        checkpoints = TopicReader(apache_kafka.bootstrap_servers, f"checkpoints-{group_id}")
        try:
            assert wait_for(lambda: checkpoints.consumer.poll(timeout_ms=200), 30, "checkpoint records")
        finally:
            checkpoints.consumer.close()
    finally:
        service.cleanup()
        predictions.close()
        dead.close()
    if listener != "mTLS":
        password = apache_kafka.users[listener].password
        log = service.log()
        assert "DEBUG" in log  # the run did log at DEBUG
        if listener == "PLAIN" and kafka_client == "kafka-python":
            # kafka-python logs its SASL PLAIN request, password and all, at DEBUG: masked here.
            assert "SaslAuthenticateRequest" in log and MASK in log
        for where, text in {
            "log": log,
            "metrics": metrics,
            "health": json.dumps(health),
            "dead letters": json.dumps(dead_letters),
        }.items():
            assert password not in text, f"the password shows in the {where}"


def test_produce_and_demo_run_over_sasl_ssl(
    apache_kafka: ApacheKafkaBroker, kafka_client: str, tmp_path: Path
) -> None:
    """``produce`` writes to a SASL_SSL listener with the password from the environment's file
    variable; ``demo`` runs its whole stream on the cluster, then deletes its topics."""
    bootstrap, flags, _ = connection(apache_kafka, "SCRAM-SHA-512", tmp_path / "password")
    password_flags = flags[flags.index("--sasl-password-file") :]
    flags = flags[: flags.index("--sasl-password-file")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LSTM_")}
    env["STREAM_LSTM_SASL_PASSWORD_FILE"] = password_flags[1]
    topic = f"produced-{uuid.uuid4().hex[:10]}"
    apache_kafka.create_topics([topic])
    produced = subprocess.run(
        [sys.executable, "-m", "stream_lstm", "produce", "--synthetic", "--events", "200",
         "--topic", topic, "--bootstrap-servers", bootstrap, *flags, "--kafka-option", "client.id=producer",
         "--kafka-client", kafka_client],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    reader = TopicReader(apache_kafka.bootstrap_servers, topic)
    try:
        reader.read_until(lambda r: len(r) >= 200, 30, "the produced events")
    finally:
        reader.close()

    demo = subprocess.run(
        [sys.executable, "-m", "stream_lstm", "demo", "--events", "600", "--keys", "30", "--rate", "2000",
         "--workdir", str(tmp_path / "demo"), "--metrics-port", str(free_port()),
         "--bootstrap-servers", bootstrap, *flags, "--kafka-client", kafka_client],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr + (tmp_path / "demo" / "service.log").read_text()
    assert "final comparison" in demo.stdout and "deleted the demo's topics" in demo.stdout
    password = apache_kafka.users["SCRAM-SHA-512"].password
    assert password not in demo.stdout + demo.stderr + (tmp_path / "demo" / "service.log").read_text()


def misconfigurations(kafka: ApacheKafkaBroker, tmp_path: Path) -> dict[str, tuple[str, list[str], str]]:
    """Each misconfiguration: (bootstrap servers, the service's flags, the code it must name)."""
    ca = str(kafka.certificates.ca)
    user = kafka.users["SCRAM-SHA-512"]
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-" + user.password)
    right = tmp_path / "password"
    right.write_text(user.password)
    sasl = ["--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512"]
    sasl += ["--sasl-username", user.username]
    stranger_ca = str(kafka.certificates.stranger_certificate)
    port = kafka.sasl_ssl_bootstrap_servers.rsplit(":", 1)[1]
    return {
        "wrong password": (
            kafka.sasl_ssl_bootstrap_servers,
            [*sasl, "--ssl-ca-file", ca, "--sasl-password-file", str(wrong)],
            "sasl_authentication_failed",
        ),
        "unknown CA": (
            kafka.sasl_ssl_bootstrap_servers,
            [*sasl, "--ssl-ca-file", stranger_ca, "--sasl-password-file", str(right)],
            "tls_unknown_ca",
        ),
        "hostname mismatch": (
            f"127.1:{port}",  # the same address, by a name the broker's certificate does not carry
            [*sasl, "--ssl-ca-file", ca, "--sasl-password-file", str(right)],
            "tls_hostname_mismatch",
        ),
        "TLS to a plaintext port": (
            kafka.bootstrap_servers,
            [*sasl, "--ssl-ca-file", ca, "--sasl-password-file", str(right)],
            "tls_to_plaintext_port",
        ),
        "plaintext to a TLS port": (kafka.sasl_ssl_bootstrap_servers, [], "plaintext_to_tls_port"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong password",
        "unknown CA",
        "hostname mismatch",
        "TLS to a plaintext port",
        "plaintext to a TLS port",
    ],
)
def test_a_misconfigured_connection_is_named_in_the_log_and_healthz_within_seconds(
    apache_kafka: ApacheKafkaBroker, case: str, group_id: str, tmp_path: Path
) -> None:
    """Not an endless bootstrap retry: the cause, in a log line and in /healthz, within 20 s of start."""
    bootstrap, flags, code = misconfigurations(apache_kafka, tmp_path)[case]
    topics = {"input": "never-read", "output": "never-written", "dead": "never-written-either"}
    service = ServiceProcess(
        bootstrap, topics, group_id, tmp_path, *flags, "--checkpoint-topic", f"checkpoints-{group_id}"
    ).start()
    try:

        def named() -> dict | None:
            service.assert_alive()
            health = service.health()
            if health is None or not re.search(rf"cannot reach Kafka at \S+: .* \[{code}\]", service.log()):
                return None
            return (
                health[1] if health[0] == 503 and health[1].get("kafka_connection", {}).get("code") else None
            )

        details = wait_for(named, 20, f"the service to name {code}")
        assert details["kafka_connection"]["code"] == code, details
        assert details["last_error"] == details["kafka_connection"]["message"]
        service.terminate(timeout=15)
    finally:
        service.cleanup()
    assert apache_kafka.users["SCRAM-SHA-512"].password not in service.log() + json.dumps(details)
