"""A scripted Kafka client: fixed partitions, rebalances and failures on cue, records held until a flush.

:class:`ScriptedKafka` implements :class:`~stream_lstm.kafka.interface.KafkaClient` the way a
consumer in a group and a producer behave, with nothing in between that a test cannot see:

* **Reading.** Each :meth:`~ScriptedKafka.poll` returns up to ``max_records`` messages of one
  partition, taking the partitions in turn; seeks move the positions. The first poll assigns
  every partition. When every partition is read to its end, the next poll calls ``when_done``
  (a service's ``stop``, say) and returns nothing.
* **Producing.** A produced record is *held*, as in a producer's buffer, until :meth:`flush`
  (at-least-once) or :meth:`commit` (exactly-once, the transaction) delivers it. Resetting the
  producer, aborting, closing and a failed flush drop what is held: it is never delivered.
  ``delivered`` is what a reader of the topic would see.
* **Refusals.** A record whose (topic, source) is in ``refuse_at_once`` is refused by
  :meth:`produce` (:class:`~stream_lstm.kafka.interface.RecordsRejected`, not held); one in
  ``refuse_later`` is refused by the flush (or exactly-once commit) that would deliver it, every
  time it is sent, as a broker refuses a record over its size limit: the others of that flush
  are delivered, while a transaction holding one is refused whole.
* **Cues.** ``cues`` maps a poll's number (0 is the first) to a function called with the
  client before that poll: it may call :meth:`rebalance`, :meth:`lose`, :meth:`fail_flushes`,
  :meth:`fail_commits`, set ``produce_error``, or look at the service. After :meth:`lose`,
  polls return nothing until :meth:`reassign`.

>>> from stream_lstm.kafka.interface import KafkaSettings
>>> kafka = ScriptedKafka({("in", 0): messages_of("in", 0, [b'{"features": {"x": 1}}'])})
>>> client = kafka.connect(KafkaSettings("scripted", "in", "out", "dead", "group"),
...                        on_assigned=print, on_revoked=print, on_lost=print)
>>> [m.offset for m in client.poll(10, 0.0)]
[('in', 0)]
[0]
>>> client.produce("out", b"k", b"v"); kafka.delivered
[]
>>> client.flush(1.0); [record.value for record in kafka.delivered]
[b'v']
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stream_lstm.kafka.interface import (
    RECORD_TOO_LARGE,
    DeliveryPending,
    KafkaSettings,
    Message,
    Partition,
    RecordsRejected,
    RejectedRecord,
    Source,
)

#: A function of the client, called before the poll whose number it is given under in ``cues``.
Cue = Callable[["ScriptedKafka"], None]
RebalanceCallback = Callable[[list[Partition]], None]


@dataclass(frozen=True)
class ProducedRecord:
    """A record given to :meth:`ScriptedKafka.produce`."""

    topic: str
    key: bytes | None
    value: bytes
    source: Source | None

    def json(self) -> Any:
        """The record's value, decoded as JSON."""
        return json.loads(self.value)


def messages_of(
    topic: str, partition: int, values: Sequence[bytes], keys: Sequence[bytes | None] = ()
) -> list[Message]:
    """``values`` as the messages of one partition, at offsets 0, 1, 2, ..."""
    keys = list(keys) or [None] * len(values)
    return [
        Message(topic, partition, offset, key, value, None)
        for offset, (key, value) in enumerate(zip(keys, values, strict=True))
    ]


class ScriptedKafka:
    """A :class:`~stream_lstm.kafka.interface.KafkaClient` that plays a script (see the module doc).

    ``deadline_s``: after this long, a poll calls ``when_done`` and sets ``timed_out``, so that a
    test of a service that loops forever fails instead of hanging.
    """

    def __init__(
        self,
        messages: Mapping[Partition, Sequence[Message]],
        *,
        cues: Mapping[int, Cue] | None = None,
        deadline_s: float = 60.0,
    ) -> None:
        self.messages = {partition: list(batch) for partition, batch in messages.items()}
        self.partitions = sorted(self.messages)
        self.cues = dict(cues or {})
        self.positions = dict.fromkeys(self.partitions, 0)
        self.committed_offsets: dict[Partition, int] = {}
        #: Every :meth:`commit`'s offsets, in order.
        self.commits: list[dict[Partition, int]] = []
        #: Records delivered to their topics, in order: what a reader would see.
        self.delivered: list[ProducedRecord] = []
        #: Records dropped before delivery (a reset producer, an abort, a failed flush, a close).
        self.dropped: list[ProducedRecord] = []
        #: Records refused for good, as (topic, source): see "Refusals" in the module doc.
        self.refuse_at_once: set[tuple[str, Source | None]] = set()
        self.refuse_later: set[tuple[str, Source | None]] = set()
        #: Seeks that moved a partition back (a rollback's rewinds, say).
        self.rewinds = 0
        #: Raised by every :meth:`produce` while set; ``failed_produces`` counts them.
        self.produce_error: Exception | None = None
        self.failed_produces = 0
        #: Called when every partition is read to its end, or at the deadline.
        self.when_done: Callable[[], None] = lambda: None
        self.exactly_once = False
        self.polls = 0
        self.flushes = 0
        self.timed_out = False
        self._held: list[ProducedRecord] = []
        self._flush_errors: list[Exception] = []
        self._commit_errors: list[Exception] = []
        self._assigned: list[Partition] = []
        self._deadline = time.monotonic() + deadline_s
        self._on_assigned: RebalanceCallback = _ignore
        self._on_revoked: RebalanceCallback = _ignore
        self._on_lost: RebalanceCallback = _ignore

    def connect(
        self,
        settings: KafkaSettings,
        *,
        on_assigned: RebalanceCallback,
        on_revoked: RebalanceCallback,
        on_lost: RebalanceCallback,
    ) -> ScriptedKafka:
        """The client factory a service is given (``kafka_factory=kafka.connect``)."""
        self.exactly_once = settings.exactly_once
        self._on_assigned, self._on_revoked, self._on_lost = on_assigned, on_revoked, on_lost
        return self

    # ------------------------------------------------------------------ what a cue may do

    def rebalance(self) -> None:
        """The group takes every partition back and gives it again: positions go back to the
        committed offsets, as in Kafka."""
        self._on_revoked(list(self._assigned))
        self._reassign()

    def lose(self) -> None:
        """The session expires: every partition is taken without a revocation (see :meth:`reassign`)."""
        self._on_lost(list(self._assigned))
        self._assigned = []

    def reassign(self) -> None:
        """The group gives every partition (again): positions start at the committed offsets."""
        self._reassign()

    def fail_flushes(self, *errors: Exception) -> None:
        """The next flushes raise ``errors``, one each, in order."""
        self._flush_errors.extend(errors)

    def fail_commits(self, *errors: Exception) -> None:
        """The next commits raise ``errors``, one each, in order, and commit nothing (with
        exactly-once the transaction's records stay held until an abort drops them)."""
        self._commit_errors.extend(errors)

    def _reassign(self) -> None:
        self.positions = {p: self.committed_offsets.get(p, 0) for p in self.partitions}
        self._assigned = list(self.partitions)
        self._on_assigned(list(self._assigned))

    # ------------------------------------------------------------------ reading

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        if time.monotonic() > self._deadline:
            self.timed_out = True
            self.when_done()
            return []
        cue = self.cues.get(self.polls)
        if self.polls == 0:
            self._assigned = list(self.partitions)
            self._on_assigned(list(self._assigned))
        if cue is not None:
            cue(self)
        number = self.polls
        self.polls += 1
        if not self._assigned:
            return []  # lost, not given again yet
        unread = [p for p in self._assigned if self.positions[p] < len(self.messages[p])]
        if not unread:
            self.when_done()
            return []
        partition = self._assigned[number % len(self._assigned)]
        if partition not in unread:
            partition = unread[0]
        start = self.positions[partition]
        batch = self.messages[partition][start : start + max_records]
        self.positions[partition] = start + len(batch)
        return batch

    def seek(self, partition: Partition, offset: int) -> None:
        if offset < self.positions[partition]:
            self.rewinds += 1
        self.positions[partition] = offset

    def seek_to_committed(self, partition: Partition) -> None:
        self.seek(partition, self.committed_offsets.get(partition, 0))

    def seek_to_beginning(self, partition: Partition) -> None:
        self.seek(partition, 0)

    def assignment(self) -> list[Partition]:
        return list(self._assigned)

    def committed(self, partition: Partition) -> int | None:
        return self.committed_offsets.get(partition)

    def lag(self) -> dict[Partition, int]:
        return {p: len(self.messages[p]) - self.positions[p] for p in self._assigned}

    # ------------------------------------------------------------------ producing

    def produce(self, topic: str, key: bytes | None, value: bytes, *, source: Source | None = None) -> None:
        if self.produce_error is not None:
            self.failed_produces += 1
            raise self.produce_error
        if (topic, source) in self.refuse_at_once:
            rejected = RejectedRecord(topic, source, RECORD_TOO_LARGE, "scripted: too large")
            raise RecordsRejected("refused at once (scripted)", rejected=[rejected])
        self._held.append(ProducedRecord(topic, key, value, source))

    def flush(self, timeout_s: float) -> None:
        self.flushes += 1
        if self._flush_errors:
            error = self._flush_errors.pop(0)
            if not isinstance(error, DeliveryPending):
                self._drop_held()  # delivery failed: those records are gone
            raise error
        if not self.exactly_once:
            self._deliver_held()

    def reset_producer(self) -> None:
        self._drop_held()

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        if self._commit_errors:
            raise self._commit_errors.pop(0)
        if self.exactly_once:
            self._deliver_held()  # the transaction: its records and its offsets together
        self.committed_offsets.update(offsets)
        self.commits.append(dict(offsets))

    def abort(self) -> None:
        if self.exactly_once:
            self._drop_held()

    def connected(self) -> bool:
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        self._drop_held()

    # ------------------------------------------------------------------ what a test reads

    @property
    def held(self) -> list[ProducedRecord]:
        """Records produced and neither delivered nor dropped yet."""
        return list(self._held)

    def delivered_to(self, topic: str) -> list[Any]:
        """The values delivered to ``topic``, decoded as JSON."""
        return [record.json() for record in self.delivered if record.topic == topic]

    def _deliver_held(self) -> None:
        held, self._held = self._held, []
        refused = [record for record in held if (record.topic, record.source) in self.refuse_later]
        if refused and self.exactly_once:
            self.dropped.extend(held)  # the transaction is refused whole
        else:
            self.delivered.extend(r for r in held if (r.topic, r.source) not in self.refuse_later)
            self.dropped.extend(refused)
        if refused:
            detail = "scripted: over the topic's max.message.bytes"
            rejected = [RejectedRecord(r.topic, r.source, RECORD_TOO_LARGE, detail) for r in refused]
            raise RecordsRejected(f"{len(refused)} refused (scripted)", rejected=rejected)

    def _drop_held(self) -> None:
        self.dropped.extend(self._held)
        self._held.clear()


def _ignore(partitions: list[Partition]) -> None:
    pass
