"""Keep a client library's repeated log messages from flooding the service's log.

While the broker is away, kafka-python logs every failed reconnect of every connection, at ERROR:
about four lines a second, which bury the service's own message (logged once per change of
state) and set off alerts that match on ERROR. :class:`RepeatFilter` lets the first message of
each kind through, then at most one per interval, saying how many like it it held back.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence

_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """A handler filter: messages of the loggers under ``prefixes`` pass once per kind per interval.

    A message's kind is its logger, its level and its text with every number blanked out (ports,
    node ids and backoff times change from one repeat to the next). Other loggers pass untouched.

    Parameters
    ----------
    prefixes
        Logger names whose messages (and their children's) are filtered.
    interval_s
        After a message passes, others of its kind are held back for this long.
    clock
        Seconds, monotonic (tests pass a fake one).

    Examples
    --------
    >>> now = [0.0]
    >>> repeats = RepeatFilter(["kafka"], interval_s=60, clock=lambda: now[0])
    >>> def record(text):
    ...     return logging.LogRecord("kafka.conn", logging.ERROR, "", 0, text, (), None)
    >>> [repeats.filter(record(f"port {p} refused")) for p in (1, 2, 3)]
    [True, False, False]
    >>> now[0] = 61.0
    >>> passed = record("port 4 refused")
    >>> repeats.filter(passed), passed.getMessage()
    (True, 'port 4 refused (2 more like it in the last 61 s not shown)')
    """

    #: Kinds remembered at most; past it, the memory starts afresh (a few lines may repeat).
    MAX_KINDS = 1000

    def __init__(
        self,
        prefixes: Sequence[str],
        *,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)
        self.interval_s = interval_s
        self.clock = clock
        # Per kind: when one last passed, and how many were held back since.
        self._kinds: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not any(name == prefix or name.startswith(prefix + ".") for prefix in self.prefixes):
            return True
        message = record.getMessage()
        kind = (name, record.levelno, _DIGITS.sub("#", message))
        now = self.clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            return False
        if len(self._kinds) >= self.MAX_KINDS:
            self._kinds.clear()
        self._kinds[kind] = [now, 0]
        if seen is not None and seen[1]:
            record.msg = f"{message} ({seen[1]:.0f} more like it in the last {now - seen[0]:.0f} s not shown)"
            record.args = ()
        return True


def quiet_repeats(prefixes: Sequence[str], *, interval_s: float = 60.0) -> None:
    """Put a :class:`RepeatFilter` of its own on every handler of the root logger (a filter
    shared by two handlers would hold a record back from the second one)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter(prefixes, interval_s=interval_s))
