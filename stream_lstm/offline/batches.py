"""Cutting a stream of events into the micro-batches that the models predict and learn."""

from __future__ import annotations

from collections.abc import Iterable

from stream_lstm.messages.events import Event


def batches(events: Iterable[Event], size: int) -> Iterable[list[Event]]:
    """Consecutive micro-batches of ``size`` events (the last one may be shorter)."""
    batch: list[Event] = []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
