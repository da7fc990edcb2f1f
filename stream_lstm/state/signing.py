"""Signed checkpoints: an HMAC-SHA256 envelope around a checkpoint's bytes, and signed manifests.

The bytes of :func:`~stream_lstm.state.checkpoint.encode_checkpoint` are opaque here. With a
checkpoint key (``--checkpoint-key``) every store writes them inside an envelope::

    SIGNED_MAGIC  b"STREAM-LSTM-SIGNED\\n"
    format        1 byte (ENVELOPE_FORMAT)
    key id        8 bytes: HMAC-SHA256(key, b"stream-lstm key id")[:8], which key signed it
    mac           32 bytes: HMAC-SHA256(key, context + len(name) + name + payload)
    payload       the checkpoint's bytes

``name`` is where the checkpoint is stored (``instances/ID`` or ``partitions/TOPIC/N``, in both
stores), so a signed checkpoint copied or replayed under another name does not verify. A reader
checks the envelope before anything decodes the payload (:func:`unseal`), with
:func:`hmac.compare_digest`. A topic store's manifest carries ``key_id`` and ``hmac`` too: the
HMAC of a canonical JSON of its other fields plus the record key it is stored under
(:meth:`CheckpointSigner.sign_manifest`), so its epoch, version, size and the payload's SHA-256
are all bound to the key and the name.

What signing does and does not stop is in docs/security.md: it authenticates, it does not
encrypt, and it does not stop the replay of an older signed checkpoint of the same name, nor the
deletion of one.

Without a key, nothing is signed and a signed checkpoint is still read, with a warning that it
was not verified (so that turning signing off never strands the state; without a key nothing is
verified anyway). With a key, an unsigned or wrongly signed checkpoint is refused:
:class:`~stream_lstm.errors.CheckpointRejected` with reason ``unsigned`` or ``bad_signature``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from stream_lstm.errors import CheckpointRejected, ConfigError

log = logging.getLogger(__name__)

SIGNED_MAGIC = b"STREAM-LSTM-SIGNED\n"
ENVELOPE_FORMAT = 1
KEY_ID_BYTES = 8
MAC_BYTES = 32
HEADER_BYTES = len(SIGNED_MAGIC) + 1 + KEY_ID_BYTES + MAC_BYTES
#: The shortest key accepted, in bytes of its UTF-8 text (an HMAC key should hold at least as
#: much entropy as the 256-bit hash; use a random 32+ character string).
MIN_KEY_BYTES = 32

_CHECKPOINT_CONTEXT = b"stream-lstm checkpoint 1\0"
_MANIFEST_CONTEXT = b"stream-lstm manifest 1\0"
#: The manifest fields that carry its signature, and so are left out of what is signed.
SIGNATURE_FIELDS = ("key_id", "hmac")


def check_key(text: str, setting: str) -> bytes:
    """The key bytes of a checkpoint key's text; :class:`ConfigError` naming ``setting`` (never
    the key) when it is shorter than :data:`MIN_KEY_BYTES`."""
    key = text.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"{setting} must be at least {MIN_KEY_BYTES} bytes long (it has {len(key)}): "
            "use a random string, e.g. `openssl rand -hex 32`"
        )
    return key


def is_signed(data: bytes) -> bool:
    """Whether ``data`` is a signed envelope (signed by whatever key)."""
    return data.startswith(SIGNED_MAGIC)


class CheckpointSigner:
    """Signs with one key and verifies with it and any ``previous`` keys (during a rotation).

    Keys are bytes of at least :data:`MIN_KEY_BYTES` (see :func:`check_key`); the signer never
    shows them: its repr names the key ids only.
    """

    def __init__(self, key: bytes, previous: Iterable[bytes] = ()) -> None:
        self._key = key
        self.key_id = _key_id(key)
        self._keys = {_key_id(k): k for k in previous}
        self._keys[self.key_id] = key

    def __repr__(self) -> str:
        return f"CheckpointSigner(key_ids={sorted(k.hex() for k in self._keys)})"

    # ------------------------------------------------------------------ checkpoints

    def seal(self, payload: bytes, name: str) -> bytes:
        """``payload`` of checkpoint ``name`` in a signed envelope."""
        mac = hmac.new(self._key, _checkpoint_message(name, payload), hashlib.sha256).digest()
        return SIGNED_MAGIC + bytes([ENVELOPE_FORMAT]) + self.key_id + mac + payload

    def open(self, data: bytes, name: str, where: str) -> bytes:
        """The payload of the envelope ``data`` of checkpoint ``name``, once its HMAC is checked;
        :class:`CheckpointRejected` (``unsigned`` or ``bad_signature``) naming ``where``."""
        if not is_signed(data):
            raise CheckpointRejected(
                f"checkpoint {where} is not signed, and a checkpoint key is set: refused", "unsigned"
            )
        key_id, mac, payload = _split(data, where)
        key = self._keys.get(key_id)
        if key is None:
            raise CheckpointRejected(
                f"checkpoint {where} is signed with a key this instance does not have "
                f"(key id {key_id.hex()}): refused",
                "bad_signature",
            )
        expected = hmac.new(key, _checkpoint_message(name, payload), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise CheckpointRejected(
                f"checkpoint {where} has a wrong signature (altered, or stored under another name): refused",
                "bad_signature",
            )
        return payload

    # ------------------------------------------------------------------ manifests

    def sign_manifest(self, manifest: Mapping[str, Any], name: str) -> dict[str, Any]:
        """``manifest`` of the record keyed ``name``, with its ``key_id`` and ``hmac``."""
        signed = {key: value for key, value in manifest.items() if key not in SIGNATURE_FIELDS}
        signed["key_id"] = self.key_id.hex()
        signed["hmac"] = _manifest_mac(self._key, signed, name)
        return signed

    def check_manifest(self, manifest: Mapping[str, Any], name: str, where: str) -> None:
        """Refuse ``manifest`` of the record keyed ``name`` unless this signer's keys signed it:
        :class:`CheckpointRejected` (``unsigned`` or ``bad_signature``) naming ``where``."""
        mac, key_id = manifest.get("hmac"), manifest.get("key_id")
        if mac is None:
            raise CheckpointRejected(
                f"manifest {where} is not signed, and a checkpoint key is set: refused", "unsigned"
            )
        try:
            key = self._keys.get(bytes.fromhex(key_id)) if isinstance(key_id, str) else None
        except ValueError:
            key = None
        if key is None:
            raise CheckpointRejected(
                f"manifest {where} is signed with a key this instance does not have: refused",
                "bad_signature",
            )
        if not isinstance(mac, str) or not hmac.compare_digest(
            mac.encode("ascii", "replace"), _manifest_mac(key, manifest, name).encode("ascii")
        ):
            raise CheckpointRejected(
                f"manifest {where} has a wrong signature (altered, or stored under another key): refused",
                "bad_signature",
            )


def seal(signer: CheckpointSigner | None, payload: bytes, name: str) -> bytes:
    """``payload`` signed when there is a key, else as it is."""
    return payload if signer is None else signer.seal(payload, name)


def unseal(signer: CheckpointSigner | None, data: bytes, name: str, where: str) -> bytes:
    """The checkpoint bytes inside ``data`` of checkpoint ``name``: verified with a key (refused
    with :class:`CheckpointRejected` otherwise); without one, a signed envelope is opened
    unverified, with a warning, and anything else is returned as it is."""
    if signer is not None:
        return signer.open(data, name, where)
    if not is_signed(data):
        return data
    log.warning("checkpoint %s is signed, but no checkpoint key is set: loaded without verifying it", where)
    return _split(data, where)[2]


def _key_id(key: bytes) -> bytes:
    return hmac.new(key, b"stream-lstm key id", hashlib.sha256).digest()[:KEY_ID_BYTES]


def _checkpoint_message(name: str, payload: bytes) -> bytes:
    encoded = name.encode("utf-8")
    return _CHECKPOINT_CONTEXT + len(encoded).to_bytes(4, "big") + encoded + payload


def _split(data: bytes, where: str) -> tuple[bytes, bytes, bytes]:
    """The key id, MAC and payload of an envelope."""
    if len(data) < HEADER_BYTES or data[len(SIGNED_MAGIC)] != ENVELOPE_FORMAT:
        raise CheckpointRejected(
            f"checkpoint {where} has a truncated signature or an unknown envelope format: refused",
            "bad_signature",
        )
    start = len(SIGNED_MAGIC) + 1
    return (
        data[start : start + KEY_ID_BYTES],
        data[start + KEY_ID_BYTES : HEADER_BYTES],
        data[HEADER_BYTES:],
    )


def canonical_manifest(manifest: Mapping[str, Any], name: str) -> bytes:
    """What a manifest's HMAC covers: its fields but the signature's own ``hmac``, plus ``name``
    (the record key), as JSON with sorted keys and no spaces."""
    fields = {key: value for key, value in manifest.items() if key != "hmac"}
    return json.dumps(
        {"fields": fields, "name": name}, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def _manifest_mac(key: bytes, manifest: Mapping[str, Any], name: str) -> str:
    return hmac.new(key, _MANIFEST_CONTEXT + canonical_manifest(manifest, name), hashlib.sha256).hexdigest()
