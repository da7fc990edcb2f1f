"""A micro-batch of events as columns: per-key grouping and per-key carried values, vectorised.

Why: at the batch sizes a GPU needs (thousands of events), a Python loop over the events costs
more than the LSTM itself. These helpers turn the batch into NumPy arrays with a few C-level
passes (``map``, ``dict.fromkeys``, ``np.array`` of a list) and do the per-key bookkeeping (which event
is the how-manieth of its key, what label and timestamp a key had before each event) with array
operations instead of a loop.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from stream_lstm.messages.categories import category_probes
from stream_lstm.messages.events import Event

#: Up to this many events, a batch is grouped by key in Python.
SMALL_BATCH = 64

_KEY = attrgetter("key")
_TS = attrgetter("ts")
_LABEL = attrgetter("label")
_FEATURES = attrgetter("features")
_CATEGORIES = attrgetter("categories")


@dataclass(frozen=True)
class KeyGroups:
    """How the events of a batch fall into keys.

    Key ``j`` (in order of first appearance) has the state in ``slots[j]`` and ``counts[j]``
    events; event ``i`` belongs to key ``row[i]`` and is the ``rank[i]``-th (from 0) event of
    that key in the batch. ``order`` lists the events key by key (stable: in batch order within
    a key) and ``starts[j]`` is where key ``j`` begins in it.
    """

    slots: np.ndarray
    row: np.ndarray
    rank: np.ndarray
    counts: np.ndarray
    order: np.ndarray
    starts: np.ndarray


def group_by_slot(event_slots: np.ndarray) -> KeyGroups:
    """Group a batch's events by their key's slot, in order of each key's first event.

    >>> g = group_by_slot(np.array([7, 3, 7]))
    >>> g.slots.tolist(), g.row.tolist(), g.rank.tolist(), g.counts.tolist()
    ([7, 3], [0, 1, 0], [0, 0, 1], [2, 1])
    """
    n_events = event_slots.size
    # Small batches are grouped in Python: np.unique and the sorts around it cost more there.
    if n_events <= SMALL_BATCH:
        slot_list = event_slots.tolist()
        n_keys = len(set(slot_list))
        if n_keys == n_events:
            return _every_key_once(event_slots)
        if n_keys == 1:  # a stream without keys, or a batch of one key's events
            return _one_key(event_slots)
        return _grouped_in_python(slot_list)
    distinct, first, inverse, counts = np.unique(
        event_slots, return_index=True, return_inverse=True, return_counts=True
    )
    if distinct.size == n_events:  # every key once: the common case with many keys
        return _every_key_once(event_slots)
    by_first = np.argsort(first)  # row j is distinct[by_first[j]]
    row_of_distinct = np.empty_like(by_first)
    row_of_distinct[by_first] = np.arange(by_first.size)
    row = row_of_distinct[inverse.reshape(-1)]
    counts = counts[by_first]
    order = np.argsort(row, kind="stable")
    starts = np.cumsum(counts) - counts
    rank = np.empty(n_events, dtype=np.int64)
    rank[order] = np.arange(n_events) - starts[row[order]]
    return KeyGroups(distinct[by_first], row, rank, counts, order, starts)


def _grouped_in_python(slot_list: list[int]) -> KeyGroups:
    """:func:`group_by_slot` by a loop over a few events."""
    rows: dict[int, int] = {}
    row = [rows.setdefault(slot, len(rows)) for slot in slot_list]
    counts = [0] * len(rows)
    rank = []
    for r in row:
        rank.append(counts[r])
        counts[r] += 1
    row_array, count_array = np.array(row, dtype=np.int64), np.array(counts, dtype=np.int64)
    return KeyGroups(
        np.array(list(rows), dtype=np.int64),
        row_array,
        np.array(rank, dtype=np.int64),
        count_array,
        np.argsort(row_array, kind="stable"),
        np.cumsum(count_array) - count_array,
    )


def _one_key(event_slots: np.ndarray) -> KeyGroups:
    every = np.arange(event_slots.size, dtype=np.int64)
    first = np.zeros(1, np.int64)
    counts = np.full(1, event_slots.size, np.int64)
    return KeyGroups(
        event_slots[:1].astype(np.int64), np.zeros(event_slots.size, np.int64), every, counts, every, first
    )


def _every_key_once(event_slots: np.ndarray) -> KeyGroups:
    every = np.arange(event_slots.size, dtype=np.int64)
    ones = np.ones(event_slots.size, np.int64)
    return KeyGroups(event_slots, every, np.zeros(event_slots.size, np.int64), ones, every, every)


def keys(events: Sequence[Event]) -> list[str]:
    """Each event's key."""
    return list(map(_KEY, events))


def optional_floats(values: Sequence[float | int | None]) -> np.ndarray:
    """``values`` as float64, ``None`` as NaN."""
    return np.array(values, dtype=np.float64)


def timestamps(events: Sequence[Event]) -> np.ndarray:
    """Each event's ``ts`` (NaN when it has none; a NaN ``ts``, which the parsers refuse, counts
    as none)."""
    return optional_floats(list(map(_TS, events)))


def labels(events: Sequence[Event]) -> list[int | None]:
    """Each event's label (``None`` when it has none)."""
    return list(map(_LABEL, events))


def carry_forward(
    values: np.ndarray, missing: np.ndarray, groups: KeyGroups, initial: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per key, the last present value before each event, and after the whole batch.

    ``values[i]`` is event ``i``'s value, absent where ``missing[i]``; ``initial[j]`` is key
    ``j``'s value before the batch. Returns ``(before, after)``: ``before[i]`` is the value of the
    latest earlier event of the same key that has one, else ``initial`` of its key;
    ``after[j]`` is the same for a point after the key's last event.

    >>> g = group_by_slot(np.array([0, 1, 0, 0]))
    >>> v = np.array([5.0, 7.0, np.nan, 6.0])
    >>> before, after = carry_forward(v, np.isnan(v), g, np.array([1.0, 2.0]))
    >>> before.tolist(), after.tolist()
    ([1.0, 2.0, 5.0, 5.0], [6.0, 7.0])
    """
    if groups.counts.size == values.size:  # every key once: nothing to carry within the batch
        return initial.copy(), np.where(missing, initial, values)
    order, starts = groups.order, groups.starts
    n_events = values.size
    sorted_values = values[order]
    sorted_row = groups.row[order]
    positions = np.arange(n_events)
    # The latest position up to and including each one that holds a value (-1: none yet).
    latest = np.maximum.accumulate(np.where(missing[order], -1, positions))
    previous = np.concatenate([[-1], latest[:-1]])
    own = previous >= starts[sorted_row]  # found within the same key
    before = np.empty(n_events, dtype=values.dtype)
    before[order] = np.where(own, sorted_values[np.maximum(previous, 0)], initial[sorted_row])
    last = latest[starts + groups.counts - 1]
    after = np.where(last >= starts, sorted_values[np.maximum(last, 0)], initial)
    return before, after


def plain_feature_maps(events: Sequence[Event]) -> list[dict[str, float]] | None:
    """Each event's features, when all of them are plain ``dict`` objects (else ``None``)."""
    maps = list(map(_FEATURES, events))
    return maps if set(map(type, maps)) == {dict} else None


def feature_names(maps: list[dict[str, float]]) -> set[str]:
    """Every feature name that occurs in ``maps``."""
    return set(itertools.chain.from_iterable(maps))


def feature_values(maps: list[dict[str, float]], name: str) -> np.ndarray:
    """Feature ``name`` of each map, NaN where it is absent.

    >>> feature_values([{"x": 1.0}, {"y": 2.0}], "x").tolist()
    [1.0, nan]
    """
    values = map(dict.get, maps, itertools.repeat(name), itertools.repeat(math.nan))
    return np.array(list(values), dtype=np.float64)


def category_maps(events: Sequence[Event]) -> list[Mapping[str, str]]:
    """Each event's categories."""
    return list(map(_CATEGORIES, events))


def category_rows_and_buckets(maps: list[Mapping[str, str]], buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Every category of ``maps`` as (the index of its map, a bucket among ``buckets``), once for
    each of its buckets (:func:`~stream_lstm.messages.categories.category_probes`).

    >>> rows, found = category_rows_and_buckets([{}, {"colour": "red", "size": "L"}], 4)
    >>> pairs = [("colour", "red"), ("size", "L")]
    >>> rows.tolist(), found.tolist() == [b for n, v in pairs for b in category_probes(n, v, 4)]
    ([1, 1, 1, 1], True)
    """
    rows: list[int] = []
    found: list[int] = []
    for row, categories in enumerate(maps):
        if categories:
            for name, value in categories.items():
                for bucket in category_probes(name, value, buckets):
                    rows.append(row)
                    found.append(bucket)
    return np.array(rows, dtype=np.int64), np.array(found, dtype=np.int64)
