"""The learner on a CUDA GPU: what it computes, and how often the host waits for the device.

Skipped where torch sees no GPU (CI has none); run on a GPU machine with
``python -m pytest tests/unit/test_cuda_learner.py``.
"""

from __future__ import annotations

import random
import subprocess
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.transfer import PinnedStaging
from stream_lstm.messages.events import Event

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


def messy_stream(n_events: int, n_keys: int, seed: int) -> Iterator[Event]:
    """Keyed events with what the learner must handle: missing labels, missing timestamps,
    optional and late-appearing features, keys that come back many times within one batch."""
    rng = random.Random(seed)
    ts = 0.0
    for i in range(n_events):
        ts += rng.expovariate(1.0)
        features = {"x": rng.gauss(0.0, 1.0), "y": rng.uniform(-5.0, 5.0)}
        if rng.random() < 0.3:
            features["z"] = rng.random()
        if i > n_events // 2 and rng.random() < 0.2:
            features["late"] = rng.gauss(3.0, 1.0)
        yield Event(
            key=f"k{rng.randrange(n_keys)}",
            ts=None if rng.random() < 0.1 else ts,
            features=features,
            label=None if rng.random() < 0.15 else int(features["x"] + rng.gauss(0.0, 0.5) > 0),
        )


def batches(events: list[Event], sizes: list[int]) -> Iterator[list[Event]]:
    start = 0
    for size in sizes:
        yield events[start : start + size]
        start += size


def test_the_gpu_predicts_and_learns_what_the_cpu_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # TF32 would round cuDNN's matrix products to 10-bit mantissas (torch's own matrix products
    # keep float32 by default); without it both devices compute in float32 and differ only by the
    # order of their sums.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    sizes = [1, 7, 64, 3, 256, 1, 512, 64, 2048, 16]  # general, steady-state and single-event paths
    events = list(messy_stream(sum(sizes), n_keys=40, seed=1))
    learners = {
        device: LSTMLearner(device=device, hidden_size=16, tbptt_steps=4, seed=3)
        for device in ("cpu", "cuda")
    }
    for batch in batches(events, sizes):
        predictions = {}
        for device, learner in learners.items():
            predictions[device] = learner.predict_batch(batch)
            learner.learn_batch(batch)
        np.testing.assert_allclose(predictions["cuda"], predictions["cpu"], atol=2e-4)
    cpu, gpu = learners["cpu"], learners["cuda"]
    assert (gpu.steps, gpu.events_learned, gpu.events_seen) == (
        cpu.steps,
        cpu.events_learned,
        cpu.events_seen,
    )
    for mine, theirs in zip(gpu.network.parameters(), cpu.network.parameters(), strict=True):
        np.testing.assert_allclose(mine.detach().cpu().numpy(), theirs.detach().numpy(), atol=2e-4)
    keys = sorted(cpu.tracked_keys())
    assert sorted(gpu.tracked_keys()) == keys
    exported = gpu.export_keys(keys), cpu.export_keys(keys)
    for name in ("h0", "c0", "window"):
        np.testing.assert_allclose(exported[0][name].numpy(), exported[1][name].numpy(), atol=2e-4)


def synchronisations(learner: LSTMLearner, batch: list[Event]) -> int:
    """How many times predict + learn of ``batch`` made the host wait for the device."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            learner.predict_batch(batch)
            learner.learn_batch(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(warning.message) for warning in caught)


@pytest.mark.parametrize("n_keys", [1, 1000, 100_000])
def test_the_host_waits_for_the_gpu_once_per_batch_whatever_its_size(n_keys: int) -> None:
    # Once: the probabilities come back to the host. A count that grows with the batch would be a
    # per-event wait; a copy from pageable memory would add one per index array.
    learner = LSTMLearner(device="cuda", max_keys=100_000)
    events = list(messy_stream(20_000, n_keys=n_keys, seed=2))
    for batch in batches(events, [256] * 20):  # warm: full windows for the few-key streams
        learner.predict_batch(batch)
        learner.learn_batch(batch)
    rest = batches(events[5120:], [64, 4096, 1, 4096])
    counts = [(len(batch), synchronisations(learner, batch)) for batch in rest]
    assert counts == [(64, 1), (4096, 1), (1, 1), (4096, 1)]


def test_the_pinned_staging_buffer_delivers_every_array_intact_through_wraps_and_growth() -> None:
    # A small buffer, so that it fills, starts again at its beginning, and grows for a large array
    # while earlier copies may still be in flight: every tensor must arrive as its array was.
    staging = PinnedStaging(torch.device("cuda", torch.cuda.current_device()), min_buffer_bytes=4096)
    rng = np.random.default_rng(7)
    sent = [(np.zeros((0, 4), np.int64), staging.copy(np.zeros((0, 4), np.int64)))]  # before any buffer
    for i in range(300):
        size = int(rng.integers(0, 2_000 if i != 150 else 50_000))
        kind = [np.int64, np.float32, np.float64, np.int8, np.bool_][i % 5]
        array = (
            (rng.standard_normal(size) * 100).astype(kind).reshape(-1, 1) if size else np.zeros((0, 3), kind)
        )
        sent.append((array.copy(), staging.copy(array)))
        array[...] = 0  # the host's copy may change at once: the staged bytes are the buffer's
    for array, tensor in sent:
        assert tensor.device.type == "cuda" and tuple(tensor.shape) == array.shape
        np.testing.assert_array_equal(tensor.cpu().numpy(), array)


def test_a_learner_built_for_another_process_opens_no_cuda_context_here() -> None:
    """The service's process builds the learner that the learner process runs on the GPU: with
    learners_on_cpu it must not initialise CUDA (a context of its own: hundreds of MiB of GPU
    memory). Checked in a fresh interpreter, since this one has CUDA initialised already."""
    script = """
import pickle, torch
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.placement import learners_on_cpu
with learners_on_cpu():
    saved = pickle.dumps(pickle.loads(pickle.dumps(LSTMLearner(device="cuda"))))
assert not torch.cuda.is_initialized(), "building on the CPU initialised CUDA"
assert pickle.loads(saved).torch_device.type == "cuda"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
