"""The embedded broker's output file, and the end of it that its error messages quote."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import IO

_LOG_TAIL_LINES = 25
_LOG_TAIL_BYTES = 8192


class BrokerLog:
    """The file that receives a broker's stdout and stderr, appended to at every start.

    Without a ``path`` the output is discarded, and :meth:`excerpt` says so instead of quoting it.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None
        self._offset = 0  # where the current run's output starts in path

    def open(self, command: list[str]) -> IO[bytes] | int:
        """Where the run of ``command`` writes: the file, opened after a line naming the command,
        or ``subprocess.DEVNULL`` without a path."""
        if self.path is None:
            return subprocess.DEVNULL
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "ab")  # noqa: SIM115 - open while the broker runs
        self._offset = self._handle.tell()
        self._handle.write(f"--- stream-lstm: {' '.join(command)}\n".encode())
        self._handle.flush()
        return self._handle

    def excerpt(self) -> str:
        """The end of the current run's output, formatted for an error message."""
        if self.path is None:
            return " (its output was discarded; pass log_path to keep it)"
        if self._handle is not None:
            with contextlib.suppress(OSError, ValueError):
                self._handle.flush()
        try:
            with open(self.path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(log.tell() - _LOG_TAIL_BYTES, self._offset))
                text = log.read().decode("utf-8", errors="replace")
        except OSError as error:
            return f" (cannot read its log {self.path}: {error})"
        lines = [line for line in text.splitlines() if line.strip()][-_LOG_TAIL_LINES:]
        if not lines:
            return f"; its log {self.path} is empty"
        body = "\n".join(f"    {line}" for line in lines)
        return f"; last lines of {self.path}:\n{body}"

    def close(self) -> None:
        """Close the file (the broker has exited)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
