"""Checkpoint and commit: flush every output, write the checkpoints, then commit their offsets.

:meth:`Checkpointer.checkpoint_and_commit` returns what happened as a
:class:`CheckpointOutcome` and changes nothing else of the service: the caller decides what a
failed publish leads to (a rollback now, a rollback requested from a rebalance callback, or
nothing while stopping).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from stream_lstm.errors import CheckpointError, ConfigError, StaleCheckpointError
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.kafka.interface import DeliveryPending, KafkaClient, KafkaIOError, Partition
from stream_lstm.service.health import Health
from stream_lstm.service.ledger import Ledger
from stream_lstm.service.publisher import Publisher
from stream_lstm.service.settings import ServiceSettings
from stream_lstm.state.directory_store import CheckpointStore, DirectoryStore, InstanceState, PartitionState
from stream_lstm.state.signing import CheckpointSigner, check_key
from stream_lstm.state.store import is_stale
from stream_lstm.telemetry.metrics import Telemetry

log = logging.getLogger(__name__)


class CheckpointOutcome(enum.Enum):
    """What a checkpoint and commit came to."""

    #: Checkpoints written and offsets committed (or nothing was due).
    DONE = "done"
    #: The broker has not acknowledged every output yet: nothing written; try again later.
    PENDING = "pending"
    #: Outputs were lost or refused, or partitions were taken over: the learner is ahead of what
    #: was published or is kept, and only going back to the last checkpoints makes them agree again.
    NEEDS_ROLLBACK = "needs rollback"
    #: The checkpoint store refused the write: nothing committed; try again later.
    FAILED = "failed"


def open_store(
    settings: ServiceSettings, on_rejected: Callable[[str, str], None] | None = None
) -> CheckpointStore:
    """The checkpoint store the settings name: a compacted topic, else a directory; signing
    with the checkpoint key, if any, and telling ``on_rejected`` of each checkpoint refused."""
    signer = checkpoint_signer(settings)
    if settings.checkpoint_topic:
        from stream_lstm.state.topic_store import KafkaTopicStore

        return KafkaTopicStore(
            settings.kafka.bootstrap_servers,
            settings.checkpoint_topic,
            client=settings.kafka.client,
            security=settings.kafka.security,
            signer=signer,
            on_rejected=on_rejected,
        )
    return DirectoryStore(settings.checkpoint_dir, signer=signer, on_rejected=on_rejected)


def checkpoint_signer(settings: ServiceSettings) -> CheckpointSigner | None:
    """The signer of the settings' checkpoint key (and previous key); ``None`` without a key."""
    if settings.checkpoint_key is None:
        if settings.checkpoint_previous_key is not None:
            raise ConfigError("--checkpoint-previous-key needs a --checkpoint-key to sign with")
        return None
    previous = settings.checkpoint_previous_key
    return CheckpointSigner(
        check_key(settings.checkpoint_key.reveal(), "--checkpoint-key"),
        [] if previous is None else [check_key(previous.reveal(), "--checkpoint-previous-key")],
    )


class Checkpointer:
    """Decides when a checkpoint is due, and writes it in the order that keeps delivery honest."""

    def __init__(
        self,
        store: CheckpointStore,
        settings: ServiceSettings,
        telemetry: Telemetry,
        ledger: Ledger,
        health: Health,
        *,
        instance_saved: bool,
    ) -> None:
        self.store = store
        self.settings = settings
        self.telemetry = telemetry
        self.ledger = ledger
        self.health = health
        #: Whether the store holds this instance's weights (a first checkpoint writes them).
        self.instance_saved = instance_saved
        #: Partitions whose checkpoint the store refused at the last save because a later owner
        #: wrote one: this instance lost them and must let them go (:meth:`take_lost`).
        self._taken_over: list[Partition] = []
        self._last_checkpoint = time.monotonic()

    def due(self, unflushed_bytes: int) -> bool:
        """Every ``checkpoint_every`` messages, ``checkpoint_interval_s`` seconds, or
        ``max_unflushed_bytes`` of output waiting for a flush."""
        since = self.ledger.since_checkpoint
        if since == 0:
            return False
        return (
            since >= self.settings.checkpoint_every
            or unflushed_bytes >= self.settings.max_unflushed_bytes
            or time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_interval_s
        )

    def checkpoint_and_commit(
        self,
        kafka: KafkaClient,
        evaluator: PrequentialEvaluator,
        publisher: Publisher,
        *,
        commit_offsets: bool = True,
        in_callback: bool = False,
        flush_timeout_s: float | None = None,
    ) -> CheckpointOutcome:
        """Flush, commit (exactly-once: the transaction), checkpoint, commit; first of all, find
        the partitions a later owner took over (:meth:`taken_over`): with any, nothing happens
        but a rollback (``NEEDS_ROLLBACK``), and :meth:`take_lost` names them."""
        ledger = self.ledger
        if ledger.since_checkpoint == 0 and self.instance_saved:
            if not in_callback:
                # Idle, yet a stale owner's write may have followed one of ours in a topic store
                # since our last checkpoint: read it now, so that ours is written again before
                # compaction keeps the stale one (at the latest, in the final checkpoint of a stop).
                self.refresh_store()
            return CheckpointOutcome.DONE
        offsets = ledger.offsets()
        committed = ledger.offsets_to_commit(offsets)
        self._taken_over = self.taken_over()
        if self._taken_over:
            # Their later owner resumed from our last checkpoint of them and learns what came
            # since: writing nothing and going back to our last checkpoints keeps it learned once.
            return CheckpointOutcome.NEEDS_ROLLBACK
        try:
            kafka.flush(flush_timeout_s if flush_timeout_s is not None else self.settings.flush_timeout_s)
            if self.settings.kafka.exactly_once:
                kafka.commit(committed)  # the transaction: predictions and offsets together
        except DeliveryPending as error:
            self.health.set_connected(False, str(error))
            return CheckpointOutcome.PENDING
        except KafkaIOError as error:
            publisher.note_failure(error)
            return CheckpointOutcome.NEEDS_ROLLBACK
        started = time.perf_counter()
        try:
            self.save(evaluator)
        except CheckpointError as error:
            self.telemetry.checkpoints.labels(result="failed").inc()
            log.error("%s", error)
            self.health.checkpoint_error = str(error)
            return CheckpointOutcome.FAILED
        self.health.checkpoint_error = None
        self.telemetry.stage.labels(stage="checkpoint").observe(time.perf_counter() - started)
        self.telemetry.checkpoint_written(time.time())
        ledger.checkpointed(offsets)
        publisher.unflushed_bytes = 0
        self._last_checkpoint = time.monotonic()
        publisher.refused.forget(ledger.owned, offsets)
        if not in_callback:
            self.refresh_store()
        if commit_offsets and not self.settings.kafka.exactly_once:
            committed = {p: offset for p, offset in committed.items() if p not in self._taken_over}
            try:
                kafka.commit(committed)
            except KafkaIOError as error:
                # The checkpoints hold the offsets; the group's copy only lags behind.
                log.warning("offset commit failed (the checkpoints have them): %s", error)
                return CheckpointOutcome.DONE
        self.health.set_connected(True)
        return CheckpointOutcome.DONE

    def taken_over(self) -> list[Partition]:
        """The changed partitions whose stored checkpoint a later owner wrote (each logged).

        Checked before anything is written: the weights learned their events since our last
        checkpoint of them, so the instance checkpoint must not be written with them. (A takeover
        between this check and the write is refused by the store: see :meth:`save`.)
        """
        changed = [partition for partition, progress in self.ledger.progress.items() if progress.dirty]
        if not changed:
            return []
        try:
            epochs = self.store.stored_epochs(changed)
        except CheckpointError as error:
            log.warning("%s", error)  # the writes check again
            return []
        taken = []
        for partition in changed:
            stored, ours = epochs.get(partition), self.ledger.epochs.get(partition, 0)
            if is_stale(ours, stored):
                log.warning(
                    "partition %s:%d not written: a later owner wrote epoch %d (ours: %d); the "
                    "partition was taken over: letting it go, back to the last checkpoints",
                    *partition,
                    stored,
                    ours,
                )
                taken.append(partition)
        return taken

    def take_lost(self) -> list[Partition]:
        """The partitions the last checkpoint found taken over by a later owner (once)."""
        lost, self._taken_over = self._taken_over, []
        return lost

    def save(self, evaluator: PrequentialEvaluator) -> None:
        """Write every changed partition's checkpoint, then this instance's weights.

        A partition whose checkpoint the store refuses as stale is skipped and noted for
        :meth:`take_lost`: a later owner has it, and this instance must not write it again.
        """
        progress_of = self.ledger.progress
        instance_id = self.settings.instance_id
        for partition in [p for p, progress in progress_of.items() if progress.dirty]:
            progress = progress_of[partition]
            key_state = evaluator.export_keys(sorted(progress.keys))
            progress.keys = evaluator.held_keys(progress.keys)
            try:
                self.store.save_partition(
                    PartitionState(
                        topic=partition[0],
                        partition=partition[1],
                        offset=progress.offset,
                        events=progress.events,
                        dead_letters=progress.dead_letters,
                        keys=sorted(progress.keys),
                        key_state=key_state,
                        instance=instance_id,
                        epoch=self.ledger.epochs.get(partition, 0),
                    )
                )
            except StaleCheckpointError as error:
                log.warning("%s: letting it go", error)
                self._taken_over.append(partition)
            progress.dirty = False
        with evaluator.keys_set_aside():
            self.store.save_instance(InstanceState(evaluator=evaluator, instance=instance_id))
        self.instance_saved = True

    def refresh_store(self) -> None:
        """Read what other instances wrote to the store since the last time (a topic store), so
        that taking a partition over in a rebalance callback has little left to read."""
        try:
            self.store.refresh()
        except CheckpointError as error:
            log.warning("%s", error)  # the next load reads it, or fails with the reason
