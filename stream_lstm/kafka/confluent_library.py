"""What the confluent client needs to know of confluent-kafka (librdkafka), shared by its modules.

Which library errors refuse a record for good (and which only say that another record of the batch
was at fault), how a record is queued while librdkafka's local queue is full, how a client is
created so that a refused configuration is a :class:`~stream_lstm.errors.ConfigError`, and how a
transactional call is tried again while librdkafka calls its error retriable. The only modules that
import confluent-kafka are this one, :mod:`stream_lstm.kafka.confluent`,
:mod:`stream_lstm.kafka.confluent_sender` and :mod:`stream_lstm.kafka.confluent_writer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from stream_lstm.errors import ConfigError
from stream_lstm.kafka.interface import BLOCKING_TIMEOUT_MS, INVALID_RECORD, RECORD_TOO_LARGE

log = logging.getLogger(__name__)

#: How long a blocking librdkafka call (committed offsets, transactions) may wait, in seconds.
BLOCKING_TIMEOUT_S = BLOCKING_TIMEOUT_MS / 1000

#: Error codes that refuse a record for good, by the code of :class:`RejectedRecord` they
#: become. librdkafka raises MSG_SIZE_TOO_LARGE from ``produce`` for a record over
#: ``message.max.bytes``; the broker's own refusals arrive in delivery reports, for the whole
#: batch (librdkafka does not split it), so several of one partition are only suspects.
#: (INVALID_MSG, i.e. CORRUPT_MESSAGE, is a CRC failure of a batch, which Java retries;
#: INVALID_TIMESTAMP means this host's clock is off: the records carry it.)
_REJECTIONS = {
    KafkaError.MSG_SIZE_TOO_LARGE: RECORD_TOO_LARGE,
    KafkaError.RECORD_LIST_TOO_LARGE: RECORD_TOO_LARGE,
    KafkaError.INVALID_RECORD: INVALID_RECORD,
}

#: A record failed only because another of its batch was invalid (KIP-467): sent again, it goes.
INNOCENT = KafkaError._INVALID_DIFFERENT_RECORD

#: Failures an aborted transaction gives the records it had not sent yet: not their fault.
ABORTED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT, INNOCENT})

#: librdkafka's limit on one record (``message.max.bytes``, its default) and what it adds to
#: key and value to check it (measured: a value of ``limit - 36 - len(key)`` bytes is the largest
#: ``produce`` accepts).
MESSAGE_MAX_BYTES = 1_000_000
RECORD_OVERHEAD = 36


def rejection(error: KafkaError | None) -> str | None:
    """The :class:`RejectedRecord` code of an error that refuses a record for good, else ``None``."""
    if error is None or error.fatal():
        return None
    return _REJECTIONS.get(error.code())


def retry_retriable(
    call: Callable[[float], Any], what: str, *, timeout_s: float, deadline: float, attempts: int = 3
) -> Any:
    """Run a transactional call, again while librdkafka says its error is retriable (a timeout,
    say), as its documentation asks. ``call`` gets the seconds it may block: ``timeout_s``, or
    less as ``deadline`` (``time.monotonic()``) nears, so retries never make the whole longer.
    An error that requires an abort, a fatal one, or the last possible attempt's is raised."""
    for attempt in range(1, attempts + 1):
        remaining = deadline - time.monotonic()
        try:
            return call(max(min(timeout_s, remaining), 0.1))
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            retriable = isinstance(kafka_error, KafkaError) and kafka_error.retriable()
            out_of_time = deadline - time.monotonic() < 0.5
            if not retriable or kafka_error.txn_requires_abort() or attempt == attempts or out_of_time:
                raise
            log.warning("%s: %s; trying again (%d of %d)", what, kafka_error, attempt + 1, attempts)
    raise AssertionError("unreachable")


def produce_waiting(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes,
    on_delivery: Callable[[KafkaError | None, Any], None],
) -> None:
    """Queue one record, waiting while librdkafka's local queue is full."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            return
        except BufferError:  # the local queue is full: serve delivery reports, then retry
            producer.poll(0.05)


def create_client(kind: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> Any:
    """A librdkafka client; a configuration it refuses is a :class:`ConfigError`, not an outage."""
    try:
        return kind(config)
    except KafkaException as error:
        raise ConfigError(f"confluent-kafka refused the configuration: {error.args[0].str()}") from None
