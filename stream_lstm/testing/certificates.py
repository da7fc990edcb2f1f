"""A throwaway certificate authority for a test broker: made at test time, never committed.

:func:`make_certificates` writes, into a folder of the caller's:

- ``ca.pem``: the authority's certificate, the trust anchor of the broker and of the clients;
- ``broker.p12``: the broker's key and certificate (for ``127.0.0.1`` and ``localhost``), a
  PKCS#12 key store under a random password, which Java reads as it is;
- ``client.pem`` and ``client-key.pem``: a client's certificate and unencrypted key, for a listener
  that requires client certificates (mTLS);
- ``stranger.pem`` and ``stranger-key.pem``: a certificate of another authority, which that
  listener must refuse.

It needs the ``cryptography`` package (in the ``dev`` extra).
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: How long the certificates are valid: a test session, with room for a slow machine.
_VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class TestCertificates:
    """Where :func:`make_certificates` put each file, and the key store's password."""

    ca: Path
    broker_keystore: Path
    broker_keystore_password: str
    client_certificate: Path
    client_key: Path
    stranger_certificate: Path
    stranger_key: Path


def make_certificates(folder: Path, host: str = "127.0.0.1") -> TestCertificates:
    """Make a CA, a broker certificate for ``host`` and ``localhost``, and client certificates."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _authority("stream-lstm test CA")
    broker_key, broker_cert = _signed("stream-lstm test broker", ca_key, ca_cert, server=True, host=host)
    client_key, client_cert = _signed("stream-lstm test client", ca_key, ca_cert, server=False, host=host)
    other_ca_key, other_ca_cert = _authority("an authority the broker does not trust")
    stranger_key, stranger_cert = _signed("stranger", other_ca_key, other_ca_cert, server=False, host=host)

    password = secrets.token_urlsafe(18)
    paths = TestCertificates(
        ca=folder / "ca.pem",
        broker_keystore=folder / "broker.p12",
        broker_keystore_password=password,
        client_certificate=folder / "client.pem",
        client_key=folder / "client-key.pem",
        stranger_certificate=folder / "stranger.pem",
        stranger_key=folder / "stranger-key.pem",
    )
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.broker_keystore.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"broker",
            broker_key,
            broker_cert,
            [ca_cert],
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    _write_pair(paths.client_certificate, paths.client_key, client_cert, client_key)
    _write_pair(paths.stranger_certificate, paths.stranger_key, stranger_cert, stranger_key)
    return paths


def _authority(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _signed(
    name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    server: bool,
    host: str,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_pair(
    certificate_path: Path, key_path: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
