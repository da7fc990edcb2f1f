"""The settings of the Kafka connection that ``run``, ``produce`` and ``demo`` share: the
bootstrap servers, the client library, TLS, SASL and extra client options.

Part of :mod:`stream_lstm.config.declared` (every setting is declared once); a module of its own
because the secured-cluster settings and their parsers are a subject of their own
(docs/security.md).
"""

from __future__ import annotations

from typing import Any

from stream_lstm.config.secret import secret
from stream_lstm.config.setting import (
    Setting,
    host_port_list,
    kafka_client,
    parse_bool,
)


def security_protocol(text: str) -> str:
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, in any case."""
    from stream_lstm.kafka.security import SECURITY_PROTOCOLS

    value = str(text).strip().upper()
    if value not in SECURITY_PROTOCOLS:
        raise ValueError(f"expected one of {', '.join(SECURITY_PROTOCOLS)}, got {text!r}")
    return value


def sasl_mechanism(text: str) -> str:
    """PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER, in any case."""
    from stream_lstm.kafka.security import SASL_MECHANISMS

    value = str(text).strip().upper()
    if value not in SASL_MECHANISMS:
        raise ValueError(f"expected one of {', '.join(SASL_MECHANISMS)}, got {text!r}")
    return value


#: Where ``--start-from`` starts a partition the group has no offset for.
START_POSITIONS = ("earliest", "latest")


def start_position(text: str) -> str:
    """earliest or latest, in any case."""
    value = str(text).strip().lower()
    if value not in START_POSITIONS:
        raise ValueError(f"expected earliest or latest, got {text!r}")
    return value


def kafka_option(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` in librdkafka's property names (see :mod:`stream_lstm.kafka.security`)."""
    from stream_lstm.kafka.security import parse_kafka_option

    return parse_kafka_option(text)


#: How every Kafka client of a command connects (docs/connect.md has worked examples).
SECURITY_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "security_protocol",
        security_protocol,
        "PLAINTEXT",
        "how clients talk to the brokers: PLAINTEXT, SSL (TLS, or mTLS with a client certificate), "
        "SASL_PLAINTEXT or SASL_SSL (what hosted Kafka services use)",
    ),
    Setting(
        "ssl_ca_file",
        str,
        None,
        "PEM file of the CA(s) that signed the brokers' certificates (default: the system's CAs)",
        metavar="FILE",
    ),
    Setting("ssl_cert_file", str, None, "mTLS: this client's certificate (PEM)", metavar="FILE"),
    Setting("ssl_key_file", str, None, "mTLS: this client's private key (PEM)", metavar="FILE"),
    Setting("ssl_key_password", secret, None, "password of --ssl-key-file, if it is encrypted", secret=True),
    Setting(
        "ssl_check_hostname",
        parse_bool,
        True,
        "check that each broker's certificate names the host it was reached by (turn off only "
        "for a test cluster)",
    ),
    Setting(
        "sasl_mechanism",
        sasl_mechanism,
        None,
        "SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, or OAUTHBEARER (--kafka-client "
        "confluent, configured with --kafka-option sasl.oauthbearer.*)",
    ),
    Setting("sasl_username", str, None, "SASL user name (PLAIN, SCRAM)"),
    Setting(
        "sasl_password",
        secret,
        None,
        "SASL password (PLAIN, SCRAM); prefer --sasl-password-file",
        secret=True,
    ),
    Setting(
        "kafka_option",
        kafka_option,
        (),
        "any other client property as NAME=VALUE, in librdkafka's names (mapped for kafka-python, "
        "which refuses those it lacks)",
        metavar="NAME=VALUE",
        repeated=True,
    ),
)

KAFKA_CLIENT = Setting(
    "kafka_client",
    kafka_client,
    "kafka-python",
    "Kafka client library: kafka-python (pure Python) or confluent (librdkafka, faster; "
    "pip install 'stream-lstm[confluent]')",
)

KAFKA_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "bootstrap_servers",
        host_port_list,
        "127.0.0.1:9092",
        "Kafka bootstrap servers, HOST:PORT[,HOST:PORT] (IPv6: [::1]:9092)",
    ),
    KAFKA_CLIENT,
    *SECURITY_SETTINGS,
)
