"""A generator of keyed temporal streams whose labels depend on each key's own past.

Each key draws a fresh signal at every event. An event shows its signal as feature ``a`` (plus
noise) and a distracting feature ``b``; its label says whether the key's signal two events ago
plus half of the one before that was positive. The current features alone
say almost nothing about the label, and neither does the previous label much, so a model beats
chance only if it remembers each key's recent events. Keys interleave at random, timestamps
increase, and an optional feature ``c`` is present for only some keys.
"""

from __future__ import annotations

import csv
import itertools
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from stream_lstm.messages.events import Event


def temporal_stream(
    n_events: int,
    *,
    n_keys: int = 100,
    noise: float = 0.03,
    seed: int = 0,
    start_ts: float = 1_700_000_000.0,
) -> Iterator[Event]:
    """Yield ``n_events`` events of ``n_keys`` interleaved keys.

    Parameters
    ----------
    n_events
        How many events to yield.
    n_keys
        How many distinct keys (``"k0"``, ``"k1"``, ...).
    noise
        Probability that a label is flipped.
    seed
        Seed of the stream; the same seed gives the same events.
    start_ts
        Timestamp of the first event, in seconds.

    Examples
    --------
    >>> events = list(temporal_stream(20, n_keys=2, seed=1))
    >>> len(events), sorted({e.key for e in events}), all(e.label in (0, 1) for e in events)
    (20, ['k0', 'k1'], True)
    """
    if n_keys < 1:
        raise ValueError(f"n_keys must be at least 1, got {n_keys}")
    rng = random.Random(seed)
    history: list[list[float]] = [[0.0, 0.0] for _ in range(n_keys)]  # a two and one events ago
    ts = start_ts
    for _ in range(n_events):
        k = rng.randrange(n_keys)
        ts += rng.expovariate(1.0)
        two_ago, one_ago = history[k]
        label = int(two_ago + 0.5 * one_ago > 0)
        if rng.random() < noise:
            label = 1 - label
        signal = rng.gauss(0.0, 1.0)
        features = {"a": signal + 0.1 * rng.gauss(0.0, 1.0), "b": rng.gauss(0.0, 1.0)}
        if k % 3 == 0:
            features["c"] = rng.uniform(0.0, 1.0)
        history[k] = [one_ago, signal]
        yield Event(key=f"k{k}", ts=round(ts, 3), features=features, label=label)


def write_csv(events: Iterable[Event], path: str | Path) -> int:
    """Write events as a CSV with columns key, ts, label and one per feature; return the count.

    The feature columns are those of the first 1,000 events; a missing feature is an empty cell.
    """
    events = iter(events)
    head = list(itertools.islice(events, 1000))
    names = sorted({name for event in head for name in event.features})
    count = 0
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "ts", "label", *names])
        for event in itertools.chain(head, events):
            label = "" if event.label is None else event.label
            cells = [event.features.get(name, "") for name in names]
            writer.writerow([event.key, event.ts if event.ts is not None else "", label, *cells])
            count += 1
    return count
