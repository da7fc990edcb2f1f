"""stream-lstm: an online LSTM for ordered event streams, compared live with simple baselines.

``from stream_lstm import LSTMClassifier`` gives the LSTM as a river classifier
(:mod:`stream_lstm.api.classifier`). It is imported when first asked for, so that importing
the package (the command line, the Kafka loop) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = ["LSTMClassifier", "__version__"]

if TYPE_CHECKING:
    from stream_lstm.api.classifier import LSTMClassifier


def __getattr__(name: str) -> Any:
    if name == "LSTMClassifier":
        from stream_lstm.api.classifier import LSTMClassifier

        return LSTMClassifier
    raise AttributeError(f"module 'stream_lstm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
