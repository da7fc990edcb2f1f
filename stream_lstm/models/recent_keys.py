"""Per-key state kept for the most recently seen keys only: what the keyed baselines share."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TypeVar

Value = TypeVar("Value")


def remember(stored: OrderedDict[str, Value], entries: Iterable[tuple[str, Value]], max_keys: int) -> None:
    """Store ``entries`` in order as the most recently seen keys of ``stored`` (least recently
    seen first), then forget the least recently seen beyond ``max_keys``.

    >>> stored = OrderedDict(a=1, b=2)
    >>> remember(stored, [("a", 3), ("c", 4)], max_keys=2)
    >>> list(stored.items())
    [('a', 3), ('c', 4)]
    """
    for key, value in entries:
        stored[key] = value
        stored.move_to_end(key)
    while len(stored) > max_keys:
        stored.popitem(last=False)
