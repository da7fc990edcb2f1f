"""State bounded by settings, not by the input: the service's memory and checkpoint under a flood.

A `stream-lstm run` process (the LSTM in its own process where there are 2+ CPUs, as by default)
first learns a warm-up stream, then gets 20,000 more messages of the same keys: in the flood run
each carries five feature names never seen before besides the usual ones, in the control run only
the usual ones. Reported per run: the resident memory of the service and all its processes after
the warm-up and after the 20,000 messages, and the size of its checkpoint store. The goal is a
flood's growth under 10 MB.
Usage: ``python benchmarks/bench_hostile.py [--events 20000] [--warmup 20000] [--keys 1000]
[--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import append_results, describe_machine

from stream_lstm.evaluation.report import render_table
from stream_lstm.kafka.broker import EmbeddedBroker, free_port
from stream_lstm.kafka.connect import EventWriter
from stream_lstm.messages.events import Event, encode_event
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.directory_store import DirectoryStore


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def resident_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, in bytes."""
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def store_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*.ckpt"))


def wait_for_checkpoint(store: DirectoryStore, topic: str, offset: int, timeout: float = 300.0) -> None:
    """Until the partition's checkpoint has reached ``offset`` (every message handled and saved)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            saved = store.load_partition((topic, 0))
        except Exception:  # a file being replaced: read again
            saved = None
        if saved is not None and saved.offset >= offset:
            time.sleep(1.0)  # the instance checkpoint is written right after the partition's
            return
        time.sleep(0.5)
    raise TimeoutError(f"no checkpoint of {topic} at offset {offset} within {timeout:.0f} s")


def send(bootstrap: str, topic: str, events: list[Event]) -> None:
    writer = EventWriter(bootstrap, topic)
    for event in events:
        writer.send(event.key, encode_event(event))
    writer.close()


def flood(events: list[Event], seed: int) -> list[Event]:
    """``events`` with five feature names never seen before added to each."""
    rng = random.Random(seed)
    return [
        Event(
            key=event.key,
            ts=event.ts,
            features={**event.features, **{f"new-{rng.getrandbits(64):x}": 1.0 for _ in range(5)}},
            label=event.label,
        )
        for event in events
    ]


def run(
    broker: EmbeddedBroker, workdir: Path, name: str, warmup: list[Event], more: list[Event]
) -> list[str]:
    topic = f"hostile-{name}"
    broker.create_topics([topic, f"{topic}-out", f"{topic}-dead"])
    checkpoints = workdir / name
    send(broker.bootstrap_servers, topic, warmup)
    command = [
        sys.executable, "-m", "stream_lstm", "run",
        "--bootstrap-servers", broker.bootstrap_servers,
        "--input-topic", topic, "--output-topic", f"{topic}-out", "--dead-letter-topic", f"{topic}-dead",
        "--group-id", f"bench-{topic}", "--checkpoint-dir", str(checkpoints),
        "--metrics-port", str(free_port()), "--metrics-host", "127.0.0.1", "--device", "cpu",
        "--checkpoint-interval", "2",
    ]  # fmt: skip
    log = (workdir / f"{name}.log").open("wb")
    service = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    store = DirectoryStore(checkpoints)
    try:
        wait_for_checkpoint(store, topic, len(warmup))
        rss_before, size_before = resident_bytes(service.pid), store_bytes(checkpoints)
        send(broker.bootstrap_servers, topic, more)
        wait_for_checkpoint(store, topic, len(warmup) + len(more))
        rss_after, size_after = resident_bytes(service.pid), store_bytes(checkpoints)
    finally:
        service.terminate()
        service.wait(timeout=30)
        log.close()
    mb = 1e6
    return [
        name,
        f"{len(more):,}",
        f"{rss_before / mb:,.1f}",
        f"{rss_after / mb:,.1f}",
        f"{(rss_after - rss_before) / mb:+,.1f}",
        f"{size_before / mb:,.2f}",
        f"{size_after / mb:,.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="messages after the warm-up")
    parser.add_argument("--warmup", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--markdown", type=Path, help="append the table to this markdown file")
    args = parser.parse_args()
    machine = f"Machine: {describe_machine()}; broker: embedded (Tansu)"
    print(machine, flush=True)
    warmup = list(temporal_stream(args.warmup, n_keys=args.keys, seed=1))
    control = list(temporal_stream(args.warmup + args.events, n_keys=args.keys, seed=1))[args.warmup :]
    rows = []
    with tempfile.TemporaryDirectory() as work, EmbeddedBroker() as broker:
        for name, more in (("control", control), ("flood", flood(control, seed=2))):
            rows.append(run(broker, Path(work), name, warmup, more))
            print(f"  {name} done", flush=True)
    headers = [
        "run",
        "messages",
        "RSS before MB",
        "RSS after MB",
        "growth MB",
        "store before MB",
        "store after MB",
    ]
    title = (
        f"{args.warmup:,} warm-up events over {args.keys:,} keys, then {args.events:,} messages "
        "(flood: 5 never-seen feature names each); RSS of the service and its child processes"
    )
    table = render_table(headers, rows)
    print(f"\n{title}\n\n{table}")
    if args.markdown:
        append_results(args.markdown, "hostile-input memory benchmark", machine, [f"{title}\n\n{table}"])


if __name__ == "__main__":
    main()
