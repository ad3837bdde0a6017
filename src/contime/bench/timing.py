"""Time one call and measure its peak memory, on CUDA as on CPU.

CUDA: a pair of ``torch.cuda.Event`` around each call, read after one synchronize at the end, so the host never
waits between calls and the times are what the GPU spent (launch gaps included). CPU: ``time.perf_counter``.
The statistic to report is the median; the minimum is kept beside it. ``graph_replay`` captures a call in a CUDA
graph, so that replays time the GPU's work alone: a path of many small kernels is otherwise bound by the host's
launches (tens of microseconds), not by the GPU.

Peak memory is measured in a separate, untimed call: on CPU the bookkeeping (a dispatch mode that sees every
tensor, ``contime.training.memory.peak_tensor_bytes``) slows the call down.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from ..training.memory import peak_tensor_bytes


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _times_ms(fn: Callable[[], Any], device: torch.device, repeat: int) -> list[float]:
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeat)]
        synchronize(device)
        for start, end in events:
            start.record()
            fn()
            end.record()
        synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def time_call(fn: Callable[[], Any], device: torch.device | str, warmup: int = 1, repeat: int = 5,
              budget_s: float | None = None) -> dict[str, Any]:
    """Milliseconds per call of ``fn()`` on ``device``.

    Args:
        fn: the work to time; its result is dropped.
        device: where ``fn`` runs (decides CUDA events or ``perf_counter``).
        warmup: untimed calls first (at least one: allocator, caches, cuDNN/cuFFT plans).
        repeat: timed calls.
        budget_s: if the last warm-up call shows that ``repeat`` calls would take longer than this, time fewer
            (never fewer than one); None times all ``repeat``.

    Returns:
        ``{"median_ms", "min_ms", "mean_ms", "max_ms", "times_ms": [...], "repeat": calls timed,
        "warmup": warm-up calls}``.
    """
    device = torch.device(device)
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    warmup = max(1, int(warmup))
    last = 0.0
    for _ in range(warmup):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        last = time.perf_counter() - start
    if budget_s is not None:
        repeat = max(1, min(repeat, int(budget_s / max(last, 1e-9))))
    times = _times_ms(fn, device, repeat)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "mean_ms": statistics.fmean(times),
            "max_ms": max(times), "times_ms": times, "repeat": repeat, "warmup": warmup}


def graph_replay(fn: Callable[[], Any], device: torch.device | str, warmup: int = 1) -> Callable[[], None]:
    """``fn`` captured in one CUDA graph; returns the graph's ``replay`` (it keeps the graph, and so the memory
    of the captured call, alive).

    ``warmup`` calls run first on a side stream, as capture requires: the autotuners, caches, cuFFT plans and
    the allocator settle there, outside the graph. A call that synchronizes with the host (``.item()``, a copy
    to the CPU) cannot be captured: torch raises.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(1, int(warmup))):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    return graph.replay


def peak_bytes(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Peak bytes of tensors alive at once during one call of ``fn()``, beyond what was allocated before it.

    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``, minus ``memory_allocated`` before the call.
    CPU: ``peak_tensor_bytes`` (tensors created during the call; inputs and parameters are not counted).
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    return int(peak_tensor_bytes(fn)[1])
