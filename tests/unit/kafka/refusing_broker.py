"""A broker that refuses records over a size limit, as the unit tests of the clients play it.

The embedded broker enforces no size limit, so the broker's own refusals (which come back
asynchronously, in delivery reports) are played by fake producers (in the test modules of each
client) that deliver only values up to :data:`BROKER_LIMIT`. These are what they share: the
limit, the settings of a client in front of them, and a clock that moves only when a producer
flushes (for the clients' search for culprits run out of time).
"""

from __future__ import annotations

from typing import Any

import pytest

from stream_lstm.kafka.interface import KafkaSettings

#: The fake brokers refuse any record whose value is longer than this.
BROKER_LIMIT = 100
BIG = b"x" * (BROKER_LIMIT + 1)
OUT = "out"


def settings(*, exactly_once: bool, client: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers="127.0.0.1:1",
        input_topic="in",
        output_topic=OUT,
        dead_letter_topic="dead",
        group_id="g",
        exactly_once=exactly_once,
        transactional_id="t" if exactly_once else None,
        client=client,
    )


def source(offset: int) -> tuple[str, int, int]:
    return ("in", 0, offset)


class Clock:
    """Stands for a client module's ``time``: it moves on only when the producer flushes."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def one_second_per_flush(monkeypatch: pytest.MonkeyPatch, module: Any, producer: Any) -> None:
    """Make each flush of ``producer`` take a second of ``module``'s time."""
    clock = Clock()
    monkeypatch.setattr(module, "time", clock)
    flush = producer.flush

    def slow_flush(*args: Any, **kwargs: Any) -> Any:
        clock.now += 1.0
        return flush(*args, **kwargs)

    producer.flush = slow_flush


#: Two culprits, one at each end: a search out of time after four sends has found only the first
#: (sends: all six, the first half, its culprit alone, the innocent rest of that half).
CULPRITS_AT_BOTH_ENDS = [BIG, b"a", b"b", b"c", b"d", BIG + b"y"]
