"""Host arrays onto the learner's device without stalling a GPU."""

from __future__ import annotations

import numpy as np
import torch

#: Alignment of each array in the pinned buffer (bytes), enough for any dtype's loads.
_ALIGN = 64
#: The smallest pinned buffer allocated (bytes): several large micro-batches, so that the host
#: rarely finds the buffer full (it then waits for the GPU to catch up).
MIN_BUFFER_BYTES = 32 << 20
_TORCH_DTYPES = {
    np.dtype(np.int64): torch.int64,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.bool_): torch.bool,
}


class PinnedStaging:
    """Copies host arrays to one GPU through a pinned (page-locked) ring buffer, without blocking.

    A copy from ordinary (pageable) memory makes the host wait until the GPU has finished every
    kernel queued before it, and a micro-batch copies several index arrays, so the host and the
    GPU would take turns instead of working at once. torch's own ``pin_memory()`` avoids that
    but costs tens of microseconds a call. Here each array is written into the next free bytes of
    one pinned buffer and copied from there asynchronously; an event recorded after each copy
    tells when the buffer's bytes may be written again: when the buffer is full, the host waits
    for the last copy (long done, as a rule) and starts again at its beginning. That covers the
    earlier copies too as long as all of them run on one stream, as the learner's do (the
    device's current stream).
    """

    def __init__(self, device: torch.device, *, min_buffer_bytes: int = MIN_BUFFER_BYTES) -> None:
        self.device = device
        self.min_buffer_bytes = min_buffer_bytes
        self._buffer: torch.Tensor | None = None
        self._bytes = np.zeros(0, dtype=np.uint8)  # the buffer's memory, seen from NumPy
        self._used = 0
        self._last_copy: torch.cuda.Event | None = None

    def copy(self, array: np.ndarray) -> torch.Tensor:
        """``array`` on the device; the copy may still be in flight (stream-ordered)."""
        array = np.ascontiguousarray(array)
        dtype = _TORCH_DTYPES.get(array.dtype)
        if dtype is None:
            return torch.from_numpy(array).to(self.device)
        if array.size == 0:
            return torch.empty(array.shape, dtype=dtype, device=self.device)
        size = array.nbytes
        start = -(-self._used // _ALIGN) * _ALIGN
        if start + size > self._bytes.size:
            if self._last_copy is not None:
                self._last_copy.synchronize()  # every copy out of the buffer has finished
            if size > self._bytes.size:
                self._buffer = torch.empty(
                    max(2 * size, self.min_buffer_bytes), dtype=torch.uint8, pin_memory=True
                )
                self._bytes = self._buffer.numpy()
            start = 0
        assert self._buffer is not None
        self._bytes[start : start + size].view(array.dtype).reshape(array.shape)[...] = array
        staged = self._buffer[start : start + size].view(dtype).view(array.shape)
        on_device = staged.to(self.device, non_blocking=True)
        self._last_copy = torch.cuda.Event()
        self._last_copy.record(torch.cuda.current_stream(self.device))
        self._used = start + size
        return on_device


_STAGING: dict[torch.device, PinnedStaging] = {}


def to_device(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """``array`` as a tensor on ``device``: on the CPU sharing its memory, on a CUDA GPU through
    the device's :class:`PinnedStaging` (one per device and process; the learner is
    single-threaded), on other devices by a plain copy."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return torch.as_tensor(array, device=device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    staging = _STAGING.get(device)
    if staging is None:
        staging = _STAGING[device] = PinnedStaging(device)
    return staging.copy(array)
