"""The LSTM learner alone: events/s by key count and batch size, and memory per tracked key.

Usage: ``python benchmarks/bench_learner.py [--device cpu|cuda] [--events N] [--keys 1,1000,100000]
[--batch-sizes 1,32,256,4096] [--million-keys]``. Memory per key is measured from the key-state
tensors and arrays; ``--million-keys`` also reports the process's resident memory after tracking
1,000,000 keys.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine

from stream_lstm.generator import temporal_stream
from stream_lstm.learner import LSTMLearner, set_cpu_threads
from stream_lstm.report import render_table


def key_state_bytes(learner: LSTMLearner) -> int:
    """Bytes of per-key state the store holds (its allocated slots)."""
    store = learner.keys
    tensors = (store.h0, store.c0, store.window)
    arrays = (store.window_len, store.prev_label, store.last_ts)
    return sum(t.element_size() * t.nelement() for t in tensors) + sum(a.nbytes for a in arrays)


def rate(device: str, keys: int, batch: int, events: int) -> float:
    learner = LSTMLearner(device=device, max_keys=max(100_000, keys, batch))
    stream = list(temporal_stream(events, n_keys=keys, seed=2))
    warm = stream[: min(len(stream), 4 * batch)]
    for start in range(0, len(warm), batch):  # first calls allocate and pick kernels
        learner.predict_proba_many(warm[start : start + batch])
        learner.learn_many(warm[start : start + batch])
    started = time.perf_counter()
    for start in range(0, len(stream), batch):
        part = stream[start : start + batch]
        learner.predict_proba_many(part)
        learner.learn_many(part)
    if learner.torch_device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    return len(stream) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--keys", default="1,1000,100000")
    parser.add_argument("--batch-sizes", default="1,32,256,4096")
    parser.add_argument("--million-keys", action="store_true")
    args = parser.parse_args()
    set_cpu_threads(1)
    print(f"Machine: {describe_machine()}; device {args.device}", flush=True)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    for keys in (int(k) for k in args.keys.split(",")):
        cells = []
        for batch in sizes:
            events = min(args.events, 2_000) if batch == 1 else args.events
            cells.append(f"{rate(args.device, keys, batch, events):,.0f}")
            print(f"  {keys:,} keys, batch {batch}: {cells[-1]} events/s", flush=True)
        rows.append([f"{keys:,}", *cells])
    print("\nLearner events/s (predict + learn), by keys and batch size\n")
    print(render_table(["keys", *(f"batch {b}" for b in sizes)], rows))

    learner = LSTMLearner(device=args.device, max_keys=1_000_000)
    tracked = 100_000 if not args.million_keys else 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stream = temporal_stream(tracked, n_keys=tracked, seed=3)
    batch: list = []
    for event in stream:  # every key once: the store ends up tracking `tracked` keys
        batch.append(event)
        if len(batch) == 4096:
            learner.predict_proba_many(batch)
            learner.learn_many(batch)
            batch = []
    if batch:
        learner.predict_proba_many(batch)
        learner.learn_many(batch)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_key = key_state_bytes(learner) / learner.keys.h0.shape[0]  # bytes per allocated slot
    window = f"window {learner.keys.window_steps} x {learner.input_size} inputs"
    print(
        f"\nKey state: {per_key:,.0f} bytes per tracked key (hidden {learner.hidden_size}, {window}); "
        f"{len(learner.keys):,} keys tracked; peak RSS grew by {(after - before) / 1024:,.0f} MiB "
        f"(to {after / 1024:,.0f} MiB)"
    )


if __name__ == "__main__":
    main()
