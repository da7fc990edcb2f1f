"""Which torch device a ``device`` setting names, checked against what this host has."""

from __future__ import annotations

import torch

from stream_lstm.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when a GPU is visible, else the CPU; anything else is used as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return resolved
