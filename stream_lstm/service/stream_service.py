"""The streaming service: poll, decode, predict, produce, score, learn, checkpoint, commit.

This is where the learner and Kafka meet, and it sees neither torch nor a Kafka client library:
models come through :class:`~stream_lstm.evaluation.prequential.PrequentialEvaluator`, Kafka
through :class:`~stream_lstm.kafka.interface.KafkaClient` (kafka-python or confluent-kafka).
:class:`StreamService` is the lifecycle and the loop; each job is a part of its own:

* :mod:`~stream_lstm.service.batch_stage`: a poll through the data path; the batch in flight;
* :mod:`~stream_lstm.service.publisher`: predictions, dead letters, records refused for good;
* :mod:`~stream_lstm.service.ledger`: owned partitions, their offsets and phases;
* :mod:`~stream_lstm.service.checkpointer`: flush, checkpoint, commit, with an explicit outcome;
* :mod:`~stream_lstm.service.recovery`: the learner and partitions from the store; seeks;
* :mod:`~stream_lstm.service.health` and :mod:`~stream_lstm.service.reporting`: /healthz, metrics.

Delivery semantics (docs/delivery.md): outputs are flushed before each checkpoint, and offsets
are committed only after it is written; a failed publish rolls back to the last checkpoint.

States (:class:`ServiceState`; docs/architecture.md has the partitions' phases too):

==================  ===========================================  ====================
state               left by                                      to
==================  ===========================================  ====================
CONNECTING          the client connects                          RUNNING
CONNECTING          :meth:`stop`                                 STOPPED
RUNNING             a publish fails in a rebalance callback      ROLLBACK_REQUESTED
RUNNING             a partition's checkpoint cannot be read;     FAILED
                    the learner process dies
RUNNING             :meth:`stop`                                 STOPPING
ROLLBACK_REQUESTED  the next step rolls back                     RUNNING
ROLLBACK_REQUESTED  :meth:`stop` (no final checkpoint)           STOPPING
STOPPING            the final checkpoint (if any) and close      STOPPED
FAILED              close, without a checkpoint; run() raises    STOPPED
==================  ===========================================  ====================

A failed publish in the loop itself rolls back at once (RUNNING stays RUNNING).

Over 450 lines, with the state table above and the rebalance callbacks: see :class:`StreamService`
for why the callbacks stay with the lifecycle.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from stream_lstm.errors import CheckpointError, ConfigError
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.kafka.connect import open_kafka
from stream_lstm.kafka.interface import KafkaClient, KafkaIOError, Message, Partition
from stream_lstm.learner.process import LearnerProcess
from stream_lstm.service.batch_stage import Batch, BatchStage
from stream_lstm.service.checkpointer import Checkpointer, CheckpointOutcome, open_store
from stream_lstm.service.connection_watch import ConnectionWatch
from stream_lstm.service.health import Health
from stream_lstm.service.ledger import Ledger
from stream_lstm.service.publisher import Publisher, RefusedOutputs
from stream_lstm.service.recovery import Recovery
from stream_lstm.service.reporting import Reporter, learner_info
from stream_lstm.service.settings import ServiceSettings
from stream_lstm.state.store import CheckpointStore
from stream_lstm.telemetry.metrics import Telemetry

__all__ = ["ServiceSettings", "ServiceState", "StreamService"]

log = logging.getLogger(__name__)


class ServiceState(enum.Enum):
    """Where the service stands (see the table in this module's docstring)."""

    CONNECTING = "connecting"
    RUNNING = "running"
    ROLLBACK_REQUESTED = "rollback requested"
    STOPPING = "stopping"
    FAILED = "failed"
    STOPPED = "stopped"


class StreamService:
    """Runs the loop until :meth:`stop` is called (from a signal handler, say).

    Over 300 lines because the rebalance callbacks stay with the lifecycle: inside ``poll()`` a
    callback settles the batch in flight, checkpoints and releases partitions as one step, and
    decides between a rollback now and a rollback requested, which only the service can weigh.

    ``new_evaluator`` builds a fresh evaluator when there is no checkpoint; ``kafka_factory``
    builds the Kafka client; ``store`` is the checkpoint store, by default the one the settings
    name (tests pass a scripted client and a store in memory, see :mod:`stream_lstm.testing`);
    ``connection_watch`` names the cause when the client cannot connect.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        new_evaluator: Callable[[], PrequentialEvaluator],
        telemetry: Telemetry,
        kafka_factory: Callable[..., KafkaClient] = open_kafka,
        store: CheckpointStore | None = None,
        connection_watch: ConnectionWatch | None = None,
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.kafka_factory = kafka_factory
        self.instance_id = settings.instance_id
        self.store = store if store is not None else open_store(settings, telemetry.checkpoint_rejected)
        self.ledger = Ledger()
        self.recovery = Recovery(self.store, settings, self.ledger, new_evaluator)
        try:
            self.store.lock_instance(self.instance_id)
            self.evaluator = self.recovery.load_placed_evaluator()
            instance_saved = self.store.has_instance(self.instance_id)
        except Exception:
            self.recovery.close_learner_process()
            self.store.close()
            raise
        self.health_state = Health(settings.kafka.bootstrap_servers, telemetry, connection_watch)
        self.checkpointer = Checkpointer(
            self.store, settings, telemetry, self.ledger, self.health_state, instance_saved=instance_saved
        )
        self.reporter = Reporter(settings, telemetry, self.evaluator)
        self.refused = RefusedOutputs()
        self.kafka: KafkaClient | None = None
        self.publisher: Publisher | None = None
        self.stage: BatchStage | None = None
        self._stop = threading.Event()
        self._fatal: str | None = None  # a reason to stop that a restart would not fix
        self._rollback_requested = False
        self._stopped = False

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> ServiceState:
        """The service's state now."""
        if self._stopped:
            return ServiceState.STOPPED
        if self._fatal is not None:
            return ServiceState.FAILED
        if self.stopping:
            return ServiceState.STOPPING
        if self.kafka is None:
            return ServiceState.CONNECTING
        if self._rollback_requested:
            return ServiceState.ROLLBACK_REQUESTED
        return ServiceState.RUNNING

    @property
    def in_flight(self) -> Batch | None:
        """The batch whose LSTM predictions are on their way, if any."""
        return self.stage.in_flight if self.stage is not None else None

    @property
    def learner_process(self) -> LearnerProcess | None:
        """The process the trained model runs in, with ``learner_process``."""
        return self.recovery.learner_process

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, checkpoint, commit and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Connect (retrying while the broker is unreachable), then process until stopped."""
        backoff = _Backoff()
        while not self.stopping and self.kafka is None:
            try:
                kafka = self.kafka_factory(
                    self.settings.kafka,
                    on_assigned=self._on_assigned,
                    on_revoked=self._on_revoked,
                    on_lost=self._on_lost,
                )
            except ConfigError:
                raise  # a setting the client refuses: retrying cannot help
            except Exception as error:  # kafka-python raises several types for "no broker"
                self.health_state.set_connected(
                    False, f"cannot connect to {self.settings.kafka.bootstrap_servers}: {error}"
                )
                self._stop.wait(backoff.next())
            else:
                self._connected(kafka)
        if self.kafka is None:
            self._close()
            return
        self.health_state.set_connected(True)
        self.telemetry.learner_info.info(self.learner_info())
        failed = True
        try:
            while not self.stopping:
                self._step(backoff)
            failed = self._fatal is not None
        finally:
            # After an unexpected error or a fatal one, the state in memory may be half-updated:
            # keep the last good checkpoint rather than overwrite it.
            self._shutdown(checkpoint=not failed)
        if self._fatal is not None:
            raise CheckpointError(self._fatal)

    def _connected(self, kafka: KafkaClient) -> None:
        self.kafka = kafka
        self.publisher = Publisher(kafka, self.settings, self.telemetry, self.health_state, self.refused)
        self.stage = BatchStage(self.settings, self.telemetry, self.ledger, self.publisher)

    def _step(self, backoff: _Backoff) -> None:
        """One poll: catch up on what the last one left (a rollback, seeks, committed offsets),
        take the messages through the data path, checkpoint when due, publish metrics."""
        kafka, stage = self.kafka, self.stage
        assert kafka is not None and stage is not None
        messages = self._poll(kafka, stage, backoff)
        if messages is None:
            return
        try:
            stage.process(messages, self.evaluator)
            # Decided once: a checkpoint falling due between two looks would find a batch in flight.
            checkpoint_due = self.checkpointer.due(self._publisher.unflushed_bytes)
            if checkpoint_due:
                stage.settle(self.evaluator)
        except KafkaIOError as error:
            broker_failed = self._publisher.note_failure(error)
            self._rollback()
            if broker_failed:
                self._stop.wait(backoff.next())
            return
        self.health_state.probe(kafka)
        if checkpoint_due:
            outcome = self._checkpoint_and_commit()
            if outcome is CheckpointOutcome.DONE:
                backoff.reset()
            else:
                if outcome is CheckpointOutcome.NEEDS_ROLLBACK and not self.stopping:
                    self._rollback()  # stopping: the next start goes back to the last checkpoint
                self._stop.wait(backoff.next())
        self.reporter.publish(self.evaluator, kafka)

    def _poll(self, kafka: KafkaClient, stage: BatchStage, backoff: _Backoff) -> list[Message] | None:
        """The next messages to process, or None when this step has nothing more to do."""
        try:
            # With a batch in flight, take what the client holds already rather than wait for more.
            timeout_s = 0.0 if stage.in_flight is not None else self.settings.poll_timeout_s
            messages = kafka.poll(self.settings.batch_size, timeout_s)
        except Exception as error:  # the loop must survive whatever the client throws
            self.health_state.set_connected(False, f"poll failed: {error}")
            self._stop.wait(backoff.next())
            return None
        if self._fatal is not None:
            return None  # stopping: nothing from this poll is processed
        if self._rollback_requested:
            self._rollback()
            return None
        rewinding = self.ledger.waiting_for_seek()
        if rewinding:
            self.recovery.seek_pending(kafka)
            # What this poll returned for them came from before the rewind: it is read again.
            messages = [m for m in messages if (m.topic, m.partition) not in rewinding]
        if self.ledger.unchecked():
            try:
                self.recovery.check_committed_offsets(kafka)
            except Exception as error:
                self.health_state.set_connected(False, f"reading committed offsets failed: {error}")
                self._rollback()
                self._stop.wait(backoff.next())
                return None
        return messages

    @property
    def _publisher(self) -> Publisher:
        assert self.publisher is not None
        return self.publisher

    def _checkpoint_and_commit(self, **options: Any) -> CheckpointOutcome:
        """:meth:`Checkpointer.checkpoint_and_commit`, unless a rollback must come first."""
        assert self.kafka is not None
        if self.in_flight is not None:
            raise RuntimeError("a checkpoint with a batch in flight: settle it first")
        if self._rollback_requested:
            return CheckpointOutcome.NEEDS_ROLLBACK  # the learner may be ahead of the offsets
        outcome = self.checkpointer.checkpoint_and_commit(
            self.kafka, self.evaluator, self._publisher, **options
        )
        lost = self.checkpointer.take_lost()
        if lost:
            # A later owner checkpointed them: the group gave them away while this instance was
            # not looking (frozen, say). Its poll will say so; until then their messages are not
            # handled, as after a lost session.
            self._on_lost(lost)
        return outcome

    def _shutdown(self, *, checkpoint: bool = True) -> None:
        assert self.kafka is not None
        try:
            self._final_checkpoint(checkpoint)
        finally:
            try:
                self.kafka.close(timeout_s=1.0)
            except Exception as error:
                log.warning("closing the Kafka client: %s", error)
            self.kafka = None
            self._close()

    def _close(self) -> None:
        self.recovery.close_learner_process()
        self.store.close()
        self._stopped = True

    def _final_checkpoint(self, checkpoint: bool) -> None:
        stage = self.stage
        assert stage is not None
        if self._rollback_requested:
            checkpoint = False  # what is in memory is what a rollback would have thrown away
        if checkpoint:
            try:
                stage.settle(self.evaluator)
            except KafkaIOError as error:
                log.warning("publishing the last batch failed: %s", error)
                checkpoint = False
        stage.drop()
        if not checkpoint:
            log.warning("stopping without a final checkpoint; the next start resumes from the last one")
            return
        log.info("stopping: flushing, checkpointing and committing")
        # SIGTERM promises an exit within 10 s: with the broker away, give up on the flush early.
        # A failed publish needs no rollback now: the next start goes back to the last checkpoint.
        flush_timeout_s = min(self.settings.flush_timeout_s, 5.0)
        if self._checkpoint_and_commit(flush_timeout_s=flush_timeout_s) is not CheckpointOutcome.DONE:
            log.warning("final checkpoint failed; the next start resumes from the previous one")

    def _fail(self, reason: str) -> None:
        """Stop without writing checkpoints, and exit with an error."""
        if self._fatal is None:
            log.error("%s", reason)
            self._fatal = reason
        self._stop.set()

    # ------------------------------------------------------------------ rollback

    def _rollback(self) -> None:
        """Go back to the last checkpoints: this instance's weights, and every owned partition."""
        kafka, stage = self.kafka, self.stage
        assert kafka is not None and stage is not None
        log.warning("rolling back to the last checkpoint; events since then will be processed again")
        try:
            kafka.abort()
        except Exception as error:
            log.debug("aborting the transaction: %s", error)
        try:
            kafka.reset_producer()
        except Exception as error:  # the next failure rolls back again and retries this
            log.warning("recreating the producer failed: %s", error)
        # Only this instance's own last checkpoints are needed, which a store already holds: a
        # rollback must not depend on a broker that may be the reason for it.
        stage.drop()  # its events are read again
        self.evaluator = self.recovery.load_placed_evaluator(latest=False)
        self.ledger.rolled_back()
        self.reporter.reset(self.evaluator)
        self._rollback_requested = False
        self._publisher.unflushed_bytes = 0  # the producer was reset: what it held is gone
        for partition in sorted(self.ledger.owned):
            self._restore_partition(partition, latest=False)
        self.ledger.rewind_needed(self.ledger.owned)
        self.recovery.seek_pending(kafka)

    def _restore_partition(self, partition: Partition, *, latest: bool = True) -> None:
        reason = self.recovery.restore_partition(partition, self.evaluator, latest=latest)
        if reason is not None:
            self._fail(reason)

    # ------------------------------------------------------------------ rebalance callbacks

    def _on_assigned(self, partitions: list[Partition]) -> None:
        # Called inside poll(): load from the store and seek only (no blocking broker calls).
        log.info("assigned %s", partitions)
        self._settle_in_callback()
        self.ledger.assign(partitions)
        kafka = self.kafka
        assert kafka is not None
        for partition in partitions:
            if partition not in self.ledger.progress:
                self._restore_partition(partition)
            try:
                self.recovery.seek_to_resume_point(kafka, partition)
            except Exception as error:  # retried after the poll, outside the callback
                log.warning("cannot seek %s yet: %s", partition, error)
                self.ledger.rewind_needed([partition])

    def _on_revoked(self, partitions: list[Partition]) -> None:
        log.info("revoked %s", partitions)
        if not self._settle_in_callback():
            pass  # the rollback requested goes back to the checkpoints, which the next owner loads
        elif self.settings.kafka.exactly_once:
            # The transaction cannot be committed from inside poll(): drop the open interval (its
            # records were never sent) and go back to the checkpoints, which the next owner of
            # the revoked partitions loads too.
            if self.ledger.since_checkpoint:
                self._rollback_requested = True
        elif (
            partitions
            and self.ledger.since_checkpoint
            and not self.stopping
            and self._fatal is None
            # Consumer calls cannot block here: checkpoint (the source of truth for offsets) and
            # let the group's offsets catch up at the next commit. Keep the flush well inside the
            # session timeout, since heartbeats wait for this callback.
            and self._checkpoint_and_commit(commit_offsets=False, in_callback=True, flush_timeout_s=2.0)
            is not CheckpointOutcome.DONE
        ):
            # The partitions go back to their last checkpoints, so the weights must too, or they
            # would learn the replayed events twice.
            self._rollback_requested = True
        self._release_partitions(partitions)

    def _on_lost(self, partitions: list[Partition]) -> None:
        """The group took partitions away without a revocation (session lost): never write them."""
        log.warning("lost %s; another member may own them already", partitions)
        self._settle_in_callback()
        progress = self.ledger.progress
        if any(p in progress and progress[p].dirty for p in partitions):
            # Their next owner (this instance again, perhaps) resumes from their last checkpoints
            # and reads what came after again; the weights learned it already, so they go back
            # to their last checkpoint too, or those events would be learned twice.
            self._rollback_requested = True
        self._release_partitions(partitions)

    def _settle_in_callback(self) -> bool:
        """Settle the batch in flight before the partitions change; on failure, ask for a rollback."""
        stage = self.stage
        assert stage is not None
        try:
            stage.settle(self.evaluator)
        except KafkaIOError as error:
            self._publisher.note_failure(error)
            stage.drop()
            if self.recovery.learner_process is not None:
                self.recovery.learner_process.drop_in_flight()  # the rollback reloads it
            self._rollback_requested = True
            return False
        return True

    def _release_partitions(self, partitions: Sequence[Partition]) -> None:
        """Give ``partitions`` up: forget what this instance holds of them (their next owner loads it)."""
        released = self.ledger.release(partitions)
        # A rollback on its way reloads the learner without any key: nothing to forget then (and
        # a learner process may still hold the batch whose publishing failed). Nor when
        # stopping: the keys go with the process.
        if not self._rollback_requested and not self.stopping:
            for progress in released:
                self.evaluator.forget_keys(list(progress.keys))
        self.refused.forget(self.ledger.owned)

    # ------------------------------------------------------------------ health and info

    def learner_info(self) -> dict[str, str]:
        """Device, models and hyperparameters, for the info metric."""
        return learner_info(self.settings, self.evaluator)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Ready when connected to Kafka, checkpointing and not stopping; details for /healthz."""
        return self.health_state.report(
            stopping=self.stopping,
            connected_client=self.kafka is not None,
            events_learned=self.evaluator.events,
        )


class _Backoff:
    """Exponential backoff from 0.1 s to 5 s, reset after a success."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial
