"""The LSTM learner: torch lives here and nowhere above the learner and evaluation layers."""

from stream_lstm.learner.lstm_learner import LSTMLearner, resolve_device

__all__ = ["LSTMLearner", "resolve_device"]


def set_cpu_threads(threads: int) -> None:
    """Let torch use ``threads`` CPU threads; the small batched LSTM is fastest on one or two."""
    import torch

    torch.set_num_threads(threads)


__all__ += ["set_cpu_threads"]
