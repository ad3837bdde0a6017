"""The error of each path in lower precision, against float64.

For every memory and cell path, one random input and one random output gradient (``paths.draw``: float64 values,
cast) go through the path built in float64 (the reference: on the same device when it supports float64, else the
CPU) and then, on the benchmark device, through:

    float64             a second float64 build: should be exactly 0 (the path is deterministic)
    float32             the path in float32
    autocast-bfloat16   float32 path and input, forward under torch.autocast(device_type, dtype=torch.bfloat16)
    autocast-float16    the same with float16 (CUDA only)

Reported: the relative error ||out - ref|| / ||ref|| (Frobenius norm, in float64) of the output and of the
gradient of the input (u for the memory paths, x for the cells). The backward pass runs outside the autocast
region, as torch recommends; its ops then take the dtypes autocast gave the forward.

What autocast does to each path follows from which ops it casts: matmul, einsum and conv1d run in bfloat16,
FFTs do not (torch keeps them in float32). Measured on the CPU at the psMNIST shape (batch 100, 784 steps,
order 256, theta 784; torch 2.13), relative error of the output / of the input gradient:

    path           float32            autocast-bfloat16
    memory-loop    2.5e-06 / 2.5e-06  5.9e-02 / 6.0e-02  a bfloat16 product per step: rounding compounds
    memory-fft     2.0e-07 / 2.2e-07  2.0e-07 / 2.2e-07  untouched by autocast
    memory-conv    3.7e-07 / 4.4e-07  2.9e-03 / 2.9e-03  one bfloat16 convolution: no compounding
    memory-final   2.7e-07 / 2.0e-07  2.9e-03 / 2.9e-03  one bfloat16 product
    lmu-fft        2.5e-07 / 2.8e-07  5.0e-03 / 4.0e-03  the RNNCell's products in bfloat16

float64 against float64 is 0 on every path (each is deterministic on the CPU). ``contime bench --precision``
prints the table for any shape and device.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch

from .paths import PATHS, BenchShape, PathUnavailable, build_case


def precisions(device: torch.device) -> list[tuple[str, torch.dtype, torch.dtype | None]]:
    """(label, dtype of the build, autocast dtype or None) for ``device``."""
    rows = [("float64", torch.float64, None), ("float32", torch.float32, None),
            ("autocast-bfloat16", torch.float32, torch.bfloat16)]
    if device.type == "cuda":
        rows.append(("autocast-float16", torch.float32, torch.float16))
    return rows


def supports_float64(device: torch.device) -> bool:
    """Whether ``device`` computes in float64 (MPS, for one, does not)."""
    try:
        return bool((torch.ones(2, dtype=torch.float64, device=device) * 3).sum().item() == 6)
    except (RuntimeError, TypeError):
        return False


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64 (Frobenius norms); inf when the reference is zero."""
    value = value.detach().to(device=reference.device, dtype=torch.float64)
    reference = reference.detach().to(torch.float64)
    scale = float(torch.linalg.vector_norm(reference))
    diff = float(torch.linalg.vector_norm(value - reference))
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _run(case, grad: torch.Tensor, autocast_dtype: torch.dtype | None):
    """The case's output and input gradient, the forward under autocast when ``autocast_dtype`` is given."""
    x = case.input.detach().requires_grad_(True)
    context = (torch.autocast(device_type=x.device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else contextlib.nullcontext())
    with context:
        out = case.run(x)
    (grad_x,) = torch.autograd.grad(out, (x,), grad.to(device=out.device, dtype=out.dtype))
    return out.detach(), grad_x


def precision_rows(names: Iterable[str], shape: BenchShape, device: torch.device | str) -> list[dict[str, Any]]:
    """One row per (path, precision) for the memory and cell paths among ``names`` (baselines are left out).

    Row keys: path, kind, precision, dtype, autocast, output_dtype, output_rel_err, grad_rel_err,
    reference_device; ``skipped`` (the reason) for a path that cannot be built here, ``error`` for a precision
    the path fails in (then no errors are given).
    """
    device = torch.device(device)
    reference_device = device if supports_float64(device) else torch.device("cpu")
    rows: list[dict[str, Any]] = []
    for name in names:
        path = PATHS[name]
        if path.kind == "baseline":
            continue
        try:
            build_case(path, shape, device, torch.float32)  # can the path run here at all (e.g. needs CUDA)?
            reference = build_case(PATHS[path.reference] if path.reference else path, shape, reference_device,
                                   torch.float64)
        except PathUnavailable as why:
            rows.append({"path": name, "kind": path.kind, "precision": None, "skipped": str(why)})
            continue
        grad = reference.output_grad()
        out_ref, grad_ref = _run(reference, grad, None)
        del reference
        for label, dtype, autocast_dtype in precisions(device):
            row = {"path": name, "kind": path.kind, "precision": label, "dtype": _name(dtype),
                   "autocast": None if autocast_dtype is None else _name(autocast_dtype),
                   "reference_device": str(reference_device)}
            try:
                out, grad_x = _run(build_case(path, shape, device, dtype), grad, autocast_dtype)
            except PathUnavailable as why:  # e.g. a float32 kernel has no float64 build
                row["skipped"] = str(why)
                rows.append(row)
                continue
            except Exception as err:  # noqa: BLE001 - one failing path must not end the table
                # A path that cannot run in this precision is a finding to report, not a reason to stop.
                row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
            else:
                row.update(output_dtype=_name(out.dtype), output_rel_err=relative_error(out, out_ref),
                           grad_rel_err=relative_error(grad_x, grad_ref))
                del out, grad_x
            rows.append(row)
    return rows
