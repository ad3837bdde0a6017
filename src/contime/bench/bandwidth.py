"""Peak memory bandwidth, and the time floor it sets for a number of bytes.

Convention: bandwidth counts every byte moved, read and written alike, as vendors' peak figures do. A copy of
N bytes moves 2N (N read, N written), so ``measure_copy_bandwidth`` reports 2N / time.

On CUDA the floor uses the card's nominal peak when ``NOMINAL_GBPS`` knows the card (a device-to-device copy
reaches about 90 % of it, so the measured rate would flatter every path), else the measured copy rate. On CPU
the measured copy rate is the only figure. ``--bandwidth`` overrides both.
"""

from __future__ import annotations

import statistics
import time

import torch

# Nominal peak bandwidth in GB/s (1e9 bytes/s), matched as substrings of torch.cuda.get_device_name, first hit
# wins: the specific names come before "H100" so that the PCIe and NVL cards do not take the SXM figure.
NOMINAL_GBPS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0),       # HBM3e, 141 GB
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),  # HBM2e
    ("H100", 3350.0),       # SXM5, HBM3 ("NVIDIA H100 80GB HBM3")
)


def nominal_bandwidth_gbps(device_name: str) -> float | None:
    """The nominal peak of a CUDA card from its name (``torch.cuda.get_device_name``), or None if unknown."""
    for key, gbps in NOMINAL_GBPS:
        if key.lower() in device_name.lower():
            return gbps
    return None


def measure_copy_bandwidth(device: torch.device | str, nbytes: int | None = None, repeat: int = 5) -> float:
    """GB/s of ``dst.copy_(src)`` on ``device``, counting bytes read plus bytes written (2 * nbytes per copy).

    Args:
        nbytes: size of each buffer; default 1 GiB on CUDA, 256 MiB on CPU (well beyond the caches).
        repeat: timed copies after one warm-up; the median is used.
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    times = []
    for i in range(repeat + 1):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            dst.copy_(src)
            end.record()
            torch.cuda.synchronize(device)
            seconds = start.elapsed_time(end) / 1e3
        else:
            start_s = time.perf_counter()
            dst.copy_(src)
            seconds = time.perf_counter() - start_s
        if i:  # the first copy touches fresh pages: not timed
            times.append(seconds)
    moved = 2 * src.numel() * src.element_size()
    return moved / statistics.median(times) / 1e9


def floor_ms(nbytes: int | None, bandwidth_gbps: float) -> float | None:
    """Milliseconds to move ``nbytes`` at ``bandwidth_gbps`` (None stays None)."""
    if nbytes is None:
        return None
    return nbytes / (bandwidth_gbps * 1e9) * 1e3
