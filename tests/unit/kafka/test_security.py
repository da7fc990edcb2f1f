"""Connection settings: checked together, and rendered alike for both client libraries."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from stream_lstm.config.secret import Secret
from stream_lstm.errors import ConfigError
from stream_lstm.kafka.security import (
    KAFKA_PYTHON_NAMES,
    KafkaSecurity,
    check_client_supports,
    parse_kafka_option,
)

SCRAM = KafkaSecurity(
    protocol="SASL_SSL",
    ssl_ca_file="/ca.pem",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="alice",
    sasl_password=Secret("alice-secret"),
)
MTLS = KafkaSecurity(
    protocol="SSL",
    ssl_ca_file="/ca.pem",
    ssl_cert_file="/client.pem",
    ssl_key_file="/client-key.pem",
    ssl_key_password=Secret("key-secret"),
    ssl_check_hostname=False,
)


def test_sasl_ssl_renders_for_librdkafka() -> None:
    assert SCRAM.confluent_config() == {
        "security.protocol": "sasl_ssl",
        "ssl.ca.location": "/ca.pem",
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "alice-secret",
    }


def test_sasl_ssl_renders_for_kafka_python() -> None:
    assert SCRAM.kafka_python_config() == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": "/ca.pem",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": "alice-secret",
    }


def test_mtls_renders_for_both_libraries() -> None:
    assert MTLS.confluent_config() == {
        "security.protocol": "ssl",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/client.pem",
        "ssl.key.location": "/client-key.pem",
        "ssl.key.password": "key-secret",
        "ssl.endpoint.identification.algorithm": "none",
    }
    assert MTLS.kafka_python_config() == {
        "security_protocol": "SSL",
        "ssl_check_hostname": False,
        "ssl_cafile": "/ca.pem",
        "ssl_certfile": "/client.pem",
        "ssl_keyfile": "/client-key.pem",
        "ssl_password": "key-secret",
    }


def test_every_kafka_python_rendering_is_accepted_by_its_client_classes() -> None:
    options = tuple(parse_kafka_option(f"{name}=1") for name in ("request.timeout.ms", "linger.ms"))
    security = KafkaSecurity(**{**SCRAM.__dict__, "options": options})
    for kind in (KafkaConsumer, KafkaProducer, KafkaAdminClient):
        config = security.kafka_python_config(kind.DEFAULT_CONFIG)
        assert set(config) <= set(kind.DEFAULT_CONFIG), kind
    assert "linger_ms" in security.kafka_python_config(KafkaProducer.DEFAULT_CONFIG)
    assert "linger_ms" not in security.kafka_python_config(KafkaConsumer.DEFAULT_CONFIG)


def test_every_mapped_option_name_is_a_keyword_of_some_kafka_python_client() -> None:
    keywords = {
        *KafkaConsumer.DEFAULT_CONFIG,
        *KafkaProducer.DEFAULT_CONFIG,
        *KafkaAdminClient.DEFAULT_CONFIG,
    }
    assert {keyword for keyword, _ in KAFKA_PYTHON_NAMES.values()} <= keywords


def test_the_repr_and_description_show_no_secret() -> None:
    for security in (SCRAM, MTLS):
        assert "secret" not in repr(security) and "secret" not in security.describe()
    assert "SCRAM-SHA-512 as 'alice'" in SCRAM.describe()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"protocol": "TLS"}, "unknown security protocol"),
        ({"ssl_ca_file": "/ca.pem"}, "does not use TLS"),
        ({"protocol": "SSL", "ssl_cert_file": "/c.pem"}, "both --ssl-cert-file and --ssl-key-file"),
        ({"protocol": "SASL_SSL"}, "needs --sasl-mechanism"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "needs --sasl-password"),
        ({"sasl_username": "u"}, "does not use SASL"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_username": "u"}, "takes no"),
    ],
)
def test_settings_that_cannot_work_together_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KafkaSecurity(**fields)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("group.id=other", "use --group-id"),
        ("enable.auto.commit=true", "the service sets it"),
        ("sasl.password=x", "use --sasl-password"),
        ("isolation.level=read_uncommitted", "use --exactly-once"),
        ("no-equals-sign", "NAME=VALUE"),
    ],
)
def test_options_that_would_undo_a_setting_or_a_guarantee_are_refused(option: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_kafka_option(option)


def test_kafka_python_refuses_an_option_it_cannot_map_and_oauthbearer() -> None:
    unknown = KafkaSecurity(options=(parse_kafka_option("statistics.interval.ms=1000"),))
    with pytest.raises(ConfigError, match="kafka-python has no such setting"):
        check_client_supports(unknown, "kafka-python")
    check_client_supports(unknown, "confluent")
    oauth = KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER")
    with pytest.raises(ConfigError, match="needs --kafka-client confluent"):
        check_client_supports(oauth, "kafka-python")
    check_client_supports(oauth, "confluent")
    with pytest.raises(ConfigError, match=r"linger\.ms: invalid literal"):
        check_client_supports(KafkaSecurity(options=(("linger.ms", "soon"),)), "kafka-python")


def test_the_service_settings_repr_shows_no_secret() -> None:
    from stream_lstm.kafka.interface import KafkaSettings

    settings = KafkaSettings("b:9093", "in", "out", "dead", "group", security=SCRAM)
    assert "alice-secret" not in repr(settings) and "SCRAM-SHA-512" in repr(settings)


def test_an_option_overrides_the_callers_default_instead_of_clashing_with_it() -> None:
    security = KafkaSecurity(
        options=(parse_kafka_option("client.id=mine"), parse_kafka_option("linger.ms=7"))
    )
    defaults = {"client_id": "stream-lstm", "linger_ms": 5, "acks": "all"}
    config = security.kafka_python_config(KafkaProducer.DEFAULT_CONFIG, defaults)
    assert config["client_id"] == "mine" and config["linger_ms"] == 7 and config["acks"] == "all"
    assert set(config) <= set(KafkaProducer.DEFAULT_CONFIG)
