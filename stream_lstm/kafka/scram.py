"""The client's side of a SCRAM-SHA-256/512 login (RFC 5802, RFC 7677), for the connection diagnosis.

:mod:`stream_lstm.kafka.connection_probe` logs in as the client libraries would, without them:
:class:`ScramLogin` makes the client-first message, the client-final message (with the proof
of the password) from the server-first message, and checks the server's signature in its final
message, so that a broker that does not know the password cannot pass for one that does. A
server message that does not check raises :class:`ScramError`, never anything else; the
iteration count is bounded, so a hostile server cannot make the client hash for minutes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from stream_lstm.errors import StreamLSTMError

#: Hash of each mechanism.
HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
#: Kafka accepts 4096 to 16384 iterations; more is refused rather than computed.
MAX_ITERATIONS = 100_000


class ScramError(StreamLSTMError):
    """A SCRAM message of the server's does not check (the message says how, never a secret)."""


class ScramLogin:
    """One SCRAM login: :meth:`first_message`, then :meth:`final_message`, then :meth:`check_final`."""

    def __init__(self, mechanism: str, username: str, password: str, nonce: str | None = None) -> None:
        self.hash = HASHES[mechanism]
        self.nonce = nonce or secrets.token_urlsafe(24)  # printable, without a comma
        name = username.replace("=", "=3D").replace(",", "=2C")
        self.first_bare = f"n={name},r={self.nonce}"
        self._password = password.encode()
        self._server_signature: bytes | None = None

    def first_message(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def final_message(self, server_first: bytes) -> bytes:
        """The client-final message, proving the password, for the server-first message."""
        fields = _fields(server_first)
        nonce = fields.get("r", "")
        if not nonce.startswith(self.nonce) or nonce == self.nonce:
            raise ScramError("the server's nonce does not extend the client's")
        try:
            salt = base64.b64decode(fields["s"], validate=True)
            iterations = int(fields["i"])
        except (KeyError, ValueError, binascii.Error):
            raise ScramError("the server's first message has no valid salt and iteration count") from None
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise ScramError(f"the server asks for {iterations} iterations (at most {MAX_ITERATIONS})")
        salted = hashlib.pbkdf2_hmac(self.hash, self._password, salt, iterations)
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        client_key = self._hmac(salted, b"Client Key")
        signature = self._hmac(hashlib.new(self.hash, client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def check_final(self, server_final: bytes) -> None:
        """Raise :class:`ScramError` unless the server-final message carries the server's signature."""
        fields = _fields(server_final)
        if "e" in fields:
            raise ScramError(f"the server refused the login: {fields['e']}")
        try:
            signature = base64.b64decode(fields["v"], validate=True)
        except (KeyError, ValueError, binascii.Error):
            raise ScramError("the server's final message has no valid signature") from None
        if self._server_signature is None or not hmac.compare_digest(signature, self._server_signature):
            raise ScramError("the server's signature does not match: it does not know the password")

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash).digest()


def _fields(message: bytes) -> dict[str, str]:
    """The ``k=value`` attributes of a server message."""
    try:
        text = message.decode()
    except UnicodeDecodeError:
        raise ScramError("a server message is not UTF-8") from None
    return {key: value for key, _, value in (part.partition("=") for part in text.split(","))}
