"""Time every (path, pass), then relate each time to the LSTM's and to the bandwidth floor.

Per (path, pass) row: the median milliseconds (and min, mean, max, every time), the peak memory of one call,
``ratio_to_lstm`` = ms / the ``lstm`` path's ms for the same pass in the same run (> 1: slower than the LSTM),
and ``floor_fraction`` = floor_ms / ms, where floor_ms is the bytes the pass must move (``Case.floor_bytes``)
at the peak bandwidth (1.0: at the floor). Paths without a floor (cells, the LSTM: they are bound by their
sequential steps, not by bandwidth) have None there. On a GPU, ``tiles``: the tile each Triton kernel's
autotuner chose while the path ran.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable

import torch

from .bandwidth import floor_ms, measure_copy_bandwidth, nominal_bandwidth_gbps
from .paths import PATHS, REFERENCE_PATH, BenchShape, PathUnavailable, build_case
from .record import device_name
from .timing import graph_replay, peak_bytes, time_call


def resolve_bandwidth(device: torch.device, option_gbps: float | None, copy_bytes: int | None = None) -> dict[str, Any]:
    """The peak bandwidth the floors use: ``{"bandwidth_gbps", "bandwidth_source", "copy_gbps"}``.

    Source: "option" (``--bandwidth``), "nominal" (a CUDA card in ``NOMINAL_GBPS``) or "measured" (the copy rate,
    read + written bytes per second). The copy rate is measured in every case and reported beside it.
    """
    copy_gbps = measure_copy_bandwidth(device, copy_bytes)
    if option_gbps is not None:
        return {"bandwidth_gbps": float(option_gbps), "bandwidth_source": "option", "copy_gbps": copy_gbps}
    nominal = nominal_bandwidth_gbps(device_name(device)) if device.type == "cuda" else None
    if nominal is not None:
        return {"bandwidth_gbps": nominal, "bandwidth_source": "nominal", "copy_gbps": copy_gbps}
    return {"bandwidth_gbps": copy_gbps, "bandwidth_source": "measured", "copy_gbps": copy_gbps}


TUNED_MODULES = ("contime.ops.lmu_cell.core_triton", "contime.ops.lmu_memory.toeplitz")


def tuned_tiles() -> dict[str, str]:
    """The tile that each autotuned Triton kernel launch has chosen so far in this process ("module:launch" ->
    Triton's config), from the modules' ``_TUNED`` registries; empty where nothing was autotuned (off CUDA)."""
    tiles = {}
    for module_name in TUNED_MODULES:
        module = sys.modules.get(module_name)
        for name, tuned in getattr(module, "_TUNED", {}).items():
            best = getattr(tuned, "best_config", None)
            if isinstance(name, str) and best is not None:  # string keys: the latest kernel of each launch
                tiles[f"{module_name.rsplit('.', 1)[1]}:{name}"] = str(best)
    return tiles


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _time_pass(fn: Callable[[], Any], device: torch.device, cuda_graph: bool, **timing) -> dict[str, Any]:
    """``time_call`` of ``fn``, or of the replays of a CUDA graph of it; the graph, and the memory of its captured
    call, go when this returns or raises."""
    return time_call(graph_replay(fn, device, timing["warmup"]) if cuda_graph else fn, device, **timing)


def run_timings(names: Iterable[str], shape: BenchShape, device: torch.device, passes: Iterable[str], *,
                warmup: int = 1, repeat: int = 5, budget_s: float | None = None, bandwidth_gbps: float,
                measure_memory: bool = True, dtype: torch.dtype = torch.float32, cuda_graph: bool = False,
                progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One row per (path, pass), in the order of ``names`` then ``passes``.

    A path whose builder raises ``PathUnavailable`` gets rows with ``skipped`` (the reason); one that fails while
    running (out of memory, an unsupported op) gets rows with ``error``. Both have ``ms`` None.
    ``progress`` is called with each row as it is measured. ``cuda_graph``: time replays of each pass captured
    in a CUDA graph (``graph_replay``: the GPU's time without the host's launch gaps; CUDA only); peak memory
    is still that of a plain call.
    """
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA device, got {device}")
    passes = list(passes)
    rows: list[dict[str, Any]] = []
    for name in names:
        tiles_before = tuned_tiles()
        path = PATHS[name]
        base = {"path": name, "kind": path.kind, "description": path.description, "cuda_graph": cuda_graph}
        try:
            case = build_case(path, shape, device, dtype)
            failure = None
        except PathUnavailable as why:
            case, failure = None, {"skipped": str(why)}
        except Exception as err:  # noqa: BLE001 - one failing path (a kernel that does not compile) must not end the run
            case, failure = None, {"error": _first_line(err)}
        grad = None
        if case is not None and "backward" in passes:
            try:
                grad = case.output_grad()
            except Exception as err:  # noqa: BLE001
                case, failure = None, {"error": _first_line(err)}
        for pass_name in passes:
            row = {**base, "pass": pass_name, "ms": None}
            if case is None:
                row.update(failure)
            else:
                row.update(case.info)
                try:
                    fn = case.pass_fn(pass_name, grad)
                    timing = _time_pass(fn, device, cuda_graph, warmup=warmup, repeat=repeat, budget_s=budget_s)
                    memory = peak_bytes(fn, device) if measure_memory else None
                except Exception as err:  # noqa: BLE001
                    row["error"] = _first_line(err)
                else:
                    floor_bytes = None if case.floor_bytes is None else case.floor_bytes.get(pass_name)
                    floor = floor_ms(floor_bytes, bandwidth_gbps)
                    row.update(ms=timing["median_ms"], min_ms=timing["min_ms"], mean_ms=timing["mean_ms"],
                               max_ms=timing["max_ms"], times_ms=timing["times_ms"], repeat=timing["repeat"],
                               warmup=timing["warmup"], peak_bytes=memory,
                               peak_mb=None if memory is None else memory / 1e6,
                               floor_bytes=floor_bytes, floor_ms=floor,
                               floor_fraction=None if floor is None else floor / timing["median_ms"])
            rows.append(row)
            if progress is not None:
                progress(row)
        # The tiles the autotuner chose while this path ran (its kernels' first launches), for every pass's row.
        tiles = {k: v for k, v in tuned_tiles().items() if tiles_before.get(k) != v}
        if tiles:
            for row in rows[-len(passes):]:
                row["tiles"] = tiles
        del case, grad
        if device.type == "cuda":
            torch.cuda.empty_cache()
    add_lstm_ratios(rows)
    return rows


def add_lstm_ratios(rows: list[dict[str, Any]]) -> None:
    """Set ``lstm_ms`` and ``ratio_to_lstm`` (ms / lstm_ms, same pass) on every row; None without an LSTM time."""
    reference = {r["pass"]: r["ms"] for r in rows if r["path"] == REFERENCE_PATH and r.get("ms")}
    for r in rows:
        lstm_ms = reference.get(r["pass"])
        r["lstm_ms"] = lstm_ms
        r["ratio_to_lstm"] = r["ms"] / lstm_ms if (lstm_ms and r.get("ms") is not None) else None
