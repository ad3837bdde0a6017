"""Data given to the trainer, its order, its batches, and how a batch reaches the model.

A split is either
    * a pair ``(x, y)``: ``x`` a Tensor (N, ...) or a tuple of Tensors that all have N rows (the model is then
      called as ``model(*x)``), ``y`` a Tensor (N, ...); tensors may already live on the GPU;
    * a map-style ``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs (collated by PyTorch's default
      collate; ``x`` may again be a tuple). Iterable datasets are refused: their order cannot be replayed.

The order of an epoch is a pure function of (seed, epoch): ``epoch_order``. So is the random state of each
optimizer step (``step_seed``), which is why a resumed run replays the same numbers without depending on what ran
in between.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data import default_collate

_ORDER, _STEP = 0, 1


def _mix(*words: int) -> int:
    """A 63-bit seed from non-negative ints, well mixed (numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation (n,) int64 of the training samples in epoch ``epoch`` (0-based), the same everywhere."""
    generator = torch.Generator().manual_seed(_mix(seed, epoch, _ORDER))
    return torch.randperm(n, generator=generator)


def step_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """The seed of the random numbers (dropout, ...) of optimizer step ``step`` of ``epoch`` on ``rank``."""
    return _mix(seed, epoch, _STEP, step, rank)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, *, drop_last: bool = False,
                  max_steps: int | None = None, min_size: int = 1) -> list[torch.Tensor]:
    """The global batches of an epoch: a list of int64 index tensors (b,), b <= batch_size.

    Args:
        n: training samples.
        drop_last: drop the final batch when it is smaller than ``batch_size``.
        max_steps: keep at most this many batches.
        min_size: drop the final batch when it has fewer samples (under DDP: the number of ranks, so that every
            rank gets at least one sample).
    """
    order = epoch_order(n, seed, epoch)
    batches = list(torch.split(order, batch_size))
    if batches and (len(batches[-1]) < min_size or (drop_last and len(batches[-1]) < batch_size)):
        batches.pop()
    if max_steps is not None:
        batches = batches[:max_steps]
    return batches


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous share of a global batch (sizes differ by at most one)."""
    return torch.tensor_split(indices, world_size)[rank]


class TensorData:
    """A split held as tensors: ``x`` a Tensor or tuple of Tensors with N rows, ``y`` a Tensor with N rows."""

    def __init__(self, x: torch.Tensor | tuple[torch.Tensor, ...], y: torch.Tensor | None, name: str = "data"):
        xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        if not xs or not all(isinstance(t, torch.Tensor) for t in xs):
            raise TypeError(f"{name}: x must be a Tensor or a tuple of Tensors, got {type(x).__name__}")
        if y is not None and not isinstance(y, torch.Tensor):
            raise TypeError(f"{name}: y must be a Tensor, got {type(y).__name__}")
        rows = {t.shape[0] if t.ndim else None for t in xs + ((y,) if y is not None else ())}
        if len(rows) != 1 or None in rows:
            shapes = [tuple(t.shape) for t in xs] + ([tuple(y.shape)] if y is not None else [])
            raise ValueError(f"{name}: x and y must have the same number of rows (first dimension), got shapes "
                             f"{shapes}")
        (self.n,) = rows
        if self.n == 0:
            raise ValueError(f"{name} is empty")
        self.x, self.y, self.is_tuple = xs, y, isinstance(x, (tuple, list))

    def __len__(self) -> int:
        return self.n

    @property
    def device(self) -> torch.device:
        """Where the inputs live (the first input tensor's device)."""
        return self.x[0].device

    def batch(self, indices: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
        xs = tuple(t.index_select(0, indices.to(t.device)) for t in self.x)
        y = None if self.y is None else self.y.index_select(0, indices.to(self.y.device))
        return (xs if self.is_tuple else xs[0]), y


Data = TensorData | Dataset


def as_data(data: Any, name: str, *, targets: bool = True) -> Data:
    """Check a split and return it as ``TensorData`` or a map-style ``Dataset``.

    Args:
        data: ``(x, y)``, a ``Dataset``, or (``targets=False``, for prediction) ``x`` alone.
        name: the argument's name, for error messages ("train", "val", ...).
    """
    if isinstance(data, TensorData):
        return data
    if isinstance(data, TensorDataset):
        tensors = data.tensors
        if targets:
            if len(tensors) < 2:
                raise ValueError(f"{name}: a TensorDataset needs at least (x, y), got {len(tensors)} tensor(s)")
            return TensorData(tensors[:-1] if len(tensors) > 2 else tensors[0], tensors[-1], name)
        return TensorData(tensors if len(tensors) > 1 else tensors[0], None, name)
    if isinstance(data, IterableDataset):
        raise TypeError(f"{name}: an IterableDataset cannot be replayed in a fixed order; give a map-style "
                        f"Dataset or (x, y) tensors")
    if isinstance(data, Dataset):
        if not hasattr(data, "__len__"):
            raise TypeError(f"{name}: the Dataset must define __len__")
        if len(data) == 0:
            raise ValueError(f"{name} is empty")
        return data
    if isinstance(data, torch.Tensor):
        if targets:
            raise TypeError(f"{name} must be (x, y) or a Dataset, got a single Tensor")
        return TensorData(data, None, name)
    if isinstance(data, (tuple, list)):
        if not targets:
            return TensorData(data, None, name)
        if len(data) != 2:
            raise ValueError(f"{name} must be a pair (x, y), got a sequence of {len(data)} items")
        return TensorData(data[0], data[1], name)
    raise TypeError(f"{name} must be (x, y) tensors or a map-style Dataset, got {type(data).__name__}")


def _split_item(batch: Any, name: str) -> tuple[Any, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"{name}: Dataset items must be (x, y) pairs, got a collated {type(batch).__name__}")
    return batch[0], batch[1]


def iterate_batches(data: Data, batches: Sequence[torch.Tensor], *, num_workers: int = 0,
                    pin_memory: bool = False, name: str = "data",
                    generator: torch.Generator | None = None) -> Iterator[tuple[Any, torch.Tensor | None]]:
    """Yield ``(x, y)`` for each index tensor of ``batches``, in order (on the data's own device).

    A ``Dataset`` goes through a ``DataLoader`` (``num_workers`` processes; ``generator`` seeds its workers).
    """
    if isinstance(data, TensorData):
        for indices in batches:
            yield data.batch(indices)
        return
    if not batches:
        return
    loader = DataLoader(data, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers,
                        collate_fn=default_collate, pin_memory=pin_memory, generator=generator)
    for batch in loader:
        yield _split_item(batch, name)


def sequential_batches(n: int, batch_size: int) -> list[torch.Tensor]:
    """Index tensors 0..n-1 in order, ``batch_size`` at a time (for evaluation)."""
    return list(torch.split(torch.arange(n), batch_size))


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors, and tensors inside tuples, lists and dicts, to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def batch_size_of(y: torch.Tensor | None, x: Any) -> int:
    """Samples in a batch: rows of ``y`` (or of the first tensor of ``x``)."""
    if y is not None:
        return int(y.shape[0])
    first = x[0] if isinstance(x, (tuple, list)) else x
    return int(first.shape[0])


def call_model(model: torch.nn.Module, x: Any) -> torch.Tensor:
    """``model(x)``, ``model(*x)`` for a tuple, ``model(**x)`` for a dict; the output must be a Tensor."""
    if isinstance(x, (tuple, list)):
        out = model(*x)
    elif isinstance(x, dict):
        out = model(**x)
    else:
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a Tensor of predictions, got {type(out).__name__}; wrap a model "
                        f"that returns (output, state) in a module that returns the prediction only")
    return out
