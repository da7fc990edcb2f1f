"""Which records of a checkpoint topic a :class:`~stream_lstm.state.topic_store.KafkaTopicStore`
takes, and what it does with the others.

Anyone who may produce to the checkpoint topic can write any record to it, and a record that is
not a checkpoint must never stop a reader (at start, at every rebalance, at every restart). So:

* a manifest that is not one (unreadable, another store format, or, with a checkpoint key,
  unsigned or wrongly signed: :mod:`stream_lstm.state.signing`) never enters the store's view:
  :meth:`RecordScreen.admits` refuses it as it is read;
* a manifest whose checkpoint cannot be loaded (chunks missing or not matching it, a payload
  refused or failing to decode, a non-finite state) leaves the view at the first load
  (:meth:`RecordScreen.fall_back`).

Either is logged (WARNING, naming the record key and the reason) and counted through
``on_rejected(reason, name)``, and the name goes back to the last manifest of it the store
accepted whose chunks are all still there (so that a planted record does not even hide the
genuine state), or to no checkpoint. The store's writer of that manifest writes it again, so
that compaction, which keeps the last record of a key, keeps the genuine one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from stream_lstm.errors import CheckpointError, CheckpointRejected
from stream_lstm.state.signing import CheckpointSigner, seal, unseal
from stream_lstm.state.topic_chunks import join_chunks, manifest_chunk_keys, read_manifest

log = logging.getLogger(__name__)

#: Accepted manifests kept per name, the latest last, to fall back to when the latest is refused.
MANIFEST_HISTORY = 4


class RecordScreen:
    """The checks, signatures and fallbacks of one topic store (see the module doc).

    ``store`` describes the store in messages; ``signer`` signs what is written and checks what
    is read (``None``: no checkpoint key); ``on_rejected`` is told of every refused record.
    """

    def __init__(
        self,
        store: str,
        signer: CheckpointSigner | None = None,
        on_rejected: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.on_rejected = on_rejected
        self._history: dict[str, list[bytes]] = {}  # name -> accepted manifests, the latest last

    # ------------------------------------------------------------------ writing

    def sealed(self, data: bytes, name: str) -> bytes:
        """The bytes to store for checkpoint ``data`` of ``name`` (signed with a key)."""
        return seal(self.signer, data, name)

    def signed(self, manifest: dict[str, Any], name: str) -> dict[str, Any]:
        """``manifest`` of ``name`` as written (with its signature, with a key)."""
        return manifest if self.signer is None else self.signer.sign_manifest(manifest, name)

    # ------------------------------------------------------------------ reading

    def admits(self, name: str, manifest: bytes) -> bool:
        """Whether the manifest record ``manifest`` of ``name`` may enter the view; a refused one
        is logged and counted."""
        where = f"{name} in {self.store}"
        try:
            fields = read_manifest({name: manifest}, name, where)
            if self.signer is not None:
                self.signer.check_manifest(fields, name, where)
        except CheckpointError as error:
            self.reject(name, error)
            return False
        return True

    def accepted(self, name: str, manifest: bytes) -> None:
        """Note ``manifest`` of ``name`` as taken into the view."""
        history = self._history.setdefault(name, [])
        if not history or history[-1] != manifest:
            history.append(manifest)
            del history[:-MANIFEST_HISTORY]

    def forget(self, name: str) -> None:
        """``name`` was deleted (a tombstone of its manifest)."""
        self._history.pop(name, None)

    def payload(self, view: Mapping[str, bytes], name: str) -> bytes:
        """The checkpoint bytes the view's manifest of ``name`` names, joined and, with a key,
        verified: :class:`CheckpointError` if they cannot be had."""
        where = f"{name} in {self.store}"
        manifest = read_manifest(view, name, where)
        return unseal(self.signer, join_chunks(view, name, manifest, where), name, where)

    def reject(self, name: str, error: CheckpointError) -> None:
        """Log and count a refused record of ``name``."""
        reason = error.reason if isinstance(error, CheckpointRejected) else "damaged"
        log.warning("skipping checkpoint record %s in %s (%s): %s", name, self.store, reason, error)
        if self.on_rejected is not None:
            self.on_rejected(reason, name)

    def fall_back(self, view: MutableMapping[str, bytes], name: str) -> bool:
        """Replace the view's manifest of ``name``, which could not be loaded, with the latest
        accepted one before it whose chunks are all in the view; return whether there was one
        (else the name leaves the view)."""
        refused = view.pop(name)
        history = [manifest for manifest in self._history.get(name, []) if manifest != refused]
        self._history[name] = history
        while history:
            try:
                keys = manifest_chunk_keys(name, read_manifest({name: history[-1]}, name, name))
            except CheckpointError:
                keys = None
            if keys is not None and all(key in view for key in keys):
                view[name] = history[-1]
                log.warning("%s: falling back to an earlier checkpoint of %s", self.store, name)
                return True
            history.pop()
        return False
