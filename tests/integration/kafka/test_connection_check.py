"""The connection diagnosis on a real Apache Kafka broker: each misconfiguration named, in seconds.

The broker of the ``apache_kafka`` fixture has three listeners (PLAINTEXT; SASL_SSL with a
SCRAM-SHA-512 and a PLAIN user; SSL that requires a client certificate of the test CA). Each
case here gets one setting wrong and checks the code, that the message names the server, and
that the answer came within :data:`BOUND` seconds (the libraries would retry forever).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream_lstm.config.secret import Secret
from stream_lstm.kafka.connection_check import ConnectionProblem, diagnose_connection
from stream_lstm.kafka.security import KafkaSecurity
from stream_lstm.testing.apache_kafka import ApacheKafkaBroker
from stream_lstm.testing.certificates import make_certificates

#: A generous bound on each diagnosis (they take well under a second on a quiet machine).
BOUND = 15.0


def diagnosed(servers: str, security: KafkaSecurity) -> ConnectionProblem | None:
    """The diagnosis, checked to come back within :data:`BOUND` seconds without a password in it."""
    started = time.monotonic()
    problem = diagnose_connection(servers, security, timeout_s=5.0)
    elapsed = time.monotonic() - started
    print(f"diagnosis of {servers} ({security.describe()}): {problem and problem.code} in {elapsed:.2f} s")
    assert elapsed < BOUND, f"the diagnosis took {elapsed:.1f} s"
    if problem is not None:
        assert servers.split(",")[-1] in problem.message
        for secret in (security.sasl_password, security.ssl_key_password):
            assert secret is None or secret.reveal() not in problem.message
    return problem


def sasl_ssl(kafka: ApacheKafkaBroker, mechanism: str, **changes: object) -> KafkaSecurity:
    """The SASL_SSL listener's settings for the user of ``mechanism``, with ``changes``."""
    user = kafka.users.get(mechanism, kafka.users["SCRAM-SHA-512"])
    settings: dict[str, object] = {
        "protocol": "SASL_SSL",
        "ssl_ca_file": str(kafka.certificates.ca),
        "sasl_mechanism": mechanism,
        "sasl_username": user.username,
        "sasl_password": Secret(user.password),
        **changes,
    }
    return KafkaSecurity(**settings)  # type: ignore[arg-type]


def mtls(kafka: ApacheKafkaBroker, certificate: Path | None, key: Path | None) -> KafkaSecurity:
    return KafkaSecurity(
        "SSL",
        ssl_ca_file=str(kafka.certificates.ca),
        ssl_cert_file=str(certificate) if certificate else None,
        ssl_key_file=str(key) if key else None,
    )


def port_of(servers: str) -> str:
    return servers.rpartition(":")[2]


# ---------------------------------------------------------------------------- right settings


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_each_listener_with_the_right_settings_works(apache_kafka: ApacheKafkaBroker, mechanism: str) -> None:
    certificates = apache_kafka.certificates
    assert diagnosed(apache_kafka.bootstrap_servers, KafkaSecurity()) is None
    assert diagnosed(apache_kafka.sasl_ssl_bootstrap_servers, sasl_ssl(apache_kafka, mechanism)) is None
    security = mtls(apache_kafka, certificates.client_certificate, certificates.client_key)
    assert diagnosed(apache_kafka.ssl_bootstrap_servers, security) is None


def test_a_server_that_works_ends_the_diagnosis_even_after_one_that_does_not(
    apache_kafka: ApacheKafkaBroker,
) -> None:
    servers = f"127.0.0.1:1,{apache_kafka.sasl_ssl_bootstrap_servers}"
    assert diagnosed(servers, sasl_ssl(apache_kafka, "PLAIN")) is None


# ---------------------------------------------------------------------------- SASL


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_a_wrong_password_is_a_refused_login(apache_kafka: ApacheKafkaBroker, mechanism: str) -> None:
    security = sasl_ssl(apache_kafka, mechanism, sasl_password=Secret("not-the-password"))
    problem = diagnosed(apache_kafka.sasl_ssl_bootstrap_servers, security)
    assert problem is not None and problem.code == "sasl_authentication_failed"
    user = apache_kafka.users[mechanism].username
    assert f"SASL {mechanism} login of user '{user}'" in problem.message
    assert "--sasl-username / --sasl-password" in problem.message


def test_an_unknown_scram_user_is_a_refused_login(apache_kafka: ApacheKafkaBroker) -> None:
    security = sasl_ssl(apache_kafka, "SCRAM-SHA-512", sasl_username="nobody")
    problem = diagnosed(apache_kafka.sasl_ssl_bootstrap_servers, security)
    assert problem is not None and problem.code == "sasl_authentication_failed"


def test_a_mechanism_the_listener_does_not_enable_is_named_with_those_it_does(
    apache_kafka: ApacheKafkaBroker,
) -> None:
    # The broker enables SCRAM-SHA-512 and PLAIN only (sasl.enabled.mechanisms).
    problem = diagnosed(apache_kafka.sasl_ssl_bootstrap_servers, sasl_ssl(apache_kafka, "SCRAM-SHA-256"))
    assert problem is not None and problem.code == "sasl_mechanism_not_enabled"
    assert "SCRAM-SHA-256" in problem.message and "SCRAM-SHA-512, PLAIN" in problem.message


def test_oauthbearer_on_a_listener_without_it_is_a_mechanism_not_enabled(
    apache_kafka: ApacheKafkaBroker,
) -> None:
    security = KafkaSecurity(
        "SASL_SSL", ssl_ca_file=str(apache_kafka.certificates.ca), sasl_mechanism="OAUTHBEARER"
    )
    problem = diagnosed(apache_kafka.sasl_ssl_bootstrap_servers, security)
    assert problem is not None and problem.code == "sasl_mechanism_not_enabled"


def sasl_plaintext(kafka: ApacheKafkaBroker) -> KafkaSecurity:
    """The PLAIN user's right settings, but SASL without TLS."""
    plain = kafka.users["PLAIN"]
    return KafkaSecurity(
        "SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username=plain.username,
        sasl_password=Secret(plain.password),
    )


def test_tls_without_sasl_to_the_sasl_ssl_listener_means_sasl_is_expected(
    apache_kafka: ApacheKafkaBroker,
) -> None:
    security = KafkaSecurity("SSL", ssl_ca_file=str(apache_kafka.certificates.ca))
    problem = diagnosed(apache_kafka.sasl_ssl_bootstrap_servers, security)
    assert problem is not None and problem.code == "sasl_expected"
    assert "--security-protocol SASL_SSL" in problem.message


def test_sasl_to_a_listener_without_sasl_is_named(apache_kafka: ApacheKafkaBroker) -> None:
    security = sasl_plaintext(apache_kafka)
    problem = diagnosed(apache_kafka.bootstrap_servers, security)
    assert problem is not None and problem.code == "sasl_not_enabled"
    assert "--security-protocol PLAINTEXT" in problem.message


# ---------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("other", ["new-ca-of-the-same-name", "stranger-certificate"])
def test_a_ca_file_that_did_not_sign_the_broker_is_an_unknown_ca(
    apache_kafka: ApacheKafkaBroker, tmp_path: Path, other: str
) -> None:
    # A CA made anew (same name, another key: a signature that does not check), or a file of
    # certificates none of which signed the broker's (no issuer found).
    if other == "new-ca-of-the-same-name":
        ca_file = make_certificates(tmp_path / "other").ca
    else:
        ca_file = apache_kafka.certificates.stranger_certificate
    security = sasl_ssl(apache_kafka, "PLAIN", ssl_ca_file=str(ca_file))
    problem = diagnosed(apache_kafka.sasl_ssl_bootstrap_servers, security)
    assert problem is not None and problem.code == "tls_unknown_ca"
    assert f"not signed by a CA in --ssl-ca-file {ca_file}" in problem.message


def test_a_name_the_certificate_does_not_carry_is_a_hostname_mismatch(
    apache_kafka: ApacheKafkaBroker,
) -> None:
    # The certificate names 127.0.0.1 and localhost; "127.1" reaches the same address by a name
    # it does not carry.
    servers = f"127.1:{port_of(apache_kafka.sasl_ssl_bootstrap_servers)}"
    problem = diagnosed(servers, sasl_ssl(apache_kafka, "PLAIN"))
    assert problem is not None and problem.code == "tls_hostname_mismatch"
    assert "'127.1'" in problem.message and "--ssl-check-hostname" in problem.message
    assert diagnosed(servers, sasl_ssl(apache_kafka, "PLAIN", ssl_check_hostname=False)) is None


@pytest.mark.parametrize("sasl", [False, True], ids=["SSL", "SASL_SSL"])
def test_tls_to_the_plaintext_port_is_named(apache_kafka: ApacheKafkaBroker, sasl: bool) -> None:
    ca = str(apache_kafka.certificates.ca)
    security = sasl_ssl(apache_kafka, "PLAIN") if sasl else KafkaSecurity("SSL", ssl_ca_file=ca)
    problem = diagnosed(apache_kafka.bootstrap_servers, security)
    assert problem is not None and problem.code == "tls_to_plaintext_port"
    assert "PLAINTEXT listener" in problem.message


@pytest.mark.parametrize("listener", ["ssl", "sasl_ssl"])
def test_plaintext_to_a_tls_port_is_named(apache_kafka: ApacheKafkaBroker, listener: str) -> None:
    servers = getattr(apache_kafka, f"{listener}_bootstrap_servers")
    problem = diagnosed(servers, KafkaSecurity())
    assert problem is not None and problem.code == "plaintext_to_tls_port"
    assert "speaks TLS" in problem.message


def test_sasl_plaintext_to_the_sasl_ssl_port_is_named(apache_kafka: ApacheKafkaBroker) -> None:
    security = sasl_plaintext(apache_kafka)
    problem = diagnosed(apache_kafka.sasl_ssl_bootstrap_servers, security)
    assert problem is not None and problem.code == "plaintext_to_tls_port"
    assert "--security-protocol SASL_SSL" in problem.message


def test_the_mtls_listener_without_a_client_certificate_requires_one(apache_kafka: ApacheKafkaBroker) -> None:
    problem = diagnosed(apache_kafka.ssl_bootstrap_servers, mtls(apache_kafka, None, None))
    assert problem is not None and problem.code == "client_certificate_required"
    assert "--ssl-cert-file and --ssl-key-file" in problem.message


def test_the_mtls_listener_refuses_a_certificate_of_another_ca(apache_kafka: ApacheKafkaBroker) -> None:
    certificates = apache_kafka.certificates
    security = mtls(apache_kafka, certificates.stranger_certificate, certificates.stranger_key)
    problem = diagnosed(apache_kafka.ssl_bootstrap_servers, security)
    assert problem is not None and problem.code == "client_certificate_refused"
    assert f"--ssl-cert-file {certificates.stranger_certificate}" in problem.message
