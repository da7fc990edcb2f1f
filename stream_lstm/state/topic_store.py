"""The checkpoint store as a compacted Kafka topic: scale out with no shared disk.

:class:`KafkaTopicStore` keeps the same checkpoints as
:class:`~stream_lstm.state.directory_store.DirectoryStore` (per partition: offset, counts, key states;
per instance: weights, optimizer, baselines, scores) in one single-partition topic with
``cleanup.policy=compact``, so the instances of a group only need the Kafka cluster they already
use. A checkpoint can be larger than a Kafka message (1 MB by default), so it is written as
(the format: :mod:`stream_lstm.state.topic_chunks`):

* chunks, keyed ``NAME@VERSION/I``, of at most ``chunk_bytes`` each, then
* once every chunk is acknowledged, a manifest keyed ``NAME`` (JSON: version, chunk count, size,
  SHA-256, time written), then
* tombstones for the chunks of the version that manifest replaced and of this store's own
  earlier attempts, which compaction then removes. Versions another writer of the same name may
  still be naming (a partition's old owner still saving it) are left alone, so the last manifest
  written always finds its chunks.

``NAME`` is ``instances/INSTANCE_ID`` or ``partitions/TOPIC/PARTITION``. A reader takes the
latest manifest and the chunks of its version, and checks the hash, and then, as the directory
store does, that the state holds no non-finite values (nor is such a state ever written). A writer
that dies before its manifest leaves the previous version readable; so, like the directory store,
a crash leaves the old or the new version of each checkpoint, never a torn one. A failed write of
a live store is cleaned up by its next write. The chunks of a writer that died, or that stopped
writing a name (a partition moved to another instance), are orphans: no manifest names their
version. Every store sweeps them, at most every ``ORPHAN_SWEEP_INTERVAL_S``, when
:meth:`KafkaTopicStore.refresh` runs. It tombstones orphaned chunks once they are
``orphan_grace_s`` old (an hour by default), far longer than any writer takes between its chunks
and its manifest.

A record that is not a checkpoint (or, with a checkpoint key, is not signed by it) never stops a
reader: it is skipped, logged and counted, and the last valid checkpoint of its name stays
(:mod:`stream_lstm.state.topic_screen`).

Readers keep an in-memory view of the topic (latest value per key) and bring it up to date
before each load, reading only what is new; ``latest=False`` loads answer from the view alone
(a rollback, which must not need the broker). Unlike the directory store, this store cannot lock an
instance id: give each running instance its own (the default, the host name, is unique per
container); with ``--exactly-once`` the transactional id fences a second process with the same id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from stream_lstm.errors import CheckpointError
from stream_lstm.kafka.interface import Partition
from stream_lstm.kafka.security import PLAINTEXT, KafkaSecurity
from stream_lstm.state.checkpoint import decode_checkpoint, encode_checkpoint
from stream_lstm.state.finite_check import check_finite, checked_state
from stream_lstm.state.signing import CheckpointSigner
from stream_lstm.state.store import InstanceState, PartitionState, check_instance_id, check_not_stale
from stream_lstm.state.store_log import StoreLog, StoreLogError, StoreRecord
from stream_lstm.state.store_log_choice import open_store_log
from stream_lstm.state.topic_chunks import (
    DEFAULT_CHUNK_BYTES,
    chunk_key,
    chunk_owner,
    instance_name,
    is_manifest_key,
    manifest_chunk_keys,
    manifest_epoch,
    new_manifest,
    orphaned_chunks,
    partition_name,
    read_manifest,
    split_into_chunks,
)
from stream_lstm.state.topic_screen import RecordScreen

log = logging.getLogger(__name__)

#: Seconds between two sweeps for orphaned chunks (see the module doc).
ORPHAN_SWEEP_INTERVAL_S = 600.0


class KafkaTopicStore:
    """Checkpoints in a compacted Kafka topic (see the module doc); the interface of
    :class:`~stream_lstm.state.directory_store.DirectoryStore`.

    Over 300 lines because the store's view of the topic, its chunked writes and the orphan
    sweep all read and change one view with one consumer and one producer; the record format
    (keys, manifests, chunks) is apart, in :mod:`stream_lstm.state.topic_chunks`, and what is
    done with records that are not checkpoints, in :mod:`stream_lstm.state.topic_screen`.

    Parameters
    ----------
    bootstrap_servers
        The Kafka cluster, ``host:port[,host:port...]``.
    topic
        The store's topic; created (one partition, compacted) when missing.
    chunk_bytes
        The largest record value written; a checkpoint is cut into chunks of this size.
    timeout_s
        How long one write or one catch-up read may take before it fails.
    connect_timeout_s
        How long to keep trying to reach the cluster at start (it may still be starting).
    orphan_grace_s
        How old chunks that no manifest names must be before a sweep tombstones them.
    signer, on_rejected
        Sign what is written and refuse what its keys did not sign (``None``: no checkpoint key);
        told ``(reason, name)`` of every record refused (:mod:`stream_lstm.state.topic_screen`).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 120.0,
        orphan_grace_s: float = 3600.0,
        client: str = "kafka-python",
        security: KafkaSecurity = PLAINTEXT,
        signer: CheckpointSigner | None = None,
        on_rejected: Callable[[str, str], None] | None = None,
    ) -> None:
        if chunk_bytes < 1:
            raise CheckpointError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.client = client
        self.security = security
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        self.root = None  # no directory (the service looks for stream-lstm 0.1's file in one)
        self._latest: dict[str, bytes] = {}  # record key -> latest value seen in the topic
        # Per name, the chunk keys this store wrote or tried to write and has not tombstoned yet.
        self._own_chunks: dict[str, set[str]] = {}
        #: Names whose manifest a stale one followed in the topic (see :meth:`refresh`), and
        #: the last stale manifest of each, whose chunks the orphan sweep leaves alone.
        self._overtaken: set[str] = set()
        self._ignored_manifests: dict[str, bytes] = {}
        self._screen = RecordScreen(self.describe(), signer, on_rejected)
        self.orphan_grace_s = orphan_grace_s
        self._chunk_written_at: dict[str, float] = {}  # chunk key -> its record's time, Unix seconds
        self._next_orphan_sweep = 0.0  # time.monotonic()
        deadline = time.monotonic() + connect_timeout_s
        while True:
            attempt_timeout_s = max(deadline - time.monotonic(), 1.0)
            try:
                self._log: StoreLog = open_store_log(
                    bootstrap_servers,
                    topic,
                    client=client,
                    security=security,
                    chunk_bytes=chunk_bytes,
                    timeout_s=timeout_s,
                    connect_timeout_s=min(attempt_timeout_s, timeout_s),
                )
                break
            except StoreLogError as error:
                if time.monotonic() + 2.0 > deadline:
                    raise CheckpointError(
                        f"cannot open the checkpoint topic {topic!r} on {bootstrap_servers}: {error}"
                    ) from error
                log.warning("checkpoint topic %s: %s; retrying", topic, error)
                time.sleep(2.0)

    def describe(self) -> str:
        return f"Kafka topic {self.topic} on {self.bootstrap_servers}"

    def close(self) -> None:
        """Close the store's producer and consumer."""
        self._log.close(self.timeout_s)

    # ------------------------------------------------------------------ instances

    def lock_instance(self, instance_id: str) -> None:
        """Check the id; a topic cannot hold a lock (see the module doc)."""
        check_instance_id(instance_id)

    def unlock_instance(self, instance_id: str) -> None:
        """Nothing to release."""

    def load_instance(self, instance_id: str, *, latest: bool = True) -> InstanceState | None:
        """This instance's last checkpoint, or ``None`` if it has none.

        ``latest=False`` answers from the view without reading the topic (see the protocol).
        """
        return self._load(instance_name(instance_id), InstanceState, catch_up=latest)

    def has_instance(self, instance_id: str) -> bool:
        """Whether ``instance_id`` has a checkpoint."""
        self._catch_up()
        return instance_name(instance_id) in self._latest

    def newest_other_instance(self, instance_id: str, *, latest: bool = True) -> InstanceState | None:
        """The most recently written checkpoint of another instance (to warm-start a new one)."""
        if latest:
            self._catch_up()
        own = instance_name(instance_id)
        candidates = []
        for name in self._latest:
            if name.startswith("instances/") and is_manifest_key(name) and name != own:
                try:
                    candidates.append((self._manifest(name)["written"], name))
                except CheckpointError as error:
                    log.warning("skipping %s in %s: %s", name, self.describe(), error)
        for _, name in sorted(candidates, reverse=True):
            state = self._load(name, InstanceState, catch_up=False)
            if state is not None:
                return state
        return None

    def save_instance(self, state: InstanceState) -> int:
        """Write an instance's checkpoint; return its size in bytes."""
        return self._save(instance_name(state.instance), state)

    # ------------------------------------------------------------------ partitions

    def load_partition(self, partition: Partition, *, latest: bool = True) -> PartitionState | None:
        """The partition's last checkpoint, or ``None`` if nobody has written one."""
        return self._load(partition_name(partition), PartitionState, catch_up=latest)

    def save_partition(self, state: PartitionState) -> int:
        """Write a partition's checkpoint; return its size in bytes.

        Raises :class:`StaleCheckpointError` when the topic holds a checkpoint of the partition
        with a later epoch, read just before the write. A stale write that slips in between is
        still ignored by every reader that has read the later one (see :meth:`_catch_up`).
        """
        name = partition_name((state.topic, state.partition))
        where = f"{name} in {self.describe()}"
        check_finite(state, where, saving=True)  # a poisoned state costs no broker call
        self._catch_up()
        check_not_stale(state, self._latest_epoch(name), where)
        return self._save(name, state, epoch=state.epoch, checked=True)

    def stored_epochs(self, partitions: Iterable[Partition]) -> dict[Partition, int | None]:
        """The epoch of each partition's latest checkpoint in the topic (read up to now; one
        catch-up for all), or ``None``."""
        self._catch_up()
        return {partition: self._latest_epoch(partition_name(partition)) for partition in partitions}

    def _latest_epoch(self, name: str) -> int | None:
        return manifest_epoch(self._latest[name]) if name in self._latest else None

    def partitions(self) -> list[Partition]:
        """Every partition with a checkpoint in the store."""
        self._catch_up()
        found = []
        for name in self._latest:
            if name.startswith("partitions/") and is_manifest_key(name):
                topic, _, number = name[len("partitions/") :].rpartition("/")
                if topic and number.isdigit():  # anything else is no name this store writes
                    found.append((topic, int(number)))
        return sorted(found)

    # ------------------------------------------------------------------ reading

    def refresh(self) -> None:
        """Read what was written since the last read (the service calls this after each
        checkpoint, so that a partition taken over in a rebalance has little left to read), and
        sweep for orphaned chunks if the last sweep is ``ORPHAN_SWEEP_INTERVAL_S`` old."""
        self._catch_up()
        self._rewrite_overtaken()
        if time.monotonic() >= self._next_orphan_sweep:
            self._next_orphan_sweep = time.monotonic() + ORPHAN_SWEEP_INTERVAL_S
            self.collect_orphans()

    def collect_orphans(self) -> int:
        """Tombstone the chunks that no manifest names and that are ``orphan_grace_s`` old;
        return how many. Names whose manifest cannot be read are left alone."""
        orphans = orphaned_chunks(
            self._latest,
            self._chunk_written_at,
            self.describe(),
            now=time.time(),
            grace_s=self.orphan_grace_s,
        )
        kept: set[str] = set()
        for name, manifest in self._ignored_manifests.items():
            with contextlib.suppress(CheckpointError):
                kept |= manifest_chunk_keys(name, read_manifest({name: manifest}, name, name))
        orphans = [key for key in orphans if key not in kept]
        if orphans:
            self._send([(key, None) for key in sorted(orphans)], "orphaned chunks")
            for key in orphans:
                self._forget_chunk(key)
            log.info("%s: tombstoned %d orphaned checkpoint chunks", self.describe(), len(orphans))
        return len(orphans)

    def _forget_chunk(self, key: str) -> None:
        self._latest.pop(key, None)
        self._chunk_written_at.pop(key, None)
        own = self._own_chunks.get(chunk_owner(key))
        if own is not None:
            own.discard(key)

    def _load(self, name: str, kind: type, *, catch_up: bool = True) -> Any:
        """The ``kind`` the view's manifest of ``name`` names, verified before it is decoded; if
        it cannot be loaded, the last accepted one before it that can, else ``None``."""
        if catch_up:
            self._catch_up()
        where = f"{name} in {self.describe()}"
        while name in self._latest:
            try:
                data = self._screen.payload(self._latest, name)
                return checked_state(decode_checkpoint(data, where), kind, where)
            except CheckpointError as error:  # CheckpointRejected too: skipped, never fatal
                self._screen.reject(name, error)
                if self._screen.fall_back(self._latest, name):
                    self._overtaken.add(name)  # its writer, if this store, writes it again
        return None

    def _manifest(self, name: str) -> dict[str, Any]:
        return read_manifest(self._latest, name, f"{name} in {self.describe()}")

    def _catch_up(self) -> None:
        """Read what was written to the topic since the last read (by any instance)."""
        deadline = time.monotonic() + self.timeout_s
        try:
            end = self._log.end_offset()
            if self._log.position() >= end:
                return  # nothing new: a poll would only wait out its timeout
            while True:
                records = self._log.poll(0.1)
                if records:
                    deadline = time.monotonic() + self.timeout_s  # a long backlog is fine while it moves
                for record in records:
                    self._take(record)
                if self._log.position() >= end and not records:
                    return  # at the end, and nothing was left in the fetch buffer
                if time.monotonic() > deadline:
                    raise CheckpointError(
                        f"cannot read {self.describe()} to its end: nothing new for {self.timeout_s:g} s "
                        f"(at offset {self._log.position()} of {end})"
                    )
        except StoreLogError as error:
            raise CheckpointError(f"cannot read {self.describe()}: {error}") from error

    def _take(self, record: StoreRecord) -> None:
        """Bring the view up to date with one record of the topic."""
        try:
            key = record.key.decode() if record.key is not None else None
        except UnicodeDecodeError:
            key = None
        if key is None:
            log.warning("ignoring a record without a readable key in %s", self.describe())
            return
        if record.value is None:
            self._latest.pop(key, None)
            self._chunk_written_at.pop(key, None)
            self._screen.forget(key)
        elif is_manifest_key(key) and not self._screen.admits(key, record.value):
            if key in self._latest:  # so that compaction keeps the valid one
                self._overtaken.add(key)
        elif is_manifest_key(key) and self._is_stale(key, record.value):
            log.warning("ignoring a stale checkpoint of %s in %s", key, self.describe())
            self._overtaken.add(key)
            # Its chunks are not orphans: should its writer's rewrite never come,
            # compaction keeps this manifest, and it must find them.
            self._ignored_manifests[key] = record.value
        else:
            if is_manifest_key(key):  # a later manifest than the ignored one
                self._ignored_manifests.pop(key, None)
                self._screen.accepted(key, record.value)
            self._latest[key] = record.value
            if not is_manifest_key(key):
                written = record.timestamp_ms / 1000 if record.timestamp_ms >= 0 else time.time()
                self._chunk_written_at.setdefault(key, written)

    # ------------------------------------------------------------------ writing

    def _save(self, name: str, state: Any, epoch: int = 0, *, checked: bool = False) -> int:
        # Nothing is sent for a state with non-finite values: the previous version stays live.
        if not checked:
            check_finite(state, f"{name} in {self.describe()}", saving=True)
        data = self._screen.sealed(encode_checkpoint(state), name)
        version = uuid.uuid4().hex
        chunks = split_into_chunks(data, self.chunk_bytes)
        # What this write replaces: the version the view's manifest names, and every chunk this
        # store wrote or tried to write before (a failed write's included). Versions only seen in
        # the view are left alone: another writer of the same name (a partition's old owner still
        # saving it, say) may be writing one that its manifest will name next.
        own = self._own_chunks.setdefault(name, set())
        stale = set(own)
        if name in self._latest:
            try:
                replaced = self._manifest(name)
            except CheckpointError:
                pass  # an unreadable manifest: nothing to tell which chunks were its
            else:
                held_epoch = manifest_epoch(self._latest[name])
                if held_epoch is None or held_epoch <= epoch:  # never a later owner's chunks
                    stale.update(manifest_chunk_keys(name, replaced))
        manifest = self._screen.signed(new_manifest(data, len(chunks), version, epoch), name)
        written = [(chunk_key(name, version, i), chunk) for i, chunk in enumerate(chunks)]
        own.update(key for key, _ in written)
        self._send(written, name)
        # The view takes each step once it is acknowledged; the consumer reads the same records
        # again later, which changes nothing.
        self._latest.update(written)
        self._chunk_written_at.update((key, time.time()) for key, _ in written)
        manifest_value = json.dumps(manifest).encode()
        self._send([(name, manifest_value)], name)  # only now is the new version live
        self._latest[name] = manifest_value
        self._screen.accepted(name, manifest_value)
        stale.difference_update(key for key, _ in written)
        self._send([(key, None) for key in sorted(stale)], name)
        for key in stale:
            self._forget_chunk(key)
        own.intersection_update(key for key, _ in written)
        return len(data)

    def _rewrite_overtaken(self) -> None:
        """Write again each manifest of this store's that a stale one followed in the topic.

        Compaction keeps the last record of a key, which would be the stale one: readers that
        start after it would take that. Only the writer of the later manifest rewrites it (its
        chunks are its own and still live); anyone else's copy could be older than its writer's
        newest.
        """
        for name in sorted(self._overtaken):
            self._overtaken.discard(name)
            held = self._latest.get(name)
            if held is None:
                continue
            try:
                ours = manifest_chunk_keys(
                    name, read_manifest(self._latest, name, name)
                ) <= self._own_chunks.get(name, set())
            except CheckpointError:
                continue
            if ours:
                self._send([(name, held)], name)

    def _is_stale(self, name: str, manifest: bytes) -> bool:
        """Whether ``manifest`` of ``name`` has an earlier epoch than the one in the view: a
        writer that lost the partition wrote it after its next owner's (a race the check before
        each write narrows, but a topic cannot close). A manifest without an epoch (a version
        before epochs, during an upgrade) is never taken for stale."""
        held = self._latest.get(name)
        new_epoch = manifest_epoch(manifest)
        held_epoch = manifest_epoch(held) if held is not None else None
        return new_epoch is not None and held_epoch is not None and new_epoch < held_epoch

    def _send(self, records: list[tuple[str, bytes | None]], name: str) -> None:
        """Produce ``records`` and wait until the broker acknowledged every one."""
        if not records:
            return
        try:
            self._log.send([(key.encode(), value) for key, value in records], self.timeout_s)
        except StoreLogError as error:
            raise CheckpointError(f"cannot write checkpoint {name} to {self.describe()}: {error}") from error
