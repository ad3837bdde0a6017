"""Multi-process training under torchrun, and device selection.

Launched by ``torchrun --nproc_per_node=W script.py``, the same script trains with DistributedDataParallel: the
trainer initializes the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) with the "nccl" backend on CUDA and "gloo" on the CPU, unless
the script did so already. Each rank takes its share of every global batch; DDP averages the gradients. Rank 0
alone writes files and shows progress.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def launched_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def resolve_device(spec: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The device for a ``TrainConfig.device`` value.

    "auto" is CUDA when available, else the CPU. Under torchrun, "auto" and "cuda" mean ``cuda:LOCAL_RANK``.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not spec.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device is {spec!r} but CUDA is not available")
    if spec == "cuda":
        index = local_rank if distributed else torch.cuda.current_device()
    else:
        index = int(spec.split(":", 1)[1])
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r} (index {index}) does not exist: {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched with ``WORLD_SIZE`` > 1; a single process otherwise.

    Args:
        device_type: "cpu" or "cuda", which picks the backend ("gloo" or "nccl") if the group is not yet
            initialized. A group initialized by the caller is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()))
    world_size = launched_world_size()
    if world_size <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    atexit.register(_destroy)
    return DistInfo(rank, world_size, local_rank)


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for a single process)."""
    if info.is_distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of ``tensor`` over ranks, as a new tensor (``tensor`` itself is left alone)."""
    out = tensor.clone()
    if info.is_distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
