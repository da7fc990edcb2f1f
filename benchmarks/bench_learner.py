"""The LSTM learner alone: events/s by key count and batch size, per device, and its memory.

Why: the service and ``evaluate`` benchmarks mix the learner with I/O, parsing, the baselines and
scoring; this one times only ``predict_batch`` + ``learn_batch`` (the default optimizer steps per
batch, without the early extra step of a stream's start: the steady cost) on pre-built events of
the project's generated stream, so it shows what the LSTM itself costs per event, how that
depends on the batch size and the number of keys, and what a GPU changes. One torch CPU thread,
as the service uses by default.

Throughput. For each device, key count and batch size: a fresh learner (``max_keys`` raised to
cover the keys), a few batches to warm up (allocations, kernel choice), then ``--events`` events
timed (fewer for small batches, which are slow: at least 2,000 and at most 250 batches). On CUDA
the batch sizes are ``--cuda-batch-sizes`` and the cap ``--cuda-events``, since a GPU only pays
off on large batches, and the device is synchronised before the clock starts and before it is
read. Generated streams are kept for the next repeat of a cell. Each cell is the median
of ``--repeats`` runs (default 3; the machine may be shared). The stream's keys interleave at
random, so with 100,000 keys most timed events are among the first few of their key (short
windows, zero start state) rather than in the steady state.

Steady state. From a cold start, the first ``tbptt_steps`` events of every key take the general
path (short windows, zero start state): at 1,000 keys that is half of a 16,000-event cell. A
second table times key counts above 1 and up to ``--steady-max-keys`` (default 1,000) once every
key is warm (20 events per key before the clock), as in a service that has run for a while.

Memory. In a fresh process per device (so that the baseline is not inflated by the throughput
runs), a learner with ``max_keys`` at ``--memory-keys`` (default 1,000,000) is fed one event of
every key, in batches of 4,096, so that it ends up tracking that many keys. Reported: the bytes
of key state per tracked key (the store's tensors and arrays, per allocated slot: the LSTM state
``h0``, ``c0``, the window of ``tbptt_steps - 1`` input vectors, previous label and timestamp),
the process's resident memory (VmRSS) before and after and its growth per key (which adds the
key index: Python strings and a dict), the peak (VmHWM: the store grows its tensors by
doubling, with the old and the new ones alive together for a moment), and on CUDA the GPU
memory torch holds.

Usage: ``python benchmarks/bench_learner.py [--device auto|cpu|cuda] [--events N]
[--repeats 3] [--keys 1,1000,100000] [--batch-sizes 1,8,64,256,1024,4096]
[--cuda-batch-sizes 1,64,256,1024,4096,16384] [--cuda-events 400000] [--memory-keys N]
[--steady-max-keys N] [--markdown OUT.md]``. ``--device auto`` (the default) runs the CPU, and
CUDA too when torch sees a GPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from machine import append_results, describe_machine

from stream_lstm.evaluation.report import render_table
from stream_lstm.learner.cpu_threads import set_cpu_threads
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.messages.events import Event
from stream_lstm.offline.generator import temporal_stream

#: Batch size of the memory run.
MEMORY_BATCH = 4096
#: Events per key before the clock in the steady-state table (see steady_rate).
STEADY_WARM_EVENTS_PER_KEY = 20


def devices(option: str) -> list[str]:
    """The devices to benchmark: ``auto`` is the CPU, and CUDA too when there is a GPU."""
    if option == "auto":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [option]


def synchronize(learner: LSTMLearner) -> None:
    """Wait for the learner's device to finish its queued work (a no-op on the CPU)."""
    if learner.torch_device.type == "cuda":
        torch.cuda.synchronize(learner.torch_device)


def step(learner: LSTMLearner, batch: Sequence[Event]) -> None:
    learner.predict_batch(batch)
    learner.learn_batch(batch)


@functools.lru_cache(maxsize=2)
def generated(events: int, keys: int, seed: int) -> tuple[Event, ...]:
    """The generated stream, kept for the next repeat of a cell (it takes seconds to make)."""
    return tuple(temporal_stream(events, n_keys=keys, seed=seed))


def rate(device: str, keys: int, batch: int, events: int) -> float:
    """Events per second of predict + learn over ``events`` events, in batches of ``batch``."""
    learner = LSTMLearner(device=device, max_keys=max(100_000, keys, batch), extra_step_events=0)
    warm = generated(4 * batch, keys, 1)
    stream = generated(events, keys, 2)
    for start in range(0, len(warm), batch):  # the first calls allocate and pick kernels
        step(learner, warm[start : start + batch])
    return timed_rate(learner, stream, batch)


def timed_rate(learner: LSTMLearner, events: Sequence[Event], batch: int) -> float:
    """Events per second of predict + learn over ``events``, in batches of ``batch``, with the
    device synchronised before the clock starts and before it is read."""
    synchronize(learner)
    started = time.perf_counter()
    for start in range(0, len(events), batch):
        step(learner, events[start : start + batch])
    synchronize(learner)
    return len(events) / (time.perf_counter() - started)


def steady_rate(device: str, keys: int, batch: int, events: int) -> float:
    """:func:`rate` once every key is warm: before the clock, ``STEADY_WARM_EVENTS_PER_KEY`` events
    per key on average, so that practically every key has a full window and a non-zero state
    (a key of the generated stream is drawn at random for each event). The timed events continue
    the same stream."""
    learner = LSTMLearner(device=device, max_keys=max(100_000, keys, batch), extra_step_events=0)
    warm_events = STEADY_WARM_EVENTS_PER_KEY * keys
    stream = generated(warm_events + events, keys, 2)
    warm_batch = max(batch, 256)  # fast, and a key's window fills the same way at any batch size
    for start in range(0, warm_events, warm_batch):
        step(learner, stream[start : min(start + warm_batch, warm_events)])
    full = int((learner.keys.window_len[: len(learner.keys)] == learner.keys.window_steps).sum())
    if full < 0.99 * keys:
        print(f"    (only {full:,} of {keys:,} keys had a full window when the clock started)")
    return timed_rate(learner, stream[warm_events:], batch)


def events_for(batch: int, cap: int) -> int:
    """Events to time at one batch size: at most ``cap`` and 250 batches, at least 2,000."""
    return max(2_000, min(cap, 250 * batch))


def memory_status() -> dict[str, int]:
    """The process's current (VmRSS) and peak (VmHWM) resident memory, in bytes."""
    status = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    status[name] = int(value.split()[0]) * 1024  # reported in kB
    except OSError:  # no /proc: the peak is all getrusage knows (kB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        status["VmHWM"] = peak if sys.platform == "darwin" else peak * 1024
    return status


def key_state_bytes(learner: LSTMLearner) -> int:
    """Bytes of per-key state the store holds (its allocated slots)."""
    store = learner.keys
    tensors = (store.h0, store.c0, store.window)
    arrays = (store.window_len, store.prev_label, store.last_ts)
    return sum(t.element_size() * t.nelement() for t in tensors) + sum(a.nbytes for a in arrays)


def memory_probe(device: str, n_keys: int) -> dict[str, float]:
    """Track ``n_keys`` keys in a fresh learner; what it cost in memory and time."""
    learner = LSTMLearner(device=device, max_keys=n_keys, extra_step_events=0)
    step(learner, list(temporal_stream(64, n_keys=64, seed=4)))  # allocate what every run allocates
    synchronize(learner)
    before = memory_status()
    device_before = learner.device_memory_bytes()
    started = time.perf_counter()
    # Key k<i> for the i-th event: every key once, in order (the generator draws keys at random).
    batch: list[Event] = []
    for i, event in enumerate(temporal_stream(n_keys, n_keys=1, seed=3)):
        batch.append(Event(key=f"k{i}", ts=event.ts, features=event.features, label=event.label))
        if len(batch) == MEMORY_BATCH:
            step(learner, batch)
            batch = []
    if batch:
        step(learner, batch)
    synchronize(learner)
    seconds = time.perf_counter() - started
    after = memory_status()
    return {
        "keys": len(learner.keys),
        "slots": learner.keys.h0.shape[0],
        "state_bytes_per_key": key_state_bytes(learner) / learner.keys.h0.shape[0],
        "hidden_size": learner.hidden_size,
        "window_steps": learner.keys.window_steps,
        "input_size": learner.input_size,
        "rss_before": before.get("VmRSS", float("nan")),
        "rss_after": after.get("VmRSS", float("nan")),
        "peak": after.get("VmHWM", float("nan")),
        "device_before": device_before,
        "device_after": learner.device_memory_bytes(),
        "device_peak": torch.cuda.max_memory_allocated(learner.torch_device) if device != "cpu" else 0,
        "seconds": seconds,
    }


def memory_in_fresh_process(device: str, n_keys: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory-probe", "--device", device, "--memory-keys", str(n_keys)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the memory run on {device} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def kernel_floor(device: str, batch: int, repeats: int) -> tuple[float, float]:
    """Microseconds per batch of the LSTM work the learner cannot avoid in the steady state: torch's
    fused LSTM forward and backward over ``batch`` sequences of ``tbptt_steps`` inputs (every key
    once, full windows), and the one step without gradients that gives each key its next
    window's start state. The inputs are as wide as the learner makes them for the generated
    stream (on the CPU, its 3 features, the time gap and the previous label's 2 inputs; on a GPU
    all 35). Returns (LSTM forward + backward, that step), each the median of ``repeats``
    timings of 200 calls."""
    learner = LSTMLearner(device=device, extra_step_events=0)
    columns = learner._input_columns(np.array([0, 1, 2, learner.max_features]))
    weights = learner._weights_for(columns)
    width = learner.input_size if columns is None else columns.numel()
    inputs = torch.randn(batch, learner.tbptt_steps, width, device=learner.torch_device)
    h = torch.zeros(batch, learner.hidden_size, device=learner.torch_device)
    c = torch.zeros_like(h)

    def forward_backward() -> None:
        for weight in learner._lstm_weights:
            weight.grad = None  # as in learn_batch
        outputs, _, _ = learner._lstm_call(inputs, h, c, learner._weights_for(columns))  # as per batch
        outputs[:, -1].sum().backward()

    def window_start() -> None:
        with torch.no_grad():
            torch.lstm_cell(inputs[:, 0], (h, c), *weights)

    def micros(work: Callable[[], None]) -> float:
        for _ in range(20):
            work()
        runs = []
        for _ in range(repeats):
            synchronize(learner)
            started = time.perf_counter()
            for _ in range(200):
                work()
            synchronize(learner)
            runs.append((time.perf_counter() - started) / 200 * 1e6)
        return statistics.median(runs)

    return micros(forward_backward), micros(window_start)


def kernel_floor_table(device: str, sizes: list[int], repeats: int) -> str:
    """The events/s that :func:`kernel_floor` alone allows, by batch size."""
    rows = []
    for batch in sizes:
        lstm_us, step_us = kernel_floor(device, batch, repeats)
        rows.append(
            [f"{batch:,}", f"{lstm_us:,.0f}", f"{step_us:,.0f}", f"{batch / (lstm_us + step_us) * 1e6:,.0f}"]
        )
        print(f"  {device}: LSTM kernels alone, batch {batch}: {rows[-1][-1]} events/s", flush=True)
    headers = ["batch", "LSTM fwd+bwd us", "window-start step us", "ceiling events/s"]
    title = (
        f"The LSTM kernels alone on {device}: what a steady-state batch of distinct keys must run (full "
        "windows) and no more, a ceiling on the learner's rate when there are at least as many keys "
        "as events in a batch (fewer keys make fewer, longer sequences); median of "
        f"{repeats} runs"
    )
    section = f"{title}\n\n{render_table(headers, rows)}"
    print(f"\n{section}\n", flush=True)
    return section


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def rate_table(
    title: str,
    measure: Callable[[str, int, int, int], float],
    device: str,
    key_counts: list[int],
    sizes: list[int],
    args: argparse.Namespace,
    *,
    what: str,
) -> str:
    """A table of ``measure(device, keys, batch, events)`` (median of ``args.repeats`` runs),
    printing each cell as it is measured; ``what`` names the rows in the progress lines."""
    cap = args.events if device == "cpu" else args.cuda_events
    rows = []
    for keys in key_counts:
        cells = []
        for batch in sizes:
            runs = [measure(device, keys, batch, events_for(batch, cap)) for _ in range(args.repeats)]
            cells.append(f"{statistics.median(runs):,.0f}")
            spread = ", ".join(f"{r:,.0f}" for r in runs)
            print(f"  {device}: {keys:,} {what}, batch {batch}: {cells[-1]} events/s ({spread})", flush=True)
        rows.append([f"{keys:,}", *cells])
    section = f"{title}\n\n{render_table(['keys', *(f'batch {b}' for b in sizes)], rows)}"
    print(f"\n{section}\n", flush=True)
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="auto", help="auto (CPU, and CUDA when present), cpu, cuda, cuda:N"
    )
    parser.add_argument("--events", type=int, default=40_000, help="most events timed per cell")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is shown")
    parser.add_argument("--keys", default="1,1000,100000", help="comma-separated key counts")
    parser.add_argument("--batch-sizes", default="1,8,64,256,1024,4096", help="comma-separated batch sizes")
    parser.add_argument(
        "--cuda-batch-sizes",
        default="1,64,256,1024,4096,16384",
        help="batch sizes on a GPU, which needs large batches to pay off",
    )
    parser.add_argument(
        "--cuda-events", type=int, default=400_000, help="most events timed per cell on a GPU"
    )
    parser.add_argument(
        "--memory-keys", type=int, default=1_000_000, help="keys tracked in the memory run (0: none)"
    )
    parser.add_argument(
        "--steady-max-keys",
        type=int,
        default=1000,
        help="key counts above 1 and up to this also get a steady-state row (default 1000)",
    )
    parser.add_argument("--markdown", metavar="OUT.md", help="append the tables to this Markdown file")
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)  # the child run
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA GPU (torch {torch.__version__})")
    set_cpu_threads(1)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.device, args.memory_keys)))
        return

    machine = f"Machine: {describe_machine()}; one torch CPU thread"
    print(machine, flush=True)
    started = time.monotonic()
    key_counts = [int(k) for k in args.keys.split(",")]
    sections = []
    steady_keys = [k for k in key_counts if 1 < k <= args.steady_max_keys]
    for device in devices(args.device):
        sizes = [int(b) for b in (args.batch_sizes if device == "cpu" else args.cuda_batch_sizes).split(",")]
        tables = [
            (
                f"Learner events/s on {device} (predict + learn), by keys and batch size",
                rate,
                key_counts,
                "keys",
            ),
            (
                f"The same in the steady state: every key warm ({STEADY_WARM_EVENTS_PER_KEY} events per key "
                "before the clock)",
                steady_rate,
                steady_keys,
                "warm keys",
            ),
        ]
        for title, measure, keys, what in tables:
            if keys:
                heading = f"{title}; median of {args.repeats} runs"
                sections.append(rate_table(heading, measure, device, keys, sizes, args, what=what))
        sections.append(kernel_floor_table(device, sizes, args.repeats))

    if args.memory_keys > 0:
        rows = []
        shape = ""
        for device in devices(args.device):
            print(f"  {device}: tracking {args.memory_keys:,} keys ...", flush=True)
            m = memory_in_fresh_process(device, args.memory_keys)
            shape = (
                f"hidden {m['hidden_size']}, window {m['window_steps']} x {m['input_size']} inputs, float32"
            )
            growth = m["rss_after"] - m["rss_before"]
            rows.append(
                [
                    device,
                    f"{m['keys']:,}",
                    f"{m['state_bytes_per_key']:,.0f}",
                    f"{growth / m['keys']:,.0f}",
                    mib(m["rss_before"]),
                    mib(m["rss_after"]),
                    mib(m["peak"]),
                    mib(m["device_after"]) if device != "cpu" else "-",
                    f"{m['seconds']:.1f}",
                ]
            )
        headers = ["device", "keys tracked", "state B/key", "RSS growth B/key", "RSS before MiB",
                   "RSS after MiB", "peak RSS MiB", "GPU MiB", "seconds"]  # fmt: skip
        title = (
            f"Memory at {args.memory_keys:,} tracked keys ({shape}); state B/key: key-state tensors "
            f"and arrays per slot; RSS growth B/key adds the key index and allocator overhead"
        )
        sections.append(f"{title}\n\n{render_table(headers, rows)}")
        print(f"\n{sections[-1]}\n")
    print(f"({time.monotonic() - started:.0f} s in all)")
    if args.markdown:
        append_results(args.markdown, "learner benchmark", machine, sections)


if __name__ == "__main__":
    main()
