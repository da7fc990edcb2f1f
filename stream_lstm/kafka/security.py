"""How every Kafka client of the service connects: TLS, mTLS, SASL and other client properties.

One :class:`KafkaSecurity` holds the connection settings (``--security-protocol``, ``--ssl-*``,
``--sasl-*`` and repeatable ``--kafka-option NAME=VALUE``) and renders them for each client
library: :meth:`KafkaSecurity.confluent_config` in librdkafka's property names,
:meth:`KafkaSecurity.kafka_python_config` in kafka-python's keyword arguments. Every client the
service makes (consumer, producer, transactional producer, admin, the checkpoint topic store,
``produce``, ``demo``) takes its settings from here, so a cluster that one client reaches, all
reach.

``--kafka-option`` takes librdkafka's names (the names of Kafka's own Java clients, mostly). For
kafka-python each name is mapped (:data:`KAFKA_PYTHON_NAMES`); a name it cannot map is refused
with the list of those it can, rather than dropped. Names the service sets itself (the group,
transactions, offsets) or that have their own setting are refused too, so that no option can
quietly undo a guarantee. Passwords and keys are :class:`~stream_lstm.config.secret.Secret`:
they show as ``***`` in the repr of these settings, and only the rendered configurations, which
go straight to a client library, hold them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream_lstm.config.secret import Secret
from stream_lstm.errors import ConfigError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")

#: Mechanisms that authenticate with ``--sasl-username`` and ``--sasl-password``.
PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: Properties the service sets itself: an option may not change them (the setting that does is
#: named). ``None``: set by the service, no setting changes it.
OWNED_PROPERTIES: dict[str, str | None] = {
    "bootstrap.servers": "--bootstrap-servers",
    "group.id": "--group-id",
    "transactional.id": "--transactional-id",
    "isolation.level": "--exactly-once",
    "enable.idempotence": "--exactly-once",
    "enable.auto.commit": None,
    "enable.auto.offset.store": None,
    "auto.offset.reset": None,
    "session.timeout.ms": "--session-timeout-ms",
    "heartbeat.interval.ms": "--heartbeat-interval-ms",
    "max.poll.interval.ms": "--max-poll-interval-ms",
    "fetch.wait.max.ms": "--fetch-max-wait-ms",
    "fetch.max.wait.ms": "--fetch-max-wait-ms",
    "acks": None,
    "security.protocol": "--security-protocol",
    "ssl.ca.location": "--ssl-ca-file",
    "ssl.certificate.location": "--ssl-cert-file",
    "ssl.key.location": "--ssl-key-file",
    "ssl.key.password": "--ssl-key-password",
    "ssl.endpoint.identification.algorithm": "--ssl-check-hostname",
    "sasl.mechanism": "--sasl-mechanism",
    "sasl.mechanisms": "--sasl-mechanism",
    "sasl.username": "--sasl-username",
    "sasl.password": "--sasl-password",
    "error_cb": None,
    "logger": None,
}


def _integer(text: str) -> int:
    return int(text)


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _text(text: str) -> str:
    return text


#: ``--kafka-option`` names kafka-python understands: librdkafka name -> (keyword, value parser).
KAFKA_PYTHON_NAMES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "client.id": ("client_id", _text),
    "request.timeout.ms": ("request_timeout_ms", _integer),
    "socket.timeout.ms": ("request_timeout_ms", _integer),
    "metadata.max.age.ms": ("metadata_max_age_ms", _integer),
    "reconnect.backoff.ms": ("reconnect_backoff_ms", _integer),
    "reconnect.backoff.max.ms": ("reconnect_backoff_max_ms", _integer),
    "retry.backoff.ms": ("retry_backoff_ms", _integer),
    "connections.max.idle.ms": ("connections_max_idle_ms", _integer),
    "socket.send.buffer.bytes": ("send_buffer_bytes", _integer),
    "socket.receive.buffer.bytes": ("receive_buffer_bytes", _integer),
    "receive.message.max.bytes": ("receive_message_max_bytes", _integer),
    "max.in.flight.requests.per.connection": ("max_in_flight_requests_per_connection", _integer),
    "max.in.flight": ("max_in_flight_requests_per_connection", _integer),
    "client.dns.lookup": ("client_dns_lookup", _text),
    "ssl.crl.location": ("ssl_crlfile", _text),
    "ssl.cipher.suites": ("ssl_ciphers", _text),
    "sasl.kerberos.service.name": ("sasl_kerberos_service_name", _text),
    "sasl.kerberos.principal": ("sasl_kerberos_name", _text),
    "sasl.kerberos.domain.name": ("sasl_kerberos_domain_name", _text),
    "fetch.min.bytes": ("fetch_min_bytes", _integer),
    "fetch.max.bytes": ("fetch_max_bytes", _integer),
    "max.partition.fetch.bytes": ("max_partition_fetch_bytes", _integer),
    "check.crcs": ("check_crcs", _boolean),
    "linger.ms": ("linger_ms", _integer),
    "batch.size": ("batch_size", _integer),
    "compression.type": ("compression_type", _text),
    "message.max.bytes": ("max_request_size", _integer),
    "max.request.size": ("max_request_size", _integer),
    "retries": ("retries", _integer),
    "delivery.timeout.ms": ("delivery_timeout_ms", _integer),
}

#: Words that make an option's value a secret (never shown).
_SECRET_WORDS = ("password", "secret", "token", "jaas", "credential", "key.pem", "keystore", "private")


def is_secret_option(name: str) -> bool:
    """Whether an option of this name holds a secret (``sasl.oauthbearer.client.secret``, ...)."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def parse_kafka_option(text: str) -> tuple[str, str | Secret]:
    """``NAME=VALUE`` (librdkafka's property names); a secret-looking value is kept as a Secret."""
    name, equals, value = str(text).partition("=")
    name = name.strip()
    if not equals or not name:
        raise ValueError("expected NAME=VALUE, e.g. client.dns.lookup=use_all_dns_ips")
    if name in OWNED_PROPERTIES:
        setting = OWNED_PROPERTIES[name]
        raise ValueError(
            f"{name} cannot be set with --kafka-option: "
            + (f"use {setting}" if setting else "the service sets it (its delivery guarantees depend on it)")
        )
    return name, (Secret(value) if is_secret_option(name) else value)


@dataclass(frozen=True)
class KafkaSecurity:
    """The connection settings every client of the service uses (see the module doc)."""

    protocol: str = "PLAINTEXT"
    #: PEM file of the CA(s) that signed the brokers' certificates (default: the system's).
    ssl_ca_file: str | None = None
    #: mTLS: this client's certificate and its private key (PEM), and the key's password.
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    ssl_key_password: Secret | None = None
    #: Check that a broker's certificate names the host it was reached by.
    ssl_check_hostname: bool = True
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    #: ``--kafka-option`` pairs, in librdkafka's names.
    options: tuple[tuple[str, str | Secret], ...] = field(default=())

    def __post_init__(self) -> None:
        check_security(self)

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """One line for logs and errors, without secrets: protocol, mechanism, user, files."""
        parts = [self.protocol]
        if self.uses_sasl:
            parts.append(
                f"{self.sasl_mechanism}" + (f" as {self.sasl_username!r}" if self.sasl_username else "")
            )
        if self.uses_tls:
            parts.append(f"CA {self.ssl_ca_file}" if self.ssl_ca_file else "system CAs")
            if self.ssl_cert_file:
                parts.append(f"client certificate {self.ssl_cert_file}")
            if not self.ssl_check_hostname:
                parts.append("hostname not checked")
        return ", ".join(parts)

    # ------------------------------------------------------------------ rendering

    def confluent_config(self) -> dict[str, Any]:
        """librdkafka properties (secrets revealed: for the client library only)."""
        config: dict[str, Any] = {"security.protocol": self.protocol.lower()}
        if self.uses_tls:
            if self.ssl_ca_file:
                config["ssl.ca.location"] = self.ssl_ca_file
            if self.ssl_cert_file:
                config["ssl.certificate.location"] = self.ssl_cert_file
            if self.ssl_key_file:
                config["ssl.key.location"] = self.ssl_key_file
            if self.ssl_key_password is not None:
                config["ssl.key.password"] = self.ssl_key_password.reveal()
            config["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
        if self.uses_sasl:
            config["sasl.mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism in PASSWORD_MECHANISMS:
                config["sasl.username"] = self.sasl_username
                config["sasl.password"] = self.sasl_password.reveal() if self.sasl_password else ""
        for name, value in self.options:
            config[name] = value.reveal() if isinstance(value, Secret) else value
        return config

    def kafka_python_config(
        self, accepted: Collection[str] | None = None, defaults: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """kafka-python keyword arguments (secrets revealed: for the client library only).

        ``accepted``: the keywords of the client class (its ``DEFAULT_CONFIG``); options it does
        not take (a producer's ``linger.ms`` for a consumer) are left out for it. ``defaults``:
        the caller's own keywords, which an option of the same name overrides (as with librdkafka,
        where the options come last), rather than clash with.
        """
        config: dict[str, Any] = {**(defaults or {}), "security_protocol": self.protocol}
        if self.uses_tls:
            config["ssl_check_hostname"] = self.ssl_check_hostname
            if self.ssl_ca_file:
                config["ssl_cafile"] = self.ssl_ca_file
            if self.ssl_cert_file:
                config["ssl_certfile"] = self.ssl_cert_file
            if self.ssl_key_file:
                config["ssl_keyfile"] = self.ssl_key_file
            if self.ssl_key_password is not None:
                config["ssl_password"] = self.ssl_key_password.reveal()
        if self.uses_sasl:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = self.sasl_password.reveal() if self.sasl_password else None
        for keyword, value in kafka_python_options(self.options).items():
            if accepted is None or keyword in accepted:
                config[keyword] = value
        return config


def kafka_python_options(options: Iterable[tuple[str, str | Secret]]) -> dict[str, Any]:
    """``--kafka-option`` pairs as kafka-python keywords; a :class:`ConfigError` for one it lacks."""
    mapped: dict[str, Any] = {}
    for name, value in options:
        if name not in KAFKA_PYTHON_NAMES:
            raise ConfigError(
                f"--kafka-option {name}: kafka-python has no such setting; it takes "
                f"{', '.join(sorted(KAFKA_PYTHON_NAMES))} (or use --kafka-client confluent, which "
                "takes every librdkafka property)"
            )
        keyword, parse = KAFKA_PYTHON_NAMES[name]
        text = value.reveal() if isinstance(value, Secret) else value
        try:
            mapped[keyword] = parse(text)
        except ValueError as error:
            raise ConfigError(f"--kafka-option {name}: {error}") from None
    return mapped


def check_security(security: KafkaSecurity) -> None:
    """Refuse settings that cannot work together, naming the setting to change."""
    if security.protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            f"unknown security protocol {security.protocol!r}; choose from {', '.join(SECURITY_PROTOCOLS)}"
        )
    tls_settings = {
        "--ssl-ca-file": security.ssl_ca_file,
        "--ssl-cert-file": security.ssl_cert_file,
        "--ssl-key-file": security.ssl_key_file,
        "--ssl-key-password": security.ssl_key_password,
    }
    sasl_settings = {
        "--sasl-mechanism": security.sasl_mechanism,
        "--sasl-username": security.sasl_username,
        "--sasl-password": security.sasl_password,
    }
    if not security.uses_tls:
        given = [name for name, value in tls_settings.items() if value is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} given, but --security-protocol {security.protocol} does not use TLS "
                "(use SSL or SASL_SSL)"
            )
    if (security.ssl_cert_file is None) != (security.ssl_key_file is None):
        raise ConfigError("mTLS needs both --ssl-cert-file and --ssl-key-file")
    if security.ssl_key_password is not None and security.ssl_key_file is None:
        raise ConfigError("--ssl-key-password needs --ssl-key-file")
    if not security.uses_sasl:
        given = [name for name, value in sasl_settings.items() if value is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} given, but --security-protocol {security.protocol} does not use SASL "
                "(use SASL_SSL or SASL_PLAINTEXT)"
            )
        return
    if security.sasl_mechanism not in SASL_MECHANISMS:
        raise ConfigError(
            f"--security-protocol {security.protocol} needs --sasl-mechanism, one of "
            f"{', '.join(SASL_MECHANISMS)} (got {security.sasl_mechanism!r})"
        )
    if security.sasl_mechanism in PASSWORD_MECHANISMS:
        missing = [name for name in ("--sasl-username", "--sasl-password") if sasl_settings[name] is None]
        if missing:
            raise ConfigError(f"--sasl-mechanism {security.sasl_mechanism} needs {' and '.join(missing)}")
    elif security.sasl_username is not None or security.sasl_password is not None:
        raise ConfigError(
            f"--sasl-mechanism {security.sasl_mechanism} takes no --sasl-username or --sasl-password "
            "(configure it with --kafka-option sasl.oauthbearer.*)"
        )


def check_client_supports(security: KafkaSecurity, client: str) -> None:
    """Refuse what the chosen client library cannot do, before any client is made."""
    if client == "kafka-python":
        if security.sasl_mechanism == "OAUTHBEARER":
            raise ConfigError(
                "--sasl-mechanism OAUTHBEARER needs --kafka-client confluent (librdkafka's OIDC "
                "support, configured with --kafka-option sasl.oauthbearer.*); kafka-python can only "
                "take a token provider written in Python"
            )
        kafka_python_options(security.options)  # refuses names it cannot map


PLAINTEXT = KafkaSecurity()


def security_from_settings(settings: dict[str, Any]) -> KafkaSecurity:
    """The :class:`KafkaSecurity` of resolved settings (see :data:`SECURITY_SETTINGS` in
    :mod:`stream_lstm.config.declared`), checked against ``kafka_client``."""
    security = KafkaSecurity(
        protocol=settings["security_protocol"],
        ssl_ca_file=settings["ssl_ca_file"],
        ssl_cert_file=settings["ssl_cert_file"],
        ssl_key_file=settings["ssl_key_file"],
        ssl_key_password=settings["ssl_key_password"],
        ssl_check_hostname=settings["ssl_check_hostname"],
        sasl_mechanism=settings["sasl_mechanism"],
        sasl_username=settings["sasl_username"],
        sasl_password=settings["sasl_password"],
        options=tuple(settings["kafka_option"] or ()),
    )
    check_client_supports(security, settings["kafka_client"])
    return security
