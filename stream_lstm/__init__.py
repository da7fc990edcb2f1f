"""stream-lstm: an online LSTM for ordered event streams, compared live with simple baselines."""

__version__ = "0.2.0"
