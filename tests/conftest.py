"""Shared fixtures and helpers of the test suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ELEC2 = SHARED_DATA / "elec2.csv"


@pytest.fixture
def elec2_path() -> Path:
    """The Electricity stream from ../shared/data; tests that need it skip when it is absent."""
    if not ELEC2.is_file():
        pytest.skip(f"Elec2 data not found at {ELEC2} (it lives in the project's shared/ folder)")
    return ELEC2


#: Every test starts with torch on one thread: the tests' tensors are small, two test workers
#: share the CPUs (``pytest -n 2``), and a result then never depends on a thread count's rounding.
TEST_TORCH_THREADS = 1
torch.set_num_threads(TEST_TORCH_THREADS)


@pytest.fixture(autouse=True)
def torch_threads_put_back() -> Iterator[None]:
    """Put torch's thread pool back to :data:`TEST_TORCH_THREADS` after each test. ``evaluate``
    and ``run`` size it (``--torch-threads``) in the process that calls them, the tests' own; left
    so, a later test in the same worker would run on another thread count, whose rounding
    differs, and a result that depends on it would depend on which tests ran before."""
    yield
    if torch.get_num_threads() != TEST_TORCH_THREADS:
        torch.set_num_threads(TEST_TORCH_THREADS)
