"""confluent-kafka's transactional calls are retried only when librdkafka calls the error retriable."""

from __future__ import annotations

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")

from stream_lstm.confluent_client import retry_retriable  # noqa: E402

KafkaError, KafkaException = confluent_kafka.KafkaError, confluent_kafka.KafkaException


def failing(errors: list[KafkaError]):
    """A call that raises ``errors`` in turn, then returns how many calls it took."""
    calls = []

    def call() -> int:
        calls.append(1)
        if len(calls) <= len(errors):
            raise KafkaException(errors[len(calls) - 1])
        return len(calls)

    return call


def timeout(**flags: bool) -> KafkaError:
    return KafkaError(KafkaError._TIMED_OUT, "timed out", **flags)


def test_a_retriable_error_is_tried_again() -> None:
    assert retry_retriable(failing([timeout(retriable=True)]), "committing") == 2


def test_an_error_that_needs_an_abort_is_raised_at_once() -> None:
    call = failing([timeout(retriable=True, txn_requires_abort=True)])
    with pytest.raises(KafkaException):
        retry_retriable(call, "committing")


def test_a_non_retriable_error_is_raised_at_once() -> None:
    with pytest.raises(KafkaException):
        retry_retriable(failing([timeout(fatal=True)]), "committing")


def test_retries_stop_after_the_last_attempt() -> None:
    call = failing([timeout(retriable=True)] * 3)
    with pytest.raises(KafkaException):
        retry_retriable(call, "committing", attempts=3)
    assert retry_retriable(failing([timeout(retriable=True)] * 2), "committing", attempts=3) == 3
