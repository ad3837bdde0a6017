"""Peak tensor memory of a piece of work, on CPU as on CUDA.

CUDA has an allocator that records its peak; the CPU has none, and the process's resident set hides memory that
the C allocator reuses. ``peak_tensor_bytes`` runs a function under a dispatch mode that sees every tensor each
operator creates (forward and backward alike), keeps a weak reference to its storage, and records the largest
total of storages alive at once. Views and in-place results share an input's storage and are not counted again;
storages that existed before the call (parameters, inputs) are not counted at all.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _LiveStorages(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _prune(self) -> None:
        dead = [key for key, (ref, _) in self.live.items() if ref.expired()]
        for key in dead:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        self._prune()
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in inputs or key in self.live or storage.nbytes() == 0:
                continue  # a view, an in-place result, or already counted
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_tensor_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` and return its result and the peak bytes of tensors it created that were alive at once.

    Counts tensors on every device; use it for the CPU, where no allocator keeps a peak.
    """
    mode = _LiveStorages()
    with mode:
        result = fn()
    return result, mode.peak
