"""Starting and killing a child process so that it never outlives the Python process that owns it.

The embedded broker (:mod:`stream_lstm.kafka.broker`) runs in a process group of its own, gets a
parent-death signal on Linux (:func:`die_with_parent`), and is forked only from a thread that
lasts as long as the process (:func:`popen_from_lasting_thread`), because that signal is tied to
the forking thread. :func:`free_port` finds a port for it to listen on.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    The port is found by binding port 0 and closing the socket, so another process may take it
    before the caller binds it; :meth:`EmbeddedBroker.start` reports that case clearly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports on ``host`` that were free a moment ago.

    All are bound at once before any is released: ports found one after another may repeat, as
    the kernel may hand a port just released to the next bind of port 0 (a broker with two
    listeners on one port then refuses to start).
    """
    with contextlib.ExitStack() as stack:
        new = socket.socket
        sockets = [stack.enter_context(new(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def kill_process_group(pgid: int) -> None:
    """SIGKILL a whole process group, ignoring one that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when its parent dies (Linux only).

    ``prctl(PR_SET_PDEATHSIG)`` ties the child to the *thread* that forked it: the signal fires
    when that thread exits, even while the rest of the process lives on.
    :func:`popen_from_lasting_thread` therefore forks only from a thread that lasts as long as the
    process.

    The parent may die between the fork and the ``prctl`` call, and then no signal would ever
    come: the child checks that its parent is still the process that forked it and exits at once
    if not. Returns ``None`` where there is no ``prctl`` (not Linux, or no libc to call it in).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()  # taken before the fork: in the child it would be the child's own pid
    death_signal = int(signal.SIGKILL)  # the storage is in memory: nothing to shut down cleanly

    def set_parent_death_signal() -> None:  # runs in the child, between fork and exec
        # A failing prctl (a seccomp filter, say) leaves the broker as it was before: running.
        prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the parent died before prctl: nobody is left to stop this broker

    return set_parent_death_signal


_spawner_lock = threading.Lock()
_spawner: tuple[int, queue.SimpleQueue[Any]] | None = None  # (owner pid, requests)


def popen_from_lasting_thread(command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` from a thread that lives as long as the process.

    The main thread does; any other thread hands the call to a daemon thread of this module that
    never exits, so that the parent-death signal (tied to the forking thread) fires only when the
    whole process dies, not when the thread that started the broker ends.
    """
    if options.get("preexec_fn") is None or threading.current_thread() is threading.main_thread():
        return subprocess.Popen(command, **options)
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner[0] != os.getpid():  # none yet, or one of a forked parent's
            requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
            threading.Thread(
                target=_serve_popen_requests, args=(requests,), name="stream-lstm-broker-spawner", daemon=True
            ).start()
            _spawner = (os.getpid(), requests)
        requests = _spawner[1]
    done: Future[subprocess.Popen[bytes]] = Future()
    requests.put((command, options, done))
    return done.result()


def _serve_popen_requests(requests: queue.SimpleQueue[Any]) -> None:
    while True:
        command, options, done = requests.get()
        try:
            done.set_result(subprocess.Popen(command, **options))
        except BaseException as error:  # handed back to the thread that asked
            done.set_exception(error)
