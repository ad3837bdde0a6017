"""``contime bench``: speed, peak memory and precision of the LMU's paths, against nn.LSTM and the bandwidth floor.

    timing.py     time_call (CUDA events or perf_counter, median) and peak_bytes of one call
    bandwidth.py  nominal peaks of known cards, the measured copy rate, floor_ms
    paths.py      the registry: register_path / register_lmu_path, Case, BenchShape, the registered paths
    runner.py     every (path, pass) timed; ratios to the LSTM and fractions of the floor
    precision.py  relative errors of float32 and autocast against float64
    record.py     run metadata (device, torch, git commit, timestamp) and the JSON-lines writer
    cli.py        the typer command and its rich tables
"""

from .paths import (PASSES, PATHS, BenchPath, BenchShape, Case, PathUnavailable, build_case, draw, memory_case,
                    memory_system, module_on, register_lmu_path, register_path, traffic_floor)
from .timing import peak_bytes, time_call

__all__ = ["PASSES", "PATHS", "BenchPath", "BenchShape", "Case", "PathUnavailable", "build_case", "draw",
           "memory_case", "memory_system", "module_on", "register_lmu_path", "register_path", "traffic_floor",
           "peak_bytes", "time_call"]
