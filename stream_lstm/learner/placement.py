"""Whether learners built in this process keep their weights on the CPU, whatever their device.

Why: with ``--learner-process`` the service's own process builds the LSTM (fresh, or from a
checkpoint) only to hand it to the child that runs it. Built on a GPU there, it would make the
service's process open a CUDA context of its own (hundreds of MiB of GPU memory, seconds of
start-up) and copy every checkpoint to the GPU and back. Under :func:`learners_on_cpu` a learner
checks its ``device`` setting as usual but holds its tensors on the CPU; the setting itself is
kept, so the child that unpickles the learner puts it on that device.

:func:`learners_fall_back_to` names the device a learner restored from a checkpoint goes to when
this host lacks the checkpoint's own (a checkpoint written on a GPU host, resumed on one without).

No torch here: the service, which must not import torch, sets this for the learner module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ON_CPU: ContextVar[bool] = ContextVar("stream_lstm_learners_on_cpu", default=False)
_FALLBACK: ContextVar[str | None] = ContextVar("stream_lstm_learners_fall_back_to", default=None)


@contextmanager
def learners_on_cpu(enabled: bool = True) -> Iterator[None]:
    """Within the block, learners built or unpickled in this thread hold their tensors on the
    CPU (``enabled=False`` changes nothing).

    >>> with learners_on_cpu():
    ...     learners_kept_on_cpu()
    True
    >>> learners_kept_on_cpu()
    False
    """
    token = _ON_CPU.set(enabled or _ON_CPU.get())
    try:
        yield
    finally:
        _ON_CPU.reset(token)


def learners_kept_on_cpu() -> bool:
    """Whether a learner built now should hold its tensors on the CPU (see :func:`learners_on_cpu`)."""
    return _ON_CPU.get()


@contextmanager
def learners_fall_back_to(device: str | None) -> Iterator[None]:
    """Within the block, a learner restored from a checkpoint whose device this host does not
    have is restored on ``device`` instead (the service's ``--device``), and says so in the log;
    ``None`` changes nothing: such a checkpoint is refused.

    >>> with learners_fall_back_to("cpu"):
    ...     fallback_device()
    'cpu'
    >>> fallback_device() is None
    True
    """
    token = _FALLBACK.set(device)
    try:
        yield
    finally:
        _FALLBACK.reset(token)


def fallback_device() -> str | None:
    """The device of :func:`learners_fall_back_to`, if any."""
    return _FALLBACK.get()
