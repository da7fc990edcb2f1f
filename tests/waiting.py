"""Waiting on a condition with a deadline: what the tests do instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str | Callable[[], str], interval: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``.

    ``what`` may be a function, called only on failure: a message that quotes a log then shows
    the log as it is at the deadline, not as it was when the wait began.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {described}")
        time.sleep(interval)
