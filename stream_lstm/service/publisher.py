"""The output side of the data path: predictions and dead letters, and records refused for good.

A record the producer or the broker refuses for good (too large for the topic, say) must not
fail its batch again and again: :class:`RefusedOutputs` remembers the input whose output was
refused, so that the second pass after the rollback publishes a dead letter in its place (or,
when even the dead letter was refused, counts the input as skipped).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stream_lstm.kafka.interface import (
    DeliveryFailed,
    KafkaClient,
    KafkaIOError,
    Message,
    Partition,
    RecordsRejected,
    RejectedRecord,
    Source,
)
from stream_lstm.messages.events import Event
from stream_lstm.messages.records import (
    OUTPUT_REASONS,
    dead_letter_key,
    dead_letter_logger,
    dead_letter_value,
    prediction_value,
)
from stream_lstm.service.health import Health
from stream_lstm.service.settings import ServiceSettings
from stream_lstm.telemetry.metrics import Telemetry

log = logging.getLogger(__name__)

#: Most inputs remembered at once whose outputs were refused for good.
MAX_REJECTED_SOURCES = 100_000


class RefusedOutputs:
    """Inputs whose prediction or dead letter was refused for good, by their source coordinates."""

    def __init__(self) -> None:
        self._refused: dict[Source, dict[str, str]] = {}

    def __len__(self) -> int:
        return len(self._refused)

    def of(self, source: Source) -> dict[str, str] | None:
        """What was refused of ``source``'s outputs (``"prediction"``, ``"dead_letter"``: why)."""
        return self._refused.get(source) if self._refused else None

    def remember(self, source: Source, kind: str, why: str) -> None:
        if source not in self._refused and len(self._refused) >= MAX_REJECTED_SOURCES:
            self._refused.pop(next(iter(self._refused)))
        self._refused.setdefault(source, {})[kind] = why

    def forget(self, owned: set[Partition], before: dict[Partition, int] | None = None) -> None:
        """Forget refused inputs that no rollback can reach again: those before the checkpointed
        offsets ``before``, or those of partitions no longer owned."""
        if not self._refused:
            return
        self._refused = {
            source: kinds
            for source, kinds in self._refused.items()
            if (partition := source[:2]) in owned
            and (before is None or source[2] >= before.get(partition, 0))
        }


class Publisher:
    """Produces predictions and dead letters, counting the bytes that wait for a flush."""

    def __init__(
        self,
        kafka: KafkaClient,
        settings: ServiceSettings,
        telemetry: Telemetry,
        health: Health,
        refused: RefusedOutputs,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.telemetry = telemetry
        self.health = health
        self.refused = refused
        #: Bytes produced since the last checkpoint (which flushes them).
        self.unflushed_bytes = 0
        self._log = dead_letter_logger(log)

    def prediction(self, event: Event, message: Message, probabilities: dict[str, float], step: int) -> bool:
        """Publish the prediction of ``message``; False if it was refused (a dead letter stands
        for it then: the event is still learned)."""
        source = (message.topic, message.partition, message.offset)
        value = prediction_value(event, source, probabilities, step)
        try:
            self.kafka.produce(self.settings.kafka.output_topic, event.key.encode(), value, source=source)
        except RecordsRejected as error:  # this record only
            self.telemetry.rejected_records.labels(output="predictions").inc()
            self.dead_letter(message, "output_rejected", _describe(error.rejected), self.refused.of(source))
            return False
        self.unflushed_bytes += len(value)
        return True

    def dead_letter(
        self, message: Message, reason: str, error: str, refused: dict[str, str] | None = None
    ) -> None:
        """Publish the dead letter of ``message``; if it was refused for good before (``refused``)
        or is refused now, count the input as skipped instead."""
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
            self.unflushed_bytes += len(value)
        except RecordsRejected as rejection:
            self.telemetry.rejected_records.labels(output="dead_letters").inc()
            self._skip(source, _describe(rejection.rejected))
            return
        self.telemetry.dead_letters.labels(reason=reason).inc()
        if reason not in OUTPUT_REASONS:  # an output_rejected event is counted as processed
            self.telemetry.events.labels(outcome="dead_lettered").inc()
        self._log.note(reason, f"dead letter ({reason}) {_where(source)}: {error[:200]}")

    def _skip(self, source: Source, why: str) -> None:
        """An input neither predicted nor dead-lettered: even its dead letter was refused."""
        self.telemetry.skipped_records.labels(reason="dead_letter_rejected").inc()
        self.telemetry.events.labels(outcome="skipped").inc()
        self._log.note("skipped", f"skipping {_where(source)}: its dead letter was refused for good ({why})")

    def note_failure(self, error: KafkaIOError) -> bool:
        """Take in a failed publish before the rollback; True when the broker or network is to blame.

        Records refused for good are remembered by their inputs (:class:`RefusedOutputs`), so
        that the rollback's second pass publishes dead letters in their place instead of failing
        on them again and again.
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
            self.refused.remember(record.source, kind, f"{record.code}: {record.detail}")
            self._log.note(
                "rejected",
                f"the {kind.replace('_', ' ')} of {_where(record.source)} was refused for good "
                f"({record.code}: {record.detail}); it is replaced when the events are processed again",
            )
        if isinstance(error, RecordsRejected):
            log.warning(
                "%d output record(s) refused for good: processing them again without them", len(rejected)
            )
            return False
        self.health.set_connected(False, str(error))
        return True


def _where(source: Source) -> str:
    return f"{source[0]}:{source[1]}@{source[2]}"


def _describe(rejected: Sequence[RejectedRecord]) -> str:
    return "; ".join(f"{record.code}: {record.detail}" for record in rejected[:1]) or "refused"
