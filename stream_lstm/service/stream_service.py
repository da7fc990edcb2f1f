"""The streaming service: poll, decode, predict, produce, learn, checkpoint, commit.

This is the one module where the learner and Kafka meet, and it sees neither torch nor
kafka-python: models come through :class:`~stream_lstm.evaluation.prequential.PrequentialEvaluator`, Kafka
through :class:`~stream_lstm.kafka.interface.KafkaClient` (kafka-python or confluent-kafka).

Delivery semantics. Predictions are produced asynchronously. Every ``checkpoint_every`` events or
``checkpoint_interval_s`` seconds (and on partition revocation and shutdown) the service waits
until the broker has acknowledged every prediction, writes a checkpoint of every partition it
changed (next offset, counts, the state of the partition's keys) and of its own weights to the
checkpoint store (:mod:`stream_lstm.state.directory_store`), and only then commits those offsets. On
assignment it loads each partition's checkpoint (written by itself or by the partition's previous
owner) and seeks to its offset, so after a crash or a takeover the events since the last
checkpoint are processed again: they get a second prediction (the same source coordinates
identify it) but the restored key states learn them once. If predictions cannot be delivered,
the service rolls back to its last checkpoint the same way.

With ``exactly_once``, predictions and offsets go in one Kafka transaction per checkpoint
interval, committed just before the checkpoint is written; after a crash between the two, the
events the group had already committed are learned again without being published again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_lstm import __version__
from stream_lstm.errors import CheckpointError, ConfigError, EventError
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.kafka.connect import open_kafka
from stream_lstm.kafka.interface import (
    DeliveryFailed,
    DeliveryPending,
    KafkaClient,
    KafkaIOError,
    KafkaSettings,
    Message,
    Partition,
    RecordsRejected,
    RejectedRecord,
    Source,
)
from stream_lstm.learner.placement import learners_on_cpu
from stream_lstm.learner.process import LearnerProcess
from stream_lstm.messages.events import DEFAULT_LIMITS, Event, InputLimits, decode_event
from stream_lstm.messages.records import (
    OUTPUT_REASONS,
    dead_letter_key,
    dead_letter_logger,
    dead_letter_value,
    prediction_value,
)
from stream_lstm.state.directory_store import (
    CheckpointStore,
    DirectoryStore,
    InstanceState,
    PartitionState,
    default_instance_id,
)
from stream_lstm.telemetry.metrics import Telemetry

log = logging.getLogger(__name__)

#: Consumer lag needs a request to the broker: refresh it this often, in seconds.
LAG_REFRESH_S = 5.0

#: Most inputs remembered at once whose outputs were refused for good (see _note_failure).
MAX_REJECTED_SOURCES = 100_000


@dataclass(frozen=True)
class ServiceSettings:
    """Everything the loop needs besides the models."""

    kafka: KafkaSettings
    checkpoint_dir: Path
    #: Keep the checkpoint store in this compacted Kafka topic instead of ``checkpoint_dir``.
    checkpoint_topic: str | None = None
    batch_size: int = 64
    checkpoint_every: int = 10_000
    checkpoint_interval_s: float = 5.0
    poll_timeout_s: float = 0.2
    flush_timeout_s: float = 10.0
    #: What a message may hold (sizes, magnitudes); the rest goes to the dead-letter topic.
    limits: InputLimits = DEFAULT_LIMITS
    scores_interval_s: float = 1.0
    instance_id: str = field(default_factory=default_instance_id)
    #: Checkpoint (which waits for the broker to acknowledge every record) once the records
    #: produced since the last one reach this many bytes: what waits in the producer, or for the
    #: transaction, stays bounded however many large dead letters a flood of bad input makes.
    max_unflushed_bytes: int = 64 * 2**20
    #: Run the LSTM in a child process (:mod:`stream_lstm.learner.process`), using another CPU.
    learner_process: bool = False
    #: CPU threads torch may use in that process.
    torch_threads: int = 1


@dataclass
class _Batch:
    """A decoded batch between :meth:`StreamService._begin` and :meth:`StreamService._finish`.

    With the LSTM in a process of its own, a full batch is sent to it and left "in flight"
    while the service finishes the batch before it and polls the next one: the LSTM predicts
    and learns it meanwhile. Whatever needs the service's state to match the learner's (a
    checkpoint, a rebalance, a stop) settles the batch in flight first; a rollback drops it.
    """

    events: list[Event]
    sources: list[Message]
    replayed: list[bool]
    handled: list[Message]  # every message of the batch from an owned partition, dead or not
    dead: dict[Partition, int]  # dead letters per partition
    sent_ahead: bool = False


@dataclass
class _PartitionProgress:
    """What this instance holds of one partition between checkpoints."""

    offset: int  # next offset to read, i.e. last handled offset + 1
    events: int = 0  # messages predicted and learned
    dead_letters: int = 0
    keys: set[str] = field(default_factory=set)  # keys seen here whose state may be tracked
    dirty: bool = False  # changed since its last checkpoint


def open_store(settings: ServiceSettings) -> CheckpointStore:
    """The checkpoint store the settings name: a compacted topic, else a directory."""
    if settings.checkpoint_topic:
        from stream_lstm.state.topic_store import KafkaTopicStore

        return KafkaTopicStore(settings.kafka.bootstrap_servers, settings.checkpoint_topic)
    return DirectoryStore(settings.checkpoint_dir)


class StreamService:
    """Runs the loop until :meth:`stop` is called (from a signal handler, say).

    Parameters
    ----------
    settings
        Topics, group, checkpointing.
    new_evaluator
        Builds a fresh evaluator when there is no checkpoint.
    telemetry
        Where metrics go.
    kafka_factory
        Builds the Kafka client (tests may pass another).
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        new_evaluator: Callable[[], PrequentialEvaluator],
        telemetry: Telemetry,
        kafka_factory: Callable[..., KafkaClient] = open_kafka,
    ) -> None:
        self.settings = settings
        self.new_evaluator = new_evaluator
        self.telemetry = telemetry
        self.kafka_factory = kafka_factory
        self.instance_id = settings.instance_id
        self.store = open_store(settings)
        self._learner_process: LearnerProcess | None = None
        try:
            self.store.lock_instance(self.instance_id)
            self.evaluator = self._load_placed_evaluator()
            self._instance_saved = self.store.has_instance(self.instance_id)
        except Exception:
            self._close_learner_process()
            self.store.close()
            raise
        self.partitions: dict[Partition, _PartitionProgress] = {}
        self._owned: set[Partition] = set()  # what the group gave this instance, per the callbacks
        self._fatal: str | None = None  # a reason to stop that a restart would not fix
        self.kafka: KafkaClient | None = None
        self._stop = threading.Event()
        self._replay_until: dict[Partition, int] = {}
        self._unchecked: set[Partition] = set()  # assigned partitions whose committed offset is unread
        self._needs_seek: set[Partition] = set()  # partitions a rollback could not rewind yet
        self._rollback_requested = False
        self._ahead: _Batch | None = None  # a batch whose LSTM predictions are on their way
        self._since_checkpoint = 0
        self._unflushed_bytes = 0  # produced since the last checkpoint
        self._last_checkpoint = time.monotonic()
        self._last_scores = 0.0
        self._broker_connected = False
        self._last_error: str | None = None
        self._next_health_probe = 0.0
        self._next_lag_refresh = 0.0
        self._evictions_seen = self._lstm_evictions()
        self._guards_seen = self._guard_counts()
        self._checkpoint_error: str | None = None
        # Inputs whose prediction or dead letter the producer or broker refused for good, found
        # after their batch was published: a rollback processes them again, and this says what
        # to do instead of publishing the refused record again (see _begin and _dead_letter).
        self._rejected: dict[Source, dict[str, str]] = {}
        self._dead_letter_log = dead_letter_logger(log)

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, checkpoint, commit and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Connect (retrying while the broker is unreachable), then process until stopped."""
        backoff = _Backoff()
        while not self.stopping and self.kafka is None:
            try:
                self.kafka = self.kafka_factory(
                    self.settings.kafka,
                    on_assigned=self._on_assigned,
                    on_revoked=self._on_revoked,
                    on_lost=self._on_lost,
                )
            except ConfigError:
                raise  # a setting the client refuses: retrying cannot help
            except Exception as error:  # kafka-python raises several types for "no broker"
                self._set_connected(
                    False, f"cannot connect to {self.settings.kafka.bootstrap_servers}: {error}"
                )
                self._stop.wait(backoff.next())
        if self.kafka is None:
            self._close_learner_process()
            self.store.close()
            return
        self._set_connected(True)
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

    def _step(self, backoff: _Backoff) -> None:
        assert self.kafka is not None
        try:
            # With a batch in flight, take what the client holds already rather than wait for more.
            timeout_s = 0.0 if self._ahead is not None else self.settings.poll_timeout_s
            messages = self.kafka.poll(self.settings.batch_size, timeout_s)
        except Exception as error:  # the loop must survive whatever the client throws
            self._set_connected(False, f"poll failed: {error}")
            self._stop.wait(backoff.next())
            return
        if self._fatal is not None:
            return  # stopping: nothing from this poll is processed
        if self._rollback_requested:
            self._rollback()
            return
        if self._needs_seek:
            rewinding = set(self._needs_seek)
            self._seek_pending()
            # What this poll returned for them came from before the rewind: it is read again.
            messages = [m for m in messages if (m.topic, m.partition) not in rewinding]
        if self._unchecked:
            try:
                self._check_committed_offsets()
            except Exception as error:
                self._set_connected(False, f"reading committed offsets failed: {error}")
                self._rollback()
                self._stop.wait(backoff.next())
                return
        try:
            self._process(messages)
            # Decided once: a checkpoint falling due between two looks would find a batch in flight.
            checkpoint_due = self._checkpoint_due()
            if checkpoint_due:
                self._settle()
        except KafkaIOError as error:
            broker_failed = self._note_failure(error)
            self._rollback()
            if broker_failed:
                self._stop.wait(backoff.next())
            return
        self._probe_broker()
        if checkpoint_due:
            if self._checkpoint_and_commit():
                backoff.reset()
            else:
                self._stop.wait(backoff.next())
        self._publish_metrics()

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
            self._close_learner_process()
            self.store.close()

    def _final_checkpoint(self, checkpoint: bool) -> None:
        if self._rollback_requested:
            checkpoint = False  # what is in memory is what a rollback would have thrown away
        if checkpoint:
            try:
                self._settle()
            except KafkaIOError as error:
                log.warning("publishing the last batch failed: %s", error)
                checkpoint = False
        self._ahead = None
        if checkpoint:
            log.info("stopping: flushing, checkpointing and committing")
            # SIGTERM promises an exit within 10 s: with the broker away, give up on the flush early.
            if not self._checkpoint_and_commit(flush_timeout_s=min(self.settings.flush_timeout_s, 5.0)):
                log.warning("final checkpoint failed; the next start resumes from the previous one")
        else:
            log.warning("stopping without a final checkpoint; the next start resumes from the last one")

    # ------------------------------------------------------------------ the data path

    def _process(self, messages: Sequence[Message]) -> None:
        """Decode ``messages``, and finish them or leave them in flight (see :class:`_Batch`)."""
        batch = self._begin(messages) if messages else None
        self._settle()
        if batch is None:
            return
        # Only under load (a full poll) is a batch left in flight: at a low rate the next poll
        # may be a while, and the batch's predictions would wait for it.
        if (
            batch.sent_ahead
            and len(messages) >= self.settings.batch_size
            and not self.settings.kafka.exactly_once
        ):
            self._ahead = batch
        else:
            self._finish(batch)

    def _settle(self) -> None:
        """Finish the batch left in flight, if there is one."""
        if self._ahead is not None:
            batch, self._ahead = self._ahead, None
            self._finish(batch)

    def _begin(self, messages: Sequence[Message]) -> _Batch:
        """Decode the batch, dead-letter what is malformed, and send it to a learner process."""
        settings = self.settings
        started = time.perf_counter()
        events: list[Event] = []
        sources: list[Message] = []
        replayed: list[bool] = []
        owned = self._owned
        # Applied to the partitions' progress only once the batch is learned.
        dead: dict[Partition, int] = {}
        handled: list[Message] = []
        for message in messages:
            partition = (message.topic, message.partition)
            if partition not in owned:
                continue  # a late record of a partition given away: its new owner reads it
            handled.append(message)
            replay = message.offset < self._replay_until.get(partition, -1)
            refused = self._rejected.get((*partition, message.offset)) if self._rejected else None
            try:
                event = decode_event(message.value, message.key, limits=settings.limits)
            except EventError as error:
                dead[partition] = dead.get(partition, 0) + 1
                if not replay:
                    self._dead_letter(message, error.code, str(error), refused)
                continue
            except Exception as error:  # a decoder bug must not stop the stream either
                log.debug("decoding %s:%d@%d", *partition, message.offset, exc_info=True)
                dead[partition] = dead.get(partition, 0) + 1
                if not replay:
                    self._dead_letter(message, "invalid", f"cannot decode: {error!r}", refused)
                continue
            if refused is not None and "prediction" in refused:
                # Its prediction was refused for good the first time: learn the event again, but
                # publish a dead letter in its place.
                if not replay:
                    self._dead_letter(message, "output_rejected", refused["prediction"], refused)
                replay = True
            events.append(event)
            sources.append(message)
            replayed.append(replay)
        batch = _Batch(events, sources, replayed, handled, dead)
        if events:
            batch.sent_ahead = self.evaluator.send_ahead(events)
        self.telemetry.stage.labels(stage="decode").observe(time.perf_counter() - started)
        return batch

    def _finish(self, batch: _Batch) -> None:
        """Predict (the other models), publish, score and learn the batch; record its progress."""
        assert self.kafka is not None
        settings = self.settings
        stage = self.telemetry.stage
        events, sources, replayed, handled = batch.events, batch.sources, batch.replayed, batch.handled
        if events:
            decoded = time.perf_counter()
            predictions = self.evaluator.predict(events)
            predicted = time.perf_counter()
            stage.labels(stage="predict").observe(predicted - decoded)
            step = self._model_step()
            refused = 0
            names = list(predictions)
            columns = [predictions[name].tolist() for name in names]
            for i, (event, message) in enumerate(zip(events, sources, strict=True)):
                if replayed[i]:
                    continue
                source = (message.topic, message.partition, message.offset)
                value = prediction_value(
                    event,
                    source,
                    {name: column[i] for name, column in zip(names, columns, strict=True)},
                    step,
                )
                try:
                    self.kafka.produce(
                        settings.kafka.output_topic,
                        event.key.encode(),
                        value,
                        source=source,
                    )
                    self._unflushed_bytes += len(value)
                except RecordsRejected as error:  # this record only: the event is still learned
                    refused += 1
                    self._output_refused(message, error.rejected)
            produced = time.perf_counter()
            stage.labels(stage="produce").observe(produced - predicted)
            now = time.time()
            for message, replay in zip(sources, replayed, strict=True):
                if message.timestamp_ms is not None and message.timestamp_ms >= 0 and not replay:
                    self.telemetry.latency.observe(max(now - message.timestamp_ms / 1000.0, 0.0))
            published = len(events) - sum(replayed) - refused
            for name in names:
                self.telemetry.predictions.labels(model=name).inc(published)
            self.evaluator.learn(events, predictions)
            stage.labels(stage="learn").observe(time.perf_counter() - produced)
            self.telemetry.events.labels(outcome="processed").inc(len(events))
            unlabelled = sum(1 for event in events if event.label is None)
            if unlabelled:
                self.telemetry.unlabelled.inc(unlabelled)
        partitions = self.partitions
        for message in handled:
            partition = (message.topic, message.partition)
            progress = partitions.get(partition)
            if progress is None:
                progress = partitions[partition] = _PartitionProgress(offset=message.offset)
            progress.offset = message.offset + 1
            progress.dirty = True
        for message, event in zip(sources, events, strict=True):
            progress = partitions[(message.topic, message.partition)]
            progress.events += 1
            progress.keys.add(event.key)
        for partition, count in batch.dead.items():
            partitions[partition].dead_letters += count
        self._since_checkpoint += len(handled)

    def _dead_letter(
        self, message: Message, reason: str, error: str, refused: dict[str, str] | None = None
    ) -> None:
        """Publish the dead letter of ``message``; if it was refused for good before (``refused``)
        or is refused now, count the input as skipped instead."""
        assert self.kafka is not None
        source = (message.topic, message.partition, message.offset)
        if refused is not None and "dead_letter" in refused:
            self._skip(source, refused["dead_letter"])
            return
        value = dead_letter_value(
            value=message.value,
            reason=reason,
            error=error,
            source=source,
            key_bytes=len(message.key) if message.key is not None else 0,
        )
        try:
            self.kafka.produce(
                self.settings.kafka.dead_letter_topic,
                dead_letter_key(message.key, self.settings.limits.max_key_bytes),
                value,
                source=source,
            )
            self._unflushed_bytes += len(value)
        except RecordsRejected as rejection:
            self.telemetry.rejected_records.labels(output="dead_letters").inc()
            self._skip(source, _describe(rejection.rejected))
            return
        self.telemetry.dead_letters.labels(reason=reason).inc()
        if reason not in OUTPUT_REASONS:  # an output_rejected event is counted as processed
            self.telemetry.events.labels(outcome="dead_lettered").inc()
        self._dead_letter_log.note(reason, f"dead letter ({reason}) {_where(source)}: {error[:200]}")

    def _output_refused(self, message: Message, rejected: Sequence[RejectedRecord]) -> None:
        """The prediction of ``message`` was refused for good at once: a dead letter stands for it."""
        self.telemetry.rejected_records.labels(output="predictions").inc()
        refused = self._rejected.get((message.topic, message.partition, message.offset))
        self._dead_letter(message, "output_rejected", _describe(rejected), refused)

    def _skip(self, source: Source, why: str) -> None:
        """An input neither predicted nor dead-lettered: even its dead letter was refused."""
        self.telemetry.skipped_records.labels(reason="dead_letter_rejected").inc()
        self.telemetry.events.labels(outcome="skipped").inc()
        self._dead_letter_log.note(
            "skipped", f"skipping {_where(source)}: its dead letter was refused for good ({why})"
        )

    def _note_failure(self, error: KafkaIOError) -> bool:
        """Take in a failed publish before the rollback; True when the broker or network is to blame.

        Records refused for good (too large for the topic, say) are remembered by their inputs,
        so that the rollback's second pass publishes dead letters in their place (see _begin)
        instead of failing on them again and again.
        """
        rejected = error.rejected if isinstance(error, DeliveryFailed) else ()
        dead_letter_topic = self.settings.kafka.dead_letter_topic
        for record in rejected:
            kind = "dead_letter" if record.topic == dead_letter_topic else "prediction"
            self.telemetry.rejected_records.labels(
                output="dead_letters" if kind == "dead_letter" else "predictions"
            ).inc()
            if record.source is None:
                continue
            if record.source not in self._rejected and len(self._rejected) >= MAX_REJECTED_SOURCES:
                self._rejected.pop(next(iter(self._rejected)))
            self._rejected.setdefault(record.source, {})[kind] = f"{record.code}: {record.detail}"
            self._dead_letter_log.note(
                "rejected",
                f"the {kind.replace('_', ' ')} of {_where(record.source)} was refused for good "
                f"({record.code}: {record.detail}); it is replaced when the events are processed again",
            )
        if isinstance(error, RecordsRejected):
            log.warning(
                "%d output record(s) refused for good: processing them again without them", len(rejected)
            )
            return False
        self._set_connected(False, str(error))
        return True

    def _forget_rejected(self, before: dict[Partition, int] | None = None) -> None:
        """Forget refused inputs that no rollback can reach again: those before the checkpointed
        offsets ``before``, or those of partitions no longer owned."""
        if not self._rejected:
            return
        self._rejected = {
            source: kinds
            for source, kinds in self._rejected.items()
            if (partition := source[:2]) in self._owned
            and (before is None or source[2] >= before.get(partition, 0))
        }

    def _model_step(self) -> int:
        lstm = self.evaluator.models.get("lstm")
        return int(getattr(lstm, "steps", self.evaluator.events))

    # ------------------------------------------------------------------ checkpoints and offsets

    def _checkpoint_due(self) -> bool:
        if self._since_checkpoint == 0:
            return False
        return (
            self._since_checkpoint >= self.settings.checkpoint_every
            or self._unflushed_bytes >= self.settings.max_unflushed_bytes
            or time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_interval_s
        )

    def _checkpoint_and_commit(
        self, *, commit_offsets: bool = True, in_callback: bool = False, flush_timeout_s: float | None = None
    ) -> bool:
        """Flush, commit (exactly-once: the transaction), checkpoint, commit; True on success."""
        assert self.kafka is not None
        if self._ahead is not None:
            raise RuntimeError("a checkpoint with a batch in flight: settle it first")
        if self._rollback_requested:
            return False  # the learner may be ahead of the offsets: only the rollback fixes that
        if self._since_checkpoint == 0 and self._instance_saved:
            return True
        offsets = {p: progress.offset for p, progress in self.partitions.items()}
        # While replaying, the group's committed offset is ahead of the learner: never move it back.
        committed = {p: max(o, self._replay_until.get(p, 0)) for p, o in offsets.items()}
        try:
            self.kafka.flush(
                flush_timeout_s if flush_timeout_s is not None else self.settings.flush_timeout_s
            )
            if self.settings.kafka.exactly_once:
                self.kafka.commit(committed)  # the transaction: predictions and offsets together
        except DeliveryPending as error:
            self._set_connected(False, str(error))
            return False
        except KafkaIOError as error:
            self._note_failure(error)
            if self.stopping:
                pass  # the next start goes back to the last checkpoint: no use reloading it now
            elif in_callback:
                self._rollback_requested = True  # not on kafka-python's network thread
            else:
                self._rollback()
            return False
        started = time.perf_counter()
        try:
            self._save_checkpoints()
        except CheckpointError as error:
            self.telemetry.checkpoints.labels(result="failed").inc()
            log.error("%s", error)
            self._checkpoint_error = str(error)
            return False
        self._checkpoint_error = None
        self.telemetry.stage.labels(stage="checkpoint").observe(time.perf_counter() - started)
        self.telemetry.checkpoint_written(time.time())
        self._since_checkpoint = 0
        self._unflushed_bytes = 0
        self._last_checkpoint = time.monotonic()
        self._replay_until = {p: o for p, o in self._replay_until.items() if o > offsets.get(p, 0)}
        self._forget_rejected(offsets)
        if not in_callback:
            self._refresh_store()
        if commit_offsets and not self.settings.kafka.exactly_once:
            try:
                self.kafka.commit(committed)
            except KafkaIOError as error:
                # The checkpoints hold the offsets; the group's copy only lags behind.
                log.warning("offset commit failed (the checkpoints have them): %s", error)
                return True
        self._set_connected(True)
        return True

    def _save_checkpoints(self) -> None:
        """Write every changed partition's checkpoint, then this instance's weights."""
        evaluator = self.evaluator
        changed = [p for p, progress in self.partitions.items() if progress.dirty]
        for partition in changed:
            progress = self.partitions[partition]
            key_state = evaluator.export_keys(sorted(progress.keys))
            progress.keys = evaluator.held_keys(progress.keys)
            self.store.save_partition(
                PartitionState(
                    topic=partition[0],
                    partition=partition[1],
                    offset=progress.offset,
                    events=progress.events,
                    dead_letters=progress.dead_letters,
                    keys=sorted(progress.keys),
                    key_state=key_state,
                    instance=self.instance_id,
                )
            )
            progress.dirty = False
        with evaluator.keys_set_aside():
            self.store.save_instance(InstanceState(evaluator=evaluator, instance=self.instance_id))
        self._instance_saved = True

    def _refresh_store(self) -> None:
        """Read what other instances wrote to the store since the last time (a topic store), so
        that taking a partition over in a rebalance callback has little left to read."""
        try:
            self.store.refresh()
        except CheckpointError as error:
            log.warning("%s", error)  # the next load reads it, or fails with the reason

    def _load_placed_evaluator(self, *, latest: bool = True) -> PrequentialEvaluator:
        """:meth:`_load_evaluator`, then :meth:`_place_learner`. A learner bound for the learner
        process is built here on the CPU: on a GPU host this process would otherwise open a CUDA
        context of its own only to pass the weights on."""
        with learners_on_cpu(self.settings.learner_process):
            evaluator = self._load_evaluator(latest=latest)
        return self._place_learner(evaluator)

    def _load_evaluator(self, *, latest: bool = True) -> PrequentialEvaluator:
        """This instance's last weights; else warm-start from another instance's; else fresh.

        ``latest=False`` (a rollback) lets the store answer from what it already holds.
        """
        own = self.store.load_instance(self.instance_id, latest=latest)
        if own is not None:
            log.info(
                "instance %s resumes its learner from %s (%d events learned)",
                self.instance_id,
                self.store.describe(),
                own.evaluator.events,
            )
            return own.evaluator
        other = self.store.newest_other_instance(self.instance_id, latest=latest)
        if other is not None:
            log.info(
                "instance %s starts from the weights of instance %s (%d events learned) in %s",
                self.instance_id,
                other.instance,
                other.evaluator.events,
                self.store.describe(),
            )
            other.evaluator.reset_scores()
            return other.evaluator
        if self.store.root is not None and (self.store.root / "state.ckpt").exists():
            log.warning(
                "%s holds a checkpoint of stream-lstm 0.1's single-file format, which this version "
                "does not read: starting a fresh learner",
                self.store.root / "state.ckpt",
            )
        log.info(
            "no checkpoint in %s: instance %s starts a fresh learner", self.store.describe(), self.instance_id
        )
        return self.new_evaluator()

    def _place_learner(self, evaluator: PrequentialEvaluator) -> PrequentialEvaluator:
        """Move the evaluator's LSTM into the learner process, if the settings ask for one."""
        learner = evaluator.models.get("lstm")
        if not self.settings.learner_process or learner is None:
            return evaluator
        if self._learner_process is None:
            self._learner_process = LearnerProcess(learner, torch_threads=self.settings.torch_threads)
            log.info("the LSTM runs in process %s", self._learner_process.pid)
        else:
            self._learner_process.load(learner)
        evaluator.models["lstm"] = self._learner_process
        return evaluator

    def _close_learner_process(self) -> None:
        if self._learner_process is not None:
            self._learner_process.close()
            self._learner_process = None

    def _restore_partition(self, partition: Partition, *, latest: bool = True) -> None:
        """Take ``partition``'s checkpoint from the store: its offset, counts and key states.

        A checkpoint that cannot be read or continued (damaged, or written with other model
        sizes) stops the service: going on would overwrite it with state that lost its keys.
        """
        try:
            saved = self.store.load_partition(partition, latest=latest)
            if saved is None:
                return
            self.evaluator.import_keys(saved.key_state)
        except Exception as error:
            self._fail(
                f"cannot continue partition {partition[0]}:{partition[1]} from its checkpoint: {error}. "
                "Fix the cause (e.g. instances with different model settings), or move that "
                "checkpoint aside to start the partition's keys afresh."
            )
            return
        self.partitions[partition] = _PartitionProgress(
            offset=saved.offset,
            events=saved.events,
            dead_letters=saved.dead_letters,
            keys=set(saved.keys),
        )
        log.info(
            "partition %s:%d: continuing at offset %d with %d keys (checkpoint of instance %s)",
            *partition,
            saved.offset,
            len(saved.keys),
            saved.instance or "?",
        )

    def _fail(self, reason: str) -> None:
        """Stop without writing checkpoints, and exit with an error."""
        if self._fatal is None:
            log.error("%s", reason)
            self._fatal = reason
        self._stop.set()

    def _release_partitions(self, partitions: Sequence[Partition]) -> None:
        """Give ``partitions`` up: forget what this instance holds of them (their next owner loads it)."""
        self._owned.difference_update(partitions)
        for partition in partitions:
            progress = self.partitions.pop(partition, None)
            # A rollback on its way reloads the learner without any key: nothing to forget then
            # (and a learner process may still hold the batch whose publishing failed).
            # Nor when stopping: the keys go with the process.
            if progress is not None and not self._rollback_requested and not self.stopping:
                self.evaluator.forget_keys(list(progress.keys))
            self._replay_until.pop(partition, None)
            self._unchecked.discard(partition)
            self._needs_seek.discard(partition)
        self._forget_rejected()

    def _rollback(self) -> None:
        """Go back to the last checkpoints: this instance's weights, and every owned partition."""
        assert self.kafka is not None
        log.warning("rolling back to the last checkpoint; events since then will be processed again")
        try:
            self.kafka.abort()
        except Exception as error:
            log.debug("aborting the transaction: %s", error)
        try:
            self.kafka.reset_producer()
        except Exception as error:  # the next failure rolls back again and retries this
            log.warning("recreating the producer failed: %s", error)
        # Only this instance's own last checkpoints are needed, which a store already holds: a
        # rollback must not depend on a broker that may be the reason for it.
        self._ahead = None  # its events are read again
        self.evaluator = self._load_placed_evaluator(latest=False)
        self.partitions = {}
        self._replay_until = {}
        self._evictions_seen = self._lstm_evictions()
        self._guards_seen = self._guard_counts()
        self._since_checkpoint = 0
        self._rollback_requested = False
        self._unflushed_bytes = 0  # the producer was reset: what it held is gone
        for partition in sorted(self._owned):
            self._restore_partition(partition, latest=False)
        self._needs_seek.update(self._owned)
        self._seek_pending()

    def _seek_pending(self) -> None:
        """Rewind the partitions a rollback left ahead of the learner; retried until it works."""
        assert self.kafka is not None
        for partition in sorted(self._needs_seek):
            try:
                if partition in self.partitions:
                    self._seek_to_resume_point(partition)
                else:
                    self._seek_without_checkpoint(partition)
            except Exception as error:  # the broker may still be away: try again next step
                log.warning("cannot rewind %s yet: %s", partition, error)
                continue
            self._needs_seek.discard(partition)

    def _seek_to_resume_point(self, partition: Partition) -> None:
        """Seek to the checkpoint's offset; without one, the group's committed offset applies."""
        assert self.kafka is not None
        progress = self.partitions.get(partition)
        if progress is not None:
            self.kafka.seek(partition, progress.offset)
        elif self.settings.kafka.exactly_once:
            # The learner has never seen this partition, but a crashed run may have committed
            # some of it: learn it from the start; the replay below keeps it from being re-published.
            self.kafka.seek_to_beginning(partition)
        if self.settings.kafka.exactly_once:
            self._unchecked.add(partition)

    def _seek_without_checkpoint(self, partition: Partition) -> None:
        assert self.kafka is not None
        if self.settings.kafka.exactly_once:
            self.kafka.seek_to_beginning(partition)
            self._unchecked.add(partition)
        else:
            self.kafka.seek_to_committed(partition)

    def _check_committed_offsets(self) -> None:
        """Exactly-once: find events a crashed run published and committed after its checkpoint.

        Runs in the main thread after a poll (it blocks on the broker, which kafka-python forbids
        in rebalance callbacks) and before that poll's messages are processed.
        """
        assert self.kafka is not None
        while self._unchecked:
            partition = self._unchecked.pop()
            committed = self.kafka.committed(partition)
            progress = self.partitions.get(partition)
            if committed is not None and committed > (progress.offset if progress else 0):
                # Learn these again without publishing them again.
                self._replay_until[partition] = committed

    def _on_assigned(self, partitions: list[Partition]) -> None:
        # Called inside poll(): load from the store and seek only (no blocking broker calls).
        log.info("assigned %s", partitions)
        self._settle_in_callback()
        self._owned.update(partitions)
        for partition in partitions:
            if partition not in self.partitions:
                self._restore_partition(partition)
            try:
                self._seek_to_resume_point(partition)
            except Exception as error:  # retried after the poll, outside the callback
                log.warning("cannot seek %s yet: %s", partition, error)
                self._needs_seek.add(partition)

    def _on_revoked(self, partitions: list[Partition]) -> None:
        log.info("revoked %s", partitions)
        if not self._settle_in_callback():
            pass  # the rollback requested goes back to the checkpoints, which the next owner loads
        elif self.settings.kafka.exactly_once:
            # The transaction cannot be committed from inside poll(): drop the open interval (its
            # records were never sent) and go back to the checkpoints, which the next owner of
            # the revoked partitions loads too.
            if self._since_checkpoint:
                self._rollback_requested = True
        elif (
            partitions
            and self._since_checkpoint
            and not self.stopping
            and self._fatal is None
            # Consumer calls cannot block here: checkpoint (the source of truth for offsets) and
            # let the group's offsets catch up at the next commit. Keep the flush well inside the
            # session timeout, since heartbeats wait for this callback.
            and not self._checkpoint_and_commit(commit_offsets=False, in_callback=True, flush_timeout_s=2.0)
        ):
            # The partitions go back to their last checkpoints, so the weights must too, or they
            # would learn the replayed events twice.
            self._rollback_requested = True
        self._release_partitions(partitions)

    def _on_lost(self, partitions: list[Partition]) -> None:
        """The group took partitions away without a revocation (session lost): never write them."""
        log.warning("lost %s; another member may own them already", partitions)
        self._settle_in_callback()
        self._release_partitions(partitions)

    def _settle_in_callback(self) -> bool:
        """Settle the batch in flight before the partitions change; on failure, ask for a rollback."""
        try:
            self._settle()
        except KafkaIOError as error:
            self._note_failure(error)
            self._ahead = None
            if self._learner_process is not None:
                self._learner_process.drop_in_flight()  # the rollback reloads it
            self._rollback_requested = True
            return False
        return True

    # ------------------------------------------------------------------ health and scores

    def _set_connected(self, connected: bool, error: str | None = None) -> None:
        if connected != self._broker_connected:
            if connected:
                log.info("connected to Kafka at %s", self.settings.kafka.bootstrap_servers)
            else:
                log.warning("Kafka unavailable: %s", error)
        self._broker_connected = connected
        self._last_error = None if connected else error
        self.telemetry.broker_up.set(1 if connected else 0)

    def _probe_broker(self) -> None:
        now = time.monotonic()
        if now < self._next_health_probe or self.kafka is None:
            return
        self._next_health_probe = now + 1.0
        connected = self.kafka.connected()
        if connected != self._broker_connected:
            self._set_connected(connected, None if connected else "no connection to any broker")

    def _publish_metrics(self) -> None:
        now = time.monotonic()
        if now - self._last_scores >= self.settings.scores_interval_s:
            self._last_scores = now
            self.telemetry.set_scores(self.evaluator.report())
            self.telemetry.learned_events.set(self.evaluator.events)
            self._publish_learner_stats()
            self._publish_guard_stats()
        if now >= self._next_lag_refresh and self.kafka is not None:
            self._next_lag_refresh = now + LAG_REFRESH_S
            try:
                lag = self.kafka.lag()
            except Exception as error:  # lag is for dashboards: never let it stop the stream
                log.debug("consumer lag unavailable: %s", error)
            else:
                for (topic, partition), value in lag.items():
                    self.telemetry.lag.labels(topic=topic, partition=str(partition)).set(value)

    def _publish_learner_stats(self) -> None:
        """Training loss, gradient norm, key counts and device memory of the LSTM, if it runs."""
        lstm = self.evaluator.models.get("lstm")
        if lstm is None:
            return
        stats = lstm.training_stats()  # reads two device values: once a second, not per batch
        self.telemetry.training_loss.set(stats["loss"])
        self.telemetry.gradient_norm.set(stats["grad_norm"])
        self.telemetry.model_step.set(lstm.steps)
        keys = lstm.key_stats()
        self.telemetry.keys_tracked.set(keys["tracked"])
        evictions = keys["evicted"]
        if evictions > self._evictions_seen:
            self.telemetry.keys_evicted.inc(evictions - self._evictions_seen)
        self._evictions_seen = evictions
        self.telemetry.gpu_memory.set(lstm.device_memory_bytes())

    def _publish_guard_stats(self) -> None:
        """Skipped optimizer steps and dropped feature values, as counters (from cumulative counts)."""
        telemetry = self.telemetry
        for model, stats in self.evaluator.guard_stats().items():
            for name, value in stats.items():
                seen = self._guards_seen.get((model, name), 0)
                self._guards_seen[(model, name)] = value
                added = max(value - seen, 0)  # a reload (a rollback) goes back to the saved counts
                if not added:
                    continue
                if name == "features_dropped":
                    telemetry.features_dropped.labels(model=model).inc(added)
                elif name.startswith("skipped_"):
                    telemetry.skipped_updates.labels(reason=name.removeprefix("skipped_")).inc(added)

    def _guard_counts(self) -> dict[tuple[str, str], int]:
        return {
            (model, name): value
            for model, stats in self.evaluator.guard_stats().items()
            for name, value in stats.items()
        }

    def _lstm_evictions(self) -> int:
        lstm = self.evaluator.models.get("lstm")
        return lstm.key_stats()["evicted"] if lstm is not None else 0

    def learner_info(self) -> dict[str, str]:
        """Device, models and hyperparameters, for the info metric."""
        info = {
            "version": __version__,
            "instance_id": self.instance_id,
            "models": ",".join(self.evaluator.models),
        }
        lstm = self.evaluator.models.get("lstm")
        if lstm is not None:
            info["device"] = str(lstm.torch_device)
            info.update(
                {name: str(value) for name, value in lstm.hyperparameters().items() if name != "device"}
            )
        else:
            info["device"] = "none"
        info["batch_size"] = str(self.settings.batch_size)
        info["window"] = str(self.evaluator.window)
        return info

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Ready when connected to Kafka and not stopping; details for /healthz."""
        ready = (
            self._broker_connected
            and not self.stopping
            and self.kafka is not None
            and self._checkpoint_error is None
        )
        return ready, {
            "broker_connected": self._broker_connected,
            "stopping": self.stopping,
            "last_error": self._last_error,
            "checkpoint_error": self._checkpoint_error,
            "events_learned": self.evaluator.events,
        }


def _where(source: Source) -> str:
    return f"{source[0]}:{source[1]}@{source[2]}"


def _describe(rejected: Sequence[RejectedRecord]) -> str:
    return "; ".join(f"{record.code}: {record.detail}" for record in rejected[:1]) or "refused"


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
