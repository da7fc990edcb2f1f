"""Fixtures of the Python API's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """River learns one row at a time: tensors far too small for threads, whose hand-offs only
    cost time (much of it on a loaded 2-core machine). The thread count is put back after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
