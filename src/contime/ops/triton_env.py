"""Where the Triton kernels can run: whether Triton is installed, and whether its interpreter is on."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton is installed (the kernels then run on CUDA, or anywhere under TRITON_INTERPRET=1).
    Looked up once: it sits on every forward call's dispatch."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1``: kernels run on the CPU with numpy, one program after another."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def launch_device(device):
    """Context for a kernel launch: Triton launches on the current CUDA device, which may not be the
    tensors'; nothing to do elsewhere (the interpreter, the CPU)."""
    import torch
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
