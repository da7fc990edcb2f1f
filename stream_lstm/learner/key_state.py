"""Per-key recurrent state with a bound on the number of keys (least recently used first out)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

from stream_lstm.errors import ConfigError

NO_LABEL = -1


class KeyStateStore:
    """Holds, for every tracked key, what truncated BPTT needs to continue that key's sequence.

    Per key: the detached LSTM state ``(h0, c0)`` at the start of its window, the window of its
    last ``window_steps`` input vectors (newest last), its previous label and its previous
    timestamp. Keys live in slots of preallocated tensors (grown by doubling up to ``max_keys``),
    so a batch gathers and scatters the state of all its keys with one indexing operation each.
    When a new key arrives and ``max_keys`` keys are tracked, the least recently seen key is
    evicted; if it comes back it starts again from a zero state.
    """

    def __init__(
        self,
        *,
        max_keys: int,
        hidden_size: int,
        window_steps: int,
        input_size: int,
        device: torch.device,
        initial_capacity: int = 1024,
    ) -> None:
        if max_keys < 1:
            raise ConfigError(f"max_keys must be at least 1, got {max_keys}")
        self.max_keys = max_keys
        self.hidden_size = hidden_size
        self.window_steps = window_steps
        self.input_size = input_size
        self.device = device
        self.evictions = 0
        self._slots: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._free: list[int] = []
        self._capacity = 0
        # Per slot, when its key was last used (the order of _slots), so that exporting a few keys
        # needs no walk over all of them.
        self._last_used = np.zeros(0, dtype=np.int64)
        self._tick = 0
        self.h0 = torch.zeros(0, hidden_size, device=device)
        self.c0 = torch.zeros(0, hidden_size, device=device)
        self.window = torch.zeros(0, window_steps, input_size, device=device)
        self.window_len = np.zeros(0, dtype=np.int64)
        self.prev_label = np.zeros(0, dtype=np.int8)
        self.last_ts = np.zeros(0)
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
        return list(self._slots)

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """Return the slot of each (distinct) key, making each the most recently used.

        New keys get a zeroed slot, evicting the least recently used keys not in ``keys``.
        """
        if len(keys) > self.max_keys:
            raise ConfigError(
                f"a batch holds {len(keys)} distinct keys but max_keys is {self.max_keys}; "
                "raise max_keys or lower the batch size"
            )
        slots = np.full(len(keys), -1, dtype=np.int64)
        # Touch the keys already tracked first, so that evicting from the front below can never
        # drop a key of this batch (there are at most max_keys of them).
        for i, key in enumerate(keys):
            slot = self._slots.get(key)
            if slot is not None:
                self._slots.move_to_end(key)
                slots[i] = slot
        new_rows = np.flatnonzero(slots < 0)
        fresh: list[int] = []
        for i in new_rows:
            slot = self._take_slot()
            self._slots[keys[i]] = slot
            slots[i] = slot
            fresh.append(slot)
        touched = slots
        if fresh:
            self._reset(np.asarray(fresh, dtype=np.int64))
            was_tracked = np.ones(slots.size, dtype=bool)
            was_tracked[new_rows] = False
            touched = np.concatenate([slots[was_tracked], slots[new_rows]])  # the order of _slots
        self._last_used[touched] = self._tick + np.arange(touched.size)
        self._tick += touched.size
        return slots

    def _take_slot(self) -> int:
        if not self._free and len(self._slots) < self.max_keys:
            self._grow(min(max(2 * self._capacity, 1), self.max_keys))
        if self._free:
            return self._free.pop()
        # Evict the least recently used key (see lookup for why it is never one of the batch).
        _, slot = self._slots.popitem(last=False)
        self.evictions += 1
        return slot

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
        self._last_used = np.concatenate([self._last_used, np.zeros(extra, dtype=np.int64)])
        # Hand out low slots first so that a fresh store fills its slots in order.
        self._free = list(range(capacity - 1, self._capacity - 1, -1)) + self._free
        self._capacity = capacity

    def _reset(self, slots: np.ndarray) -> None:
        index = torch.as_tensor(slots, device=self.device)
        self.h0.index_fill_(0, index, 0.0)
        self.c0.index_fill_(0, index, 0.0)
        self.window_len[slots] = 0
        self.prev_label[slots] = NO_LABEL
        self.last_ts[slots] = np.nan

    def export(self, keys: Sequence[str]) -> dict[str, Any]:
        """The state of those of ``keys`` that are tracked, on the CPU, oldest first.

        What a partition's new owner passes to :meth:`import_` to continue these keys exactly.
        """
        tracked = self._slots
        kept = [(key, slot) for key in dict.fromkeys(keys) if (slot := tracked.get(key)) is not None]
        kept.sort(key=lambda item: self._last_used[item[1]])
        slots = np.asarray([slot for _, slot in kept], dtype=np.int64)
        index = torch.as_tensor(slots, device=self.device)
        return {
            "keys": [key for key, _ in kept],
            "h0": self.h0.index_select(0, index).cpu(),
            "c0": self.c0.index_select(0, index).cpu(),
            "window": self.window.index_select(0, index).cpu(),
            "window_len": self.window_len[slots].copy(),
            "prev_label": self.prev_label[slots].copy(),
            "last_ts": self.last_ts[slots].copy(),
        }

    def import_(self, state: dict[str, Any]) -> None:
        """Track the keys of an :meth:`export`, replacing what is held for them (LRU applies)."""
        keys = state["keys"]
        if not keys:
            return
        if state["window"].shape[1:] != self.window.shape[1:] or state["h0"].shape[1] != self.hidden_size:
            raise ConfigError(
                "key states were saved with other sizes (hidden_size, tbptt_steps or max_features "
                "differ); they cannot be continued"
            )
        keys = keys[-self.max_keys :]  # the most recently used ones, if there are too many
        count = len(keys)
        slots = self.lookup(keys)
        index = torch.as_tensor(slots, device=self.device)
        self.h0.index_copy_(0, index, state["h0"][-count:].to(self.device))
        self.c0.index_copy_(0, index, state["c0"][-count:].to(self.device))
        self.window.index_copy_(0, index, state["window"][-count:].to(self.device))
        self.window_len[slots] = state["window_len"][-count:]
        self.prev_label[slots] = state["prev_label"][-count:]
        self.last_ts[slots] = state["last_ts"][-count:]

    def forget(self, keys: Sequence[str]) -> None:
        """Stop tracking ``keys`` (not counted as evictions): their slots are free again."""
        freed = [slot for key in keys if (slot := self._slots.pop(key, None)) is not None]
        if freed:
            self._reset(np.asarray(freed, dtype=np.int64))
            self._free.extend(freed)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the store exactly, tensors moved to the CPU."""
        return {
            "slots": list(self._slots.items()),
            "free": list(self._free),
            "capacity": self._capacity,
            "evictions": self.evictions,
            "h0": self.h0.cpu(),
            "c0": self.c0.cpu(),
            "window": self.window.cpu(),
            "window_len": self.window_len.copy(),
            "prev_label": self.prev_label.copy(),
            "last_ts": self.last_ts.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, onto this store's device."""
        self._slots = OrderedDict(state["slots"])
        self._free = list(state["free"])
        self._capacity = state["capacity"]
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
