"""confluent-kafka's transactional calls are retried only when librdkafka calls the error retriable."""

from __future__ import annotations

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")

import itertools  # noqa: E402
import time  # noqa: E402

from stream_lstm.kafka.confluent_library import retry_retriable as _retry  # noqa: E402


def retry_retriable(call, what: str, *, attempts: int = 3, budget: float = 60.0):
    return _retry(call, what, timeout_s=5.0, deadline=time.monotonic() + budget, attempts=attempts)


KafkaError, KafkaException = confluent_kafka.KafkaError, confluent_kafka.KafkaException


def failing(errors: list[KafkaError]):
    """A call that raises ``errors`` in turn, then returns how many calls it took."""
    calls: list[float] = []

    def call(timeout: float) -> int:
        calls.append(timeout)
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


def test_retries_never_outlast_the_deadline() -> None:
    timeouts: list[float] = []

    def slow_timeout(timeout: float) -> None:
        timeouts.append(timeout)
        time.sleep(0.3)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "t", retriable=True))

    started = time.monotonic()
    with pytest.raises(KafkaException):
        _retry(slow_timeout, "committing", timeout_s=5.0, deadline=started + 1.0, attempts=10)
    assert time.monotonic() - started < 1.0 + 0.35  # stopped once too little time was left
    assert timeouts[0] <= 1.0 and all(b < a for a, b in itertools.pairwise(timeouts))
