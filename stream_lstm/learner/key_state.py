"""Per-key recurrent state with a bound on the number of keys (least recently used first out)."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

from stream_lstm.errors import ConfigError
from stream_lstm.learner.key_export import NO_LABEL
from stream_lstm.learner.transfer import to_device
from stream_lstm.models.state_data import Fields, State, damaged


class KeyStateStore:
    """Holds, for every tracked key, what truncated BPTT needs to continue that key's sequence.

    Per key: the detached LSTM state ``(h0, c0)`` at the start of its window, the window of its
    last ``window_steps`` input vectors (newest last), its previous label, its previous
    timestamp, and its feature averages for the trend inputs (``trend_shape``: scales ×
    features, on the host; see :mod:`stream_lstm.learner.trend`). Keys live in slots of
    preallocated tensors (grown by doubling up to ``max_keys``), so a batch gathers and scatters
    the state of all its keys with one indexing operation each. When a new key arrives and
    ``max_keys`` keys are tracked, the least recently seen key is evicted; if it comes back it
    starts again from a zero state.
    """

    def __init__(
        self,
        *,
        max_keys: int,
        hidden_size: int,
        window_steps: int,
        input_size: int,
        device: torch.device,
        trend_shape: tuple[int, int] = (0, 0),
        initial_capacity: int = 1024,
    ) -> None:
        if max_keys < 1:
            raise ConfigError(f"max_keys must be at least 1, got {max_keys}")
        self.max_keys = max_keys
        self.hidden_size = hidden_size
        self.window_steps = window_steps
        self.input_size = input_size
        self.trend_shape = trend_shape
        self.device = device
        self.evictions = 0
        self._slots: dict[str, int] = {}
        self._slot_keys = np.full(0, None, dtype=object)  # the key in each slot (None: free)
        self._free: list[int] = []
        self._capacity = 0
        # Per slot, when its key was last used: the LRU order (an ordered dict's reordering costs
        # more than the rest of a lookup), also so that exporting a few keys
        # needs no walk over all of them.
        self._last_used = np.zeros(0, dtype=np.int64)
        self._tick = 0
        self.h0 = torch.zeros(0, hidden_size, device=device)
        self.c0 = torch.zeros(0, hidden_size, device=device)
        self.window = torch.zeros(0, window_steps, input_size, device=device)
        self.window_len = np.zeros(0, dtype=np.int64)
        self.prev_label = np.zeros(0, dtype=np.int8)
        self.last_ts = np.zeros(0)
        self.trend = np.zeros((0, *trend_shape), dtype=np.float32)
        self._grow(min(initial_capacity, max_keys))

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def tracked(self) -> Collection[str]:
        """A live view of the tracked keys (cheap membership tests)."""
        return self._slots.keys()

    def keys(self) -> list[str]:
        """Tracked keys, least recently used first."""
        return [key for key, _ in self._lru_items()]

    def _lru_items(self) -> list[tuple[str, int]]:
        """``(key, slot)`` of every tracked key, least recently used first."""
        return self._oldest_first(list(self._slots.items()))

    def _oldest_first(self, items: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """``(key, slot)`` pairs sorted by when their key was last used, least recently first."""
        items.sort(key=lambda item: self._last_used[item[1]])
        return items

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """Return the slot of each key (a key may repeat), making the keys the most recently used
        in order of first appearance.

        New keys get a zeroed slot, evicting the least recently used keys not in ``keys``.
        """
        tracked = self._slots
        slots = np.array(list(map(tracked.get, keys, itertools.repeat(-1))), dtype=np.int64)
        is_new = slots < 0
        new_keys: list[str] = []
        if is_new.any():
            new_events = list(itertools.compress(keys, is_new.tolist()))
            new_keys = list(dict.fromkeys(new_events))
        known = slots[~is_new] if new_keys else slots
        distinct = list(dict.fromkeys(known.tolist()))  # in order of first appearance
        if len(distinct) + len(new_keys) > self.max_keys:
            raise ConfigError(
                f"a batch holds {len(distinct) + len(new_keys)} distinct keys but max_keys is "
                f"{self.max_keys}; raise max_keys or lower the batch size"
            )
        # Touch the keys already tracked first, so that the evictions below can never drop a key
        # of this batch (there are at most max_keys of them).
        self._touch(np.array(distinct, dtype=np.int64))
        if not new_keys:
            return slots
        fresh = self._take_slots(len(new_keys))
        fresh_list = fresh.tolist()
        tracked.update(zip(new_keys, fresh_list, strict=True))
        self._slot_keys[fresh] = new_keys
        self._reset(fresh)
        self._touch(fresh)
        slots[is_new] = (
            fresh if len(new_keys) == len(new_events) else list(map(tracked.__getitem__, new_events))
        )
        return slots

    def _touch(self, slots: np.ndarray) -> None:
        """Make ``slots`` the most recently used, in their order."""
        self._last_used[slots] = self._tick + np.arange(slots.size)
        self._tick += slots.size

    def _take_slots(self, count: int) -> np.ndarray:
        """``count`` slots for new keys: free ones (growing the tensors while under ``max_keys``),
        then those of the least recently used keys, which are evicted."""
        taken: list[int] = []
        while len(taken) < count:
            if not self._free and len(self._slots) + len(taken) < self.max_keys:
                self._grow(min(max(2 * self._capacity, 1), self.max_keys))
            if self._free:
                n = min(count - len(taken), len(self._free))
                taken.extend(reversed(self._free[-n:]))
                del self._free[-n:]
                continue
            # Every other slot holds a key: evict the least recently used ones, oldest first.
            n = count - len(taken)
            last_used = self._last_used.copy()
            last_used[taken] = np.iinfo(np.int64).max  # taken from the free list just now
            oldest = np.argpartition(last_used, n - 1)[:n] if n < self._capacity else np.arange(n)
            victims = oldest[np.argsort(last_used[oldest], kind="stable")]
            collections.deque(map(self._slots.pop, self._slot_keys[victims].tolist()), maxlen=0)
            self._slot_keys[victims] = None
            taken.extend(victims.tolist())
            self.evictions += n
        return np.asarray(taken, dtype=np.int64)

    def _grow(self, capacity: int) -> None:
        extra = capacity - self._capacity
        if extra <= 0:
            return
        dev = self.device
        self.h0 = torch.cat([self.h0, torch.zeros(extra, self.hidden_size, device=dev)])
        self.c0 = torch.cat([self.c0, torch.zeros(extra, self.hidden_size, device=dev)])
        self.window = torch.cat(
            [self.window, torch.zeros(extra, self.window_steps, self.input_size, device=dev)]
        )
        self.window_len = np.concatenate([self.window_len, np.zeros(extra, dtype=np.int64)])
        self.prev_label = np.concatenate([self.prev_label, np.full(extra, NO_LABEL, np.int8)])
        self.last_ts = np.concatenate([self.last_ts, np.full(extra, np.nan)])
        self.trend = np.concatenate([self.trend, np.zeros((extra, *self.trend_shape), np.float32)])
        self._last_used = np.concatenate([self._last_used, np.zeros(extra, dtype=np.int64)])
        self._slot_keys = np.concatenate([self._slot_keys, np.full(extra, None, dtype=object)])
        # Hand out low slots first so that a fresh store fills its slots in order.
        self._free = list(range(capacity - 1, self._capacity - 1, -1)) + self._free
        self._capacity = capacity

    def _reset(self, slots: np.ndarray) -> None:
        index = to_device(slots, self.device)
        self.h0.index_fill_(0, index, 0.0)
        self.c0.index_fill_(0, index, 0.0)
        self.window_len[slots] = 0
        self.prev_label[slots] = NO_LABEL
        self.last_ts[slots] = np.nan
        self.trend[slots] = 0.0

    def export(self, keys: Sequence[str]) -> dict[str, Any]:
        """The state of those of ``keys`` that are tracked, as NumPy arrays, oldest first.

        What a partition's new owner passes to :meth:`import_` to continue these keys exactly.
        """
        tracked = self._slots
        kept = self._oldest_first(
            [(key, slot) for key in dict.fromkeys(keys) if (slot := tracked.get(key)) is not None]
        )
        slots = np.asarray([slot for _, slot in kept], dtype=np.int64)
        index = to_device(slots, self.device)
        return {
            "keys": [key for key, _ in kept],
            "h0": self.h0.index_select(0, index).cpu().numpy(),
            "c0": self.c0.index_select(0, index).cpu().numpy(),
            "window": self.window.index_select(0, index).cpu().numpy(),
            "window_len": self.window_len[slots].copy(),
            "prev_label": self.prev_label[slots].copy(),
            "last_ts": self.last_ts[slots].copy(),
            "trend": self.trend[slots].copy(),
        }

    def import_(self, state: dict[str, Any]) -> None:
        """Track the keys of an :meth:`export` (NumPy arrays or tensors), replacing what is held
        for them (LRU applies)."""
        keys = state["keys"]
        if not keys:
            return
        trend = state.get("trend")
        if trend is None:  # exported before trend inputs: averages start again from 0
            trend = np.zeros((len(keys), *self.trend_shape), np.float32)
        if (
            state["window"].shape[1:] != self.window.shape[1:]
            or state["h0"].shape[1] != self.hidden_size
            or trend.shape[1:] != self.trend_shape
        ):
            raise ConfigError(
                "key states were saved with other sizes (hidden_size, tbptt_steps, max_features, "
                "category_buckets or trend_scales differ); they cannot be continued"
            )
        keys = keys[-self.max_keys :]  # the most recently used ones, if there are too many
        count = len(keys)
        slots = self.lookup(keys)
        index = to_device(slots, self.device)
        self.h0.index_copy_(0, index, torch.as_tensor(state["h0"][-count:]).to(self.device))
        self.c0.index_copy_(0, index, torch.as_tensor(state["c0"][-count:]).to(self.device))
        self.window.index_copy_(0, index, torch.as_tensor(state["window"][-count:]).to(self.device))
        self.window_len[slots] = state["window_len"][-count:]
        self.prev_label[slots] = state["prev_label"][-count:]
        self.last_ts[slots] = state["last_ts"][-count:]
        self.trend[slots] = trend[-count:]

    def forget(self, keys: Sequence[str]) -> None:
        """Stop tracking ``keys`` (not counted as evictions): their slots are free again."""
        freed = [slot for key in keys if (slot := self._slots.pop(key, None)) is not None]
        if freed:
            self._slot_keys[freed] = None
            self._reset(np.asarray(freed, dtype=np.int64))
            self._free.extend(freed)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the store exactly, tensors moved to the CPU."""
        return {
            "slots": self._lru_items(),
            "free": list(self._free),
            "capacity": self._capacity,
            "evictions": self.evictions,
            "h0": self.h0.cpu(),
            "c0": self.c0.cpu(),
            "window": self.window.cpu(),
            "window_len": self.window_len.copy(),
            "prev_label": self.prev_label.copy(),
            "last_ts": self.last_ts.copy(),
            "trend": self.trend.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, onto this store's device."""
        self._slots = dict(state["slots"])  # least recently used first
        self._free = list(state["free"])
        self._capacity = state["capacity"]
        self._slot_keys = np.full(self._capacity, None, dtype=object)
        self._slot_keys[list(self._slots.values())] = list(self._slots)
        self._last_used = np.zeros(self._capacity, dtype=np.int64)
        self._last_used[list(self._slots.values())] = np.arange(len(self._slots))
        self._tick = len(self._slots)
        self.evictions = state["evictions"]
        self.h0 = state["h0"].to(self.device)
        self.c0 = state["c0"].to(self.device)
        self.window = state["window"].to(self.device)
        self.window_len = state["window_len"].copy()
        self.prev_label = state["prev_label"].copy()
        self.last_ts = state["last_ts"].copy()
        trend = state.get("trend")  # absent before trend inputs
        if trend is None:
            trend = np.zeros((self._capacity, *self.trend_shape), np.float32)
        self.trend = trend.copy()

    def to_state(self) -> State:
        """The store as data (:mod:`stream_lstm.models.state_data`): the keys least recently used
        first with their slots, the free slots, and every slot's state."""
        items = self._lru_items()
        return {
            "keys": [key for key, _ in items],
            "slots": np.asarray([slot for _, slot in items], dtype=np.int64),
            "free": np.asarray(self._free, dtype=np.int64),
            "capacity": self._capacity,
            "evictions": self.evictions,
            "h0": self.h0.cpu().numpy().copy(),
            "c0": self.c0.cpu().numpy().copy(),
            "window": self.window.cpu().numpy().copy(),
            "window_len": self.window_len.copy(),
            "prev_label": self.prev_label.copy(),
            "last_ts": self.last_ts.copy(),
            "trend": self.trend.copy(),
        }

    @staticmethod
    def state_capacity(tree: Any, where: str) -> int:
        """The capacity a :meth:`to_state` claims, checked against the arrays it holds (so that a
        store of that size takes no more memory than the checkpoint's bytes)."""
        fields = Fields(_with_trend(tree, (0, 0)), where, _STORE_FIELDS)
        capacity = fields.int("capacity")
        h0 = fields.raw("h0")
        if not isinstance(h0, np.ndarray) or h0.ndim < 1 or h0.shape[0] != capacity:
            raise damaged(fields.path("h0"), f"expected {capacity} rows")
        return capacity

    def load_state(self, tree: Any, where: str) -> None:
        """Restore a :meth:`to_state` of a store of this one's sizes
        (:class:`~stream_lstm.errors.CheckpointRejected` if ``tree`` is not one)."""
        absent = isinstance(tree, dict) and "trend" not in tree  # written before trend inputs
        fields = Fields(_with_trend(tree, self.trend_shape), where, _STORE_FIELDS)
        capacity = fields.int("capacity", high=self.max_keys)
        keys = fields.strings("keys")
        slots = fields.array("slots", "int64", (len(keys),))
        free = fields.array("free", "int64", (None,))
        taken = np.concatenate([slots, free])
        if taken.size != capacity or not np.array_equal(np.sort(taken), np.arange(capacity)):
            raise damaged(where, "the slots of the keys and the free slots are not each slot once")
        width = (self.window_steps, self.input_size)
        h0 = fields.array("h0", "float32", (capacity, self.hidden_size))
        c0 = fields.array("c0", "float32", (capacity, self.hidden_size))
        window = fields.array("window", "float32", (capacity, *width))
        window_len = fields.array("window_len", "int64", (capacity,))
        prev_label = fields.array("prev_label", "int8", (capacity,))
        last_ts = fields.array("last_ts", "float64", (capacity,))
        if absent:
            trend = np.zeros((capacity, *self.trend_shape), np.float32)
        else:
            trend = fields.array("trend", "float32", (capacity, *self.trend_shape))
            if not np.isfinite(trend).all():
                raise damaged(fields.path("trend"), "an average is not finite")
        if ((window_len < 0) | (window_len > self.window_steps)).any():
            raise damaged(fields.path("window_len"), f"a window length is outside [0, {self.window_steps}]")
        if ((prev_label < NO_LABEL) | (prev_label > 1)).any():
            raise damaged(fields.path("prev_label"), "a label is not -1, 0 or 1")
        slot_list = slots.tolist()
        self._slots = dict(zip(keys, slot_list, strict=True))  # least recently used first
        self._free = free.tolist()
        self._capacity = capacity
        self._slot_keys = np.full(capacity, None, dtype=object)
        self._slot_keys[slot_list] = keys
        self._last_used = np.zeros(capacity, dtype=np.int64)
        self._last_used[slot_list] = np.arange(len(keys))
        self._tick = len(keys)
        self.evictions = fields.int("evictions")
        self.h0 = torch.from_numpy(h0.copy()).to(self.device)
        self.c0 = torch.from_numpy(c0.copy()).to(self.device)
        self.window = torch.from_numpy(window.copy()).to(self.device)
        self.window_len = window_len.copy()
        self.prev_label = prev_label.copy()
        self.last_ts = last_ts.copy()
        self.trend = trend.copy()


def _with_trend(tree: Any, shape: tuple[int, int]) -> Any:
    """``tree`` with an empty ``trend`` when it has none (a store written before trend inputs)."""
    if isinstance(tree, dict) and "trend" not in tree:
        return {**tree, "trend": np.zeros((0, *shape), np.float32)}
    return tree


_STORE_FIELDS = (
    "keys",
    "slots",
    "free",
    "capacity",
    "evictions",
    "h0",
    "c0",
    "window",
    "window_len",
    "prev_label",
    "last_ts",
    "trend",
)
