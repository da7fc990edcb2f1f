"""TLS for a connection diagnosis: the client's SSL context, and what a TLS failure means.

:mod:`stream_lstm.kafka.connection_check` shakes hands as the client libraries would, with the
context :func:`tls_context` builds from :class:`~stream_lstm.kafka.security.KafkaSecurity` (the
CA file or the system's CAs, the hostname check as set, the client certificate and key for
mTLS). When the handshake or the first read after it fails, :func:`certificate_problem` and
:func:`alert_problem` turn the ``ssl`` error into a code and a sentence that names the setting to
change. They return ``(code, message)`` pairs; the caller makes the problem of them.
"""

from __future__ import annotations

import ssl

from stream_lstm.errors import StreamLSTMError
from stream_lstm.kafka.security import KafkaSecurity

#: OpenSSL verify codes of a chain that ends at no trusted CA (X509_V_ERR_*). 7, a signature
#: that does not check, is what a trusted CA of the same name but another key gives (a CA made
#: anew under the old name): not signed by the CA given either.
UNKNOWN_CA_CODES = frozenset({2, 7, 18, 19, 20, 21})
#: OpenSSL verify codes of a certificate that does not name the host (or IP) it was reached by.
HOSTNAME_CODES = frozenset({62, 64})

#: Alerts a broker sends about the client's certificate (TLS 1.3: on the first read after the
#: handshake, which completes on the client's side before the broker has looked at it).
CERTIFICATE_ALERTS = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)
#: Reasons OpenSSL gives when the other end answers a ClientHello with something not TLS.
NOT_TLS_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "UNEXPECTED_EOF_WHILE_READING",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
    }
)


class TlsSettingsError(StreamLSTMError):
    """A file of the TLS settings cannot be loaded (the message names the setting)."""


def tls_context(security: KafkaSecurity) -> ssl.SSLContext:
    """The SSL context a client with ``security`` uses; :class:`TlsSettingsError` if it cannot be made."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if security.ssl_ca_file:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # this CA file only, not the system's
        try:
            context.load_verify_locations(cafile=security.ssl_ca_file)
        except (OSError, ssl.SSLError) as error:
            raise TlsSettingsError(
                f"cannot load --ssl-ca-file {security.ssl_ca_file}: {reason_of(error)}"
            ) from None
    context.check_hostname = security.ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if security.ssl_cert_file and security.ssl_key_file:
        password = security.ssl_key_password.reveal() if security.ssl_key_password else None
        try:
            context.load_cert_chain(security.ssl_cert_file, security.ssl_key_file, password=password)
        except (OSError, ssl.SSLError) as error:
            hint = "" if password is None else " (or a wrong --ssl-key-password)"
            raise TlsSettingsError(
                f"cannot load the client certificate --ssl-cert-file {security.ssl_cert_file} with "
                f"--ssl-key-file {security.ssl_key_file}: {reason_of(error)}{hint}"
            ) from None
    return context


def certificate_problem(
    server: str, host: str, security: KafkaSecurity, error: ssl.SSLCertVerificationError
) -> tuple[str, str]:
    """The broker's certificate was not accepted: unknown CA, wrong name, or another reason."""
    detail = error.verify_message or reason_of(error)
    if error.verify_code in HOSTNAME_CODES:
        return (
            "tls_hostname_mismatch",
            f"the certificate of {server} is not valid for the name '{host}': use a name or address "
            "the certificate carries in --bootstrap-servers (or, for a test cluster only, "
            "--ssl-check-hostname false)",
        )
    if error.verify_code in UNKNOWN_CA_CODES:
        if security.ssl_ca_file:
            where = f"a CA in --ssl-ca-file {security.ssl_ca_file}"
            fix = "give the broker's CA"
        else:
            where = "a CA this system trusts"
            fix = "give the broker's CA with --ssl-ca-file"
        return (
            "tls_unknown_ca",
            f"the certificate of {server} is not signed by {where} ({detail}): {fix}",
        )
    return "tls_other", f"the certificate of {server} was refused: {detail} (--ssl-ca-file)"


def alert_problem(server: str, security: KafkaSecurity, error: ssl.SSLError) -> tuple[str, str] | None:
    """A TLS alert about the client's certificate, as a problem; ``None`` for other errors."""
    reason = getattr(error, "reason", None) or ""
    if reason not in CERTIFICATE_ALERTS:
        return None
    alert = reason.split("ALERT_", 1)[-1].lower().replace("_", " ")
    if not security.ssl_cert_file:
        return (
            "client_certificate_required",
            f"{server} requires a client certificate (mTLS; it sent the TLS alert '{alert}'): give "
            "--ssl-cert-file and --ssl-key-file",
        )
    return (
        "client_certificate_refused",
        f"{server} refused the client certificate --ssl-cert-file {security.ssl_cert_file} (TLS "
        f"alert '{alert}'): it must be signed by a CA the broker trusts and be valid",
    )


def not_tls(error: OSError) -> bool:
    """Whether a handshake error says the other end does not speak TLS (a close, or not a record)."""
    if isinstance(error, ssl.SSLEOFError | ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return True
    return isinstance(error, ssl.SSLError) and (getattr(error, "reason", None) or "") in NOT_TLS_REASONS


def unverified_context() -> ssl.SSLContext:
    """A context that accepts any certificate: only to learn whether a port speaks TLS at all."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def reason_of(error: BaseException) -> str:
    """A short reason of an error: OpenSSL's reason, the errno text, or the error's text."""
    reason = getattr(error, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
