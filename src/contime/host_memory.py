"""Huge pages for large CPU tensors: torch's own THP_MEM_ALLOC_ENABLE, and what benchmark records say about it.

glibc's malloc serves every block above 32 MiB with a fresh ``mmap`` and unmaps it on free. A tensor that size,
made again at the next step, is paged in again: one fault per 4 KiB page, each page zeroed by the kernel. At the
psMNIST shape (batch 100 x 784 steps x 212 channels: 66 MB per activation) that is most of a CPU training step.
With ``THP_MEM_ALLOC_ENABLE=1``, torch aligns each allocation of 2 MiB or more to 2 MiB and asks the kernel for
huge pages there (``madvise``), so the same tensor takes 512 times fewer faults. Measured on this project's
2-core CPU (/tmp scripts, minimum of 10 training steps, the two settings alternated in two rounds): the
psMNIST LMU in fft mode 866-1,118 ms without, 459-517 ms with; ``nn.LSTM(157)`` 758-799 against 413-463 ms;
peak resident memory 1,171 MiB against 1,177 MiB.

torch reads the variable once, at its first allocation, so it must be in the environment before torch is
imported. The ``contime`` command sets it (``contime_launch``) unless it is already set; a script sets it
itself (``THP_MEM_ALLOC_ENABLE=1 python train.py``). The kernel must allow huge pages: "always" or "madvise" in
``/sys/kernel/mm/transparent_hugepage/enabled``.
"""

from __future__ import annotations

import os
from pathlib import Path

HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"
_KERNEL_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def kernel_huge_pages() -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise" or "never"), None where it has none."""
    try:
        text = _KERNEL_SETTING.read_text()
    except OSError:
        return None
    chosen = [word.strip("[]") for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else None


def host_memory_settings() -> dict[str, str | None]:
    """What a benchmark record says about host memory: torch's THP_MEM_ALLOC_ENABLE as this process saw it
    at start-up, and the kernel's mode. Both change CPU times by about 2x at the psMNIST shape."""
    return {"thp_mem_alloc_enable": os.environ.get(HUGE_PAGES_VARIABLE), "transparent_hugepage": kernel_huge_pages()}
