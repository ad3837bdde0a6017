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


INT_ARGUMENTS = {"T", "B", "HID", "N", "D", "R", "C", "T_PER_SPLIT"}  # the kernels' integer (not pointer) arguments


def compile_for_gpu(kernel, constexprs: dict, num_warps: int = 4, capability: int = 90):
    """Compile a contime kernel for an NVIDIA GPU of compute ``capability`` without one: Triton builds the PTX
    and runs its bundled ptxas on this machine. Arguments named ``*_ptr`` are float32 pointers, those in
    ``INT_ARGUMENTS`` int32, the rest the ``constexprs``. Returns Triton's compiled kernel (``.asm["ptx"]``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    signature = {name: "*fp32" if name.endswith("_ptr") else "i32" if name in INT_ARGUMENTS else "constexpr"
                 for name in kernel.arg_names}
    return triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})


def register_usage(compiled, arch: str = "sm_90a") -> dict:
    """Registers per thread and spill bytes of a compiled kernel, from ``ptxas -v`` (Triton's bundled ptxas)
    run on its PTX: {"registers", "spill_stores", "spill_loads"}."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    import triton
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as folder:
        ptx = Path(folder) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        report = subprocess.run([str(ptxas), "-v", f"--gpu-name={arch}", str(ptx), "-o", str(ptx.with_suffix(".o"))],
                                capture_output=True, text=True, check=True).stderr
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    return {"registers": int(re.search(r"Used (\d+) registers", report).group(1)),
            "spill_stores": int(spills.group(1)) if spills else 0, "spill_loads": int(spills.group(2)) if spills else 0}
