"""Families of generated temporal streams for the quality benchmark, each with its best achievable score.

Every generator is seeded and deterministic, and returns a :class:`GeneratedStream`: the events and,
for each event, the probability that its label is 1 as an oracle sees it. The oracle knows what
the generator knows and no model can (the hidden regime, the drifting boundary, the time of day,
the noise rate) but not the noise itself, so its expected accuracy (the mean of ``max(p, 1 - p)``)
is the best any model can reach on the stream: the Bayes rate. Its expected log loss (the mean
binary entropy of ``p``) is the best log loss likewise.

The families, each a way a label can depend on time:

* :func:`lagged_xor`: the XOR of the signs of a key's signals some events back (nonlinear in the
  history: no sum of lag features tells it).
* :func:`hidden_regimes`: per key, a hidden two-state Markov chain decides whether the label is a
  feature's sign or its opposite; only the key's recent labels reveal the regime.
* :func:`slow_drift`: the decision boundary of two features rotates over the stream.
* :func:`seasonal`: the label follows the time of day (from ``ts``) plus a feature; the time of day
  is no input, so a model must read it from the recent labels.
* :func:`noisy_labels`: a clean rule (the sign of the key's previous signal) with labels flipped at
  random.
* :func:`no_signal`: labels drawn at a fixed base rate, features unrelated to them.

Keys interleave at random and timestamps increase; with ``n_keys=1`` a stream is one sequence.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from stream_lstm.messages.events import Event

#: Seconds in a day, the period of :func:`seasonal`.
DAY = 86_400.0


@dataclass(frozen=True)
class GeneratedStream:
    """A generated stream and its oracle (see the module doc)."""

    #: The events, in stream order.
    events: list[Event]
    #: For each event, the oracle's probability that its label is 1.
    oracle: list[float]

    @property
    def best_accuracy(self) -> float:
        """The oracle's expected accuracy: the best a model can expect on this stream."""
        return sum(max(p, 1.0 - p) for p in self.oracle) / len(self.oracle)

    @property
    def best_log_loss(self) -> float:
        """The oracle's expected log loss (natural log): the best a model can expect."""
        return sum(_entropy(p) for p in self.oracle) / len(self.oracle)


def _entropy(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0)


def _flip(label: int, noise: float, rng: random.Random) -> int:
    return 1 - label if rng.random() < noise else label


def _oracle(label: int, noise: float) -> float:
    """The oracle's probability of a 1 when the clean label is ``label`` and flips happen at ``noise``."""
    return 1.0 - noise if label else noise


def _check(n_events: int, n_keys: int, noise: float = 0.0) -> None:
    if n_events < 1 or n_keys < 1:
        raise ValueError(f"n_events and n_keys must be at least 1, got {n_events} and {n_keys}")
    if not 0.0 <= noise <= 0.5:
        raise ValueError(f"noise must be in [0, 0.5], got {noise}")


class _Clock:
    """Random interleaving of keys and increasing timestamps (``gap``: mean seconds between events)."""

    def __init__(self, rng: random.Random, n_keys: int, gap: float = 1.0, start: float = 1_700_000_000.0):
        self.rng, self.n_keys, self.gap, self.ts = rng, n_keys, gap, start

    def next(self) -> tuple[int, str, float]:
        self.ts += self.rng.expovariate(1.0 / self.gap)
        k = self.rng.randrange(self.n_keys)
        return k, ("" if self.n_keys == 1 else f"k{k}"), round(self.ts, 3)


def lagged_xor(
    n_events: int, *, n_keys: int = 200, lags: tuple[int, int] = (2, 5), noise: float = 0.02, seed: int = 0
) -> GeneratedStream:
    """Label: the XOR of the signs of the key's signals ``lags`` events back, flipped at ``noise``.

    Every event shows its own signal as feature ``a`` (exactly) and a distractor ``b``. A key's
    first ``max(lags)`` events depend on signals never shown: the oracle gives them 0.5.

    >>> stream = lagged_xor(1_000, n_keys=10, seed=1)
    >>> len(stream.events), round(stream.best_accuracy, 2)
    (1000, 0.96)
    """
    _check(n_events, n_keys, noise)
    rng = random.Random(seed)
    clock = _Clock(rng, n_keys)
    deepest = max(lags)
    history: list[list[float]] = [[rng.gauss(0.0, 1.0) for _ in range(deepest)] for _ in range(n_keys)]
    seen = [0] * n_keys
    events, oracle = [], []
    for _ in range(n_events):
        k, key, ts = clock.next()
        past = history[k]  # past[-1] is the key's previous signal
        clean = int((past[-lags[0]] > 0) != (past[-lags[1]] > 0))
        events.append(
            Event(key=key, ts=ts, features=_signal_features(rng, past), label=_flip(clean, noise, rng))
        )
        oracle.append(_oracle(clean, noise) if seen[k] >= deepest else 0.5)
        seen[k] += 1
    return GeneratedStream(events, oracle)


def _signal_features(rng: random.Random, past: list[float]) -> dict[str, float]:
    """Draw the key's next signal into ``past`` (dropping the oldest) and return its features."""
    signal = rng.gauss(0.0, 1.0)
    past.pop(0)
    past.append(signal)
    return {"a": signal, "b": rng.gauss(0.0, 1.0)}


def hidden_regimes(
    n_events: int, *, n_keys: int = 100, switch: float = 0.05, noise: float = 0.05, seed: int = 0
) -> GeneratedStream:
    """Label: the sign of feature ``x`` in regime 0, its opposite in regime 1, flipped at ``noise``.

    Each key's regime is a hidden Markov chain that switches with probability ``switch`` before
    each of its events. ``x`` alone says nothing (the regimes are equally likely), and a sum of lag
    features cannot tell the regime either: it shows in whether the key's recent labels agreed
    with the signs of its recent ``x``. The oracle knows the regime: ``1 - noise``.
    """
    _check(n_events, n_keys, noise)
    rng = random.Random(seed)
    clock = _Clock(rng, n_keys)
    regime = [rng.randrange(2) for _ in range(n_keys)]
    events, oracle = [], []
    for _ in range(n_events):
        k, key, ts = clock.next()
        if rng.random() < switch:
            regime[k] = 1 - regime[k]
        x = rng.gauss(0.0, 1.0)
        clean = int((x > 0) != bool(regime[k]))
        features = {"x": x, "b": rng.gauss(0.0, 1.0)}
        events.append(Event(key=key, ts=ts, features=features, label=_flip(clean, noise, rng)))
        oracle.append(_oracle(clean, noise))
    return GeneratedStream(events, oracle)


def slow_drift(
    n_events: int, *, n_keys: int = 1, turns: float = 1.0, noise: float = 0.05, seed: int = 0
) -> GeneratedStream:
    """Label: which side of a line through the origin ``(x1, x2)`` lies on, flipped at ``noise``;
    the line turns ``turns`` full circles over the stream. The oracle knows the angle: ``1 - noise``.
    """
    _check(n_events, n_keys, noise)
    rng = random.Random(seed)
    clock = _Clock(rng, n_keys)
    events, oracle = [], []
    for index in range(n_events):
        _, key, ts = clock.next()
        angle = 2 * math.pi * turns * index / n_events
        x1, x2 = rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0)
        clean = int(math.cos(angle) * x1 + math.sin(angle) * x2 > 0)
        events.append(Event(key=key, ts=ts, features={"x1": x1, "x2": x2}, label=_flip(clean, noise, rng)))
        oracle.append(_oracle(clean, noise))
    return GeneratedStream(events, oracle)


def seasonal(
    n_events: int,
    *,
    n_keys: int = 20,
    events_per_day: int = 500,
    weight: float = 0.5,
    noise: float = 0.05,
    seed: int = 0,
) -> GeneratedStream:
    """Label: whether ``sin(2 pi t) + weight * x`` is positive, ``t`` the time of day of ``ts`` (as
    a fraction of a day), flipped at ``noise``.

    The time of day is no input (a model sees the time since the key's previous event), so the
    daily swing shows only in the recent labels; ``x`` shifts each label around it. The oracle
    knows the time of day: ``1 - noise``.
    """
    _check(n_events, n_keys, noise)
    rng = random.Random(seed)
    clock = _Clock(rng, n_keys, gap=DAY / events_per_day, start=1_700_000_000.0 // DAY * DAY)
    events, oracle = [], []
    for _ in range(n_events):
        _, key, ts = clock.next()
        day_fraction = (ts % DAY) / DAY
        x = rng.gauss(0.0, 1.0)
        clean = int(math.sin(2 * math.pi * day_fraction) + weight * x > 0)
        events.append(Event(key=key, ts=ts, features={"x": x}, label=_flip(clean, noise, rng)))
        oracle.append(_oracle(clean, noise))
    return GeneratedStream(events, oracle)


def noisy_labels(n_events: int, *, n_keys: int = 100, noise: float = 0.2, seed: int = 0) -> GeneratedStream:
    """Label: the sign of the key's previous signal (feature ``a`` of its previous event), flipped
    at ``noise``. A key's first event has no previous signal shown: the oracle gives it 0.5, every
    other event ``1 - noise``.
    """
    _check(n_events, n_keys, noise)
    rng = random.Random(seed)
    clock = _Clock(rng, n_keys)
    history = [[rng.gauss(0.0, 1.0)] for _ in range(n_keys)]
    seen = [0] * n_keys
    events, oracle = [], []
    for _ in range(n_events):
        k, key, ts = clock.next()
        clean = int(history[k][-1] > 0)
        events.append(
            Event(key=key, ts=ts, features=_signal_features(rng, history[k]), label=_flip(clean, noise, rng))
        )
        oracle.append(_oracle(clean, noise) if seen[k] else 0.5)
        seen[k] += 1
    return GeneratedStream(events, oracle)


def no_signal(n_events: int, *, n_keys: int = 1, base_rate: float = 0.53, seed: int = 0) -> GeneratedStream:
    """Labels 1 with probability ``base_rate``, independently of everything; two features of noise.
    The best forecast is the base rate itself: accuracy ``max(base_rate, 1 - base_rate)``."""
    _check(n_events, n_keys)
    if not 0.0 <= base_rate <= 1.0:
        raise ValueError(f"base_rate must be in [0, 1], got {base_rate}")
    rng = random.Random(seed)
    clock = _Clock(rng, n_keys)
    events = []
    for _ in range(n_events):
        _, key, ts = clock.next()
        features = {"x1": rng.gauss(0.0, 1.0), "x2": rng.gauss(0.0, 1.0)}
        events.append(Event(key=key, ts=ts, features=features, label=int(rng.random() < base_rate)))
    return GeneratedStream(events, [base_rate] * n_events)


#: The streams of the quality benchmark, by name: generator and keyword arguments (``n_events``
#: and ``seed`` come from the caller).
SUITE: dict[str, tuple[Callable[..., GeneratedStream], dict[str, float | int | tuple[int, int]]]] = {
    "xor_lags_keyed": (lagged_xor, {"n_keys": 200, "lags": (2, 5)}),
    "xor_lags_unkeyed": (lagged_xor, {"n_keys": 1, "lags": (1, 3)}),
    "regimes_keyed": (hidden_regimes, {"n_keys": 100}),
    "drift_unkeyed": (slow_drift, {"n_keys": 1}),
    "seasonal_keyed": (seasonal, {"n_keys": 20}),
    "noisy_labels_keyed": (noisy_labels, {"n_keys": 100, "noise": 0.2}),
    "no_signal_unkeyed": (no_signal, {"n_keys": 1}),
}


def suite_stream(name: str, n_events: int, seed: int = 0) -> GeneratedStream:
    """The stream ``name`` of :data:`SUITE` with ``n_events`` events."""
    generator, options = SUITE[name]
    return generator(n_events, seed=seed, **options)
