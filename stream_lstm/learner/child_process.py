"""Starting a helper process that leaves Ctrl-C to its parent."""

from __future__ import annotations

import signal
import threading
from multiprocessing.process import BaseProcess


def start_without_ctrl_c(process: BaseProcess) -> None:
    """Start ``process`` with Ctrl-C ignored, which the new interpreter keeps.

    The parent handles Ctrl-C and stops the child, also while the child is still importing.
    Only the main thread may change signal handlers; started from another thread, the child
    ignores Ctrl-C once its own code says so.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        process.start()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
