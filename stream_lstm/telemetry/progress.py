"""A progress line for long runs: redrawn in place on a terminal, a line now and then elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class ProgressLine:
    """Shows ``done/total``, the rate and a caller's status text, at most every ``interval`` s.

    On a terminal the line is redrawn in place; in a log (not a TTY) a full line is written every
    ``log_interval`` seconds so that CI output stays readable.
    """

    def __init__(
        self,
        total: int | None,
        *,
        stream: TextIO | None = None,
        interval: float = 0.2,
        log_interval: float = 10.0,
        enabled: bool = True,
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interactive = self.stream.isatty()
        self.interval = interval if self.interactive else log_interval
        self.started = time.monotonic()
        self._last_shown = 0.0
        self._shown_any = False

    def update(self, done: int, status: Callable[[], str] | None = None, *, force: bool = False) -> None:
        """Show progress if ``interval`` has passed since the last time (or ``force``).

        ``status`` is called only when the line is drawn, so costly status text is cheap.
        """
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_shown < self.interval:
            return
        self._last_shown = now
        elapsed = max(now - self.started, 1e-9)
        head = f"{done:,}/{self.total:,} ({100 * done / self.total:.0f}%)" if self.total else f"{done:,}"
        text = status() if status is not None else ""
        line = f"{head}  {done / elapsed:,.0f} events/s  {text}".rstrip()
        if self.interactive:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown_any = True

    def close(self) -> None:
        """End the in-place line so that what follows starts on a new line."""
        if self.enabled and self.interactive and self._shown_any:
            self.stream.write("\n")
            self.stream.flush()
