"""The registry of benchmark paths: what ``contime bench`` times and checks for precision.

A path is a named builder ``build(shape, device, dtype) -> Case``. The ``Case`` is a function of one input tensor
(the timed region), that input, the parameters whose gradients the backward pass computes, and the bytes that
bound each pass from below. Kinds: "memory" (the linear memory m alone), "cell" (a whole LMU) and "baseline"
(``lstm``, the reference of every ratio).

Adding a path takes a builder and a decorator, e.g. a Triton kernel for the linear memory:

    from contime.bench.paths import PathUnavailable, memory_case, memory_system, register_path

    @register_path("memory-triton", kind="memory", description="Triton scan, all states")
    def _memory_triton(shape, device, dtype):
        if device.type != "cuda":
            raise PathUnavailable("needs CUDA")  # skipped, with this note, instead of failing the run
        system = memory_system(shape, device, dtype)   # A_bar, B_bar, H, built outside the timed region
        return memory_case(shape, device, dtype, lambda u: my_scan(u, system.A_bar, system.B_bar))

and an LMU mode is one line: ``register_lmu_path("lmu-cell-fused", mode="fused", config="cell")``.

Builders must be deterministic for a given shape, so that the float64 and float32 builds of a path compute the
same function of the same input (``precision.py`` compares them): ``build_case`` seeds the CPU generator before
calling the builder; make modules on the CPU in float32 and move them with ``module_on``, and draw inputs
with ``draw``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from ..legendre import discretize, impulse_response
from ..lmu import LMU
from ..ops.lmu_memory import (linear_memory_block_gemm, linear_memory_chunk_scan, linear_memory_conv,
                              linear_memory_fft, linear_memory_final, linear_memory_naive)
from ..ops.triton_env import interpreting
from .timing import time_call

KINDS = ("memory", "cell", "baseline")
PASSES = ("forward", "backward")  # "backward" is timed as forward + backward together
REFERENCE_PATH = "lstm"  # every ratio is path_ms / this path's ms for the same pass
SEED = 0


class PathUnavailable(Exception):
    """Raised by a builder when its path cannot run here (no such mode, no CUDA, ...): skipped with the message."""


@dataclass(frozen=True)
class BenchShape:
    """The problem size: ``batch`` sequences of ``time`` steps, ``memory_d`` memories of order ``order`` with window
    ``theta``, hidden size ``hidden`` (the LMU's hidden cell and the LSTM). Defaults: the psMNIST LMU."""

    batch: int = 100
    time: int = 784
    order: int = 256
    hidden: int = 212
    theta: float = 784.0
    memory_d: int = 1

    def __post_init__(self):
        for name in ("batch", "time", "order", "hidden", "memory_d"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not float(self.theta) > 0 or float(self.theta) == float("inf"):
            raise ValueError(f"theta must be finite and > 0, got {self.theta!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PSMNIST_SHAPE = BenchShape()
QUICK_SHAPE = BenchShape(batch=4, time=32, order=16, hidden=12, theta=32.0)


@dataclass
class Case:
    """One path, built for a shape, device and dtype.

    run: ``input -> output``, the timed region (no synchronisation inside; the timer does that).
    input: the tensor ``run`` takes, e.g. u ``(batch, time, memory_d)`` or x ``(batch, time, 1)``; a leaf.
    parameters: tensors whose gradients the backward pass computes beside the input's (weights of a cell).
    floor_bytes: pass name -> bytes that pass must at least move (see ``traffic_floor``); None: no floor.
    info: extra keys for the JSON record (e.g. the LSTM's layout).
    settings: a context manager factory that every pass runs inside, forward and backward (e.g. cuDNN's math
        mode, which its backward reads again).
    """

    run: Callable[[torch.Tensor], torch.Tensor]
    input: torch.Tensor
    parameters: tuple[torch.Tensor, ...] = ()
    floor_bytes: dict[str, int] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    settings: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def output_grad(self, seed: int = SEED + 1) -> torch.Tensor:
        """A random gradient of the output's shape and dtype (from one untimed forward call)."""
        with torch.no_grad(), self.settings():
            out = self.run(self.input)
        return draw(tuple(out.shape), out.device, out.dtype, seed)

    def pass_fn(self, pass_name: str, grad: torch.Tensor | None = None) -> Callable[[], Any]:
        """The function to time for ``pass_name``: "forward" runs under no_grad; "backward" runs the forward with
        autograd and then the gradients of the input and ``parameters`` for the output gradient ``grad``."""
        if pass_name == "forward":
            def forward():
                with torch.no_grad(), self.settings():
                    return self.run(self.input)
            return forward
        if pass_name == "backward":
            if grad is None:
                raise ValueError("the backward pass needs the output gradient `grad`")
            x = self.input.detach().requires_grad_(True)
            inputs = (x, *self.parameters)

            def forward_backward():
                with self.settings():
                    out = self.run(x)
                    # autograd.grad, not .backward(): nothing accumulates across repeated calls.
                    return torch.autograd.grad(out, inputs, grad, allow_unused=True)
            return forward_backward
        raise ValueError(f"pass must be one of {PASSES}, got {pass_name!r}")


@dataclass(frozen=True)
class BenchPath:
    name: str
    kind: str
    build: Callable[[BenchShape, torch.device, torch.dtype], Case]
    description: str = ""
    reference: str | None = None  # a path computing the same function, whose float64 build is the reference


PATHS: dict[str, BenchPath] = {}


def register_path(name: str, kind: str, description: str = "", reference: str | None = None):
    """Decorator: register ``build(shape, device, dtype) -> Case`` as the path ``name`` of ``kind``.
    ``reference``: for a path without a float64 build (a float32 kernel), the path whose float64 build the
    precision table compares it with."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not name or "," in name or name != name.strip():
        raise ValueError(f"a path name must be non-empty, without commas or surrounding spaces, got {name!r}")

    def decorate(build):
        if name in PATHS:
            raise ValueError(f"path {name!r} is already registered")
        PATHS[name] = BenchPath(name, kind, build, description or (build.__doc__ or "").strip().split("\n")[0],
                                reference)
        return build
    return decorate


def build_case(path: BenchPath | str, shape: BenchShape, device: torch.device | str,
               dtype: torch.dtype = torch.float32) -> Case:
    """Build ``path`` with the CPU generator seeded (restored afterwards). Raises ``PathUnavailable``."""
    path = PATHS[path] if isinstance(path, str) else path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return path.build(shape, torch.device(device), dtype)


# ------------------------------------------------------------------------------------------- helpers for builders
def draw(size: tuple[int, ...], device: torch.device | str, dtype: torch.dtype, seed: int = SEED) -> torch.Tensor:
    """Standard normal values, drawn in float64 on the CPU from ``seed`` and cast: the same numbers (up to rounding)
    for every dtype and device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def module_on(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``module`` (made on the CPU in float32 under the seeded generator) moved to ``device`` and ``dtype``."""
    return module.to(device=device, dtype=dtype)


def nbytes(*shape: int, dtype: torch.dtype) -> int:
    """Bytes of a tensor of ``shape`` and ``dtype``."""
    count = 1
    for size in shape:
        count *= size
    return count * torch.empty((), dtype=dtype).element_size()


def traffic_floor(read: int, written: int) -> dict[str, int]:
    """The bytes each pass must move at least, given the bytes of its inputs and of its outputs.

    forward: read the inputs once, write the outputs once. backward (timed as forward + backward): the forward,
    then read the output gradient (the size of the outputs) and write the input gradient (the size of the inputs).
    Constants such as A_bar or H are left out: the floor stays a lower bound.
    """
    return {"forward": read + written, "backward": 2 * (read + written)}


class MemorySystem(NamedTuple):
    """A_bar ``(1, n, n)``, B_bar ``(1, n)``, H ``(1, time, n)`` (H_s = A_bar^s B_bar), in the case's dtype."""

    A_bar: torch.Tensor
    B_bar: torch.Tensor
    H: torch.Tensor


def memory_system(shape: BenchShape, device: torch.device, dtype: torch.dtype) -> MemorySystem:
    """The LegT system of ``shape`` (zoh, dt = 1), built in float64 on the CPU and cast once, as the LMU does."""
    A64, B64 = discretize(shape.order, float(shape.theta), 1.0, "zoh")
    H64 = impulse_response(A64, B64, shape.time)
    return MemorySystem(*(t.to(device=device, dtype=dtype) for t in (A64, B64, H64)))


def memory_case(shape: BenchShape, device: torch.device, dtype: torch.dtype,
                fn: Callable[[torch.Tensor], torch.Tensor], all_states: bool = True) -> Case:
    """A Case for a linear-memory function ``fn(u) -> m``: u ``(batch, time, memory_d)`` drawn here; m is every
    state ``(batch, time, memory_d, order)`` (``all_states``) or the last ``(batch, memory_d, order)``."""
    u = draw((shape.batch, shape.time, shape.memory_d), device, dtype)
    read = nbytes(shape.batch, shape.time, shape.memory_d, dtype=dtype)
    states = shape.time if all_states else 1
    written = nbytes(shape.batch, states, shape.memory_d, shape.order, dtype=dtype)
    return Case(run=fn, input=u, floor_bytes=traffic_floor(read, written))


# ------------------------------------------------------------------------------------------------- memory paths
@register_path("memory-loop", kind="memory", description="linear_memory_naive: one step at a time, all states")
def _memory_loop(shape, device, dtype):
    s = memory_system(shape, device, dtype)
    return memory_case(shape, device, dtype, lambda u: linear_memory_naive(u, s.A_bar, s.B_bar))


@register_path("memory-fft", kind="memory", description="linear_memory_fft: causal convolution by FFT, all states")
def _memory_fft(shape, device, dtype):
    s = memory_system(shape, device, dtype)
    return memory_case(shape, device, dtype, lambda u: linear_memory_fft(u, s.A_bar, s.B_bar, impulse=s.H))


@register_path("memory-conv", kind="memory", description="linear_memory_conv: conv1d with the cut impulse response")
def _memory_conv(shape, device, dtype):
    s = memory_system(shape, device, dtype)
    return memory_case(shape, device, dtype, lambda u: linear_memory_conv(u, s.A_bar, s.B_bar, impulse=s.H))


@register_path("memory-final", kind="memory", description="linear_memory_final: the last state only")
def _memory_final(shape, device, dtype):
    s = memory_system(shape, device, dtype)
    return memory_case(shape, device, dtype, lambda u: linear_memory_final(u, s.A_bar, s.B_bar, impulse=s.H),
                       all_states=False)


def _toeplitz_builder(precision: str, forward_kernel: str = "rows"):
    def build(shape, device, dtype):
        if device.type != "cuda" and not interpreting():
            raise PathUnavailable("the Triton kernel needs CUDA")
        if dtype != torch.float32:
            raise PathUnavailable("the Triton kernel computes in float32")
        from ..ops.lmu_memory.toeplitz import linear_memory_toeplitz
        s = memory_system(shape, device, dtype)
        return memory_case(shape, device, dtype, lambda u: linear_memory_toeplitz(
            u, s.A_bar, s.B_bar, impulse=s.H, precision=precision, forward_kernel=forward_kernel))
    return build


for _precision in ("ieee", "tf32x3", "tf32"):
    register_path("memory-toeplitz" + ("" if _precision == "ieee" else f"-{_precision}"), kind="memory",
                  description=f"Triton causal Toeplitz product, {_precision} products, all states",
                  reference="memory-fft")(
        _toeplitz_builder(_precision))
register_path("memory-toeplitz-columns", kind="memory",
              description="Triton causal Toeplitz product, the other tiling (rows = sequences), all states",
              reference="memory-fft")(
    _toeplitz_builder("ieee", "columns"))


def _dense_product_builder(memory: Callable[..., torch.Tensor], precision: str):
    """A path for a memory computed by dense matrix products (cuBLAS / MKL): ``memory(u, A_bar, B_bar,
    impulse=, precision=)``, such as ``linear_memory_block_gemm`` or ``linear_memory_chunk_scan``."""
    def build(shape, device, dtype):
        if precision == "tf32" and device.type != "cuda":
            raise PathUnavailable("tf32 applies to cuBLAS on CUDA only")
        s = memory_system(shape, device, dtype)
        return memory_case(shape, device, dtype,
                           lambda u: memory(u, s.A_bar, s.B_bar, impulse=s.H, precision=precision))
    return build


register_path("memory-blockgemm", kind="memory", reference="memory-fft",
              description="block-Toeplitz memory as one dense matrix product (cuBLAS / MKL), all states")(
    _dense_product_builder(linear_memory_block_gemm, "ieee"))
register_path("memory-blockgemm-tf32", kind="memory", reference="memory-fft",
              description="the same with cuBLAS's TF32 tensor cores, all states")(
    _dense_product_builder(linear_memory_block_gemm, "tf32"))
for _precision in ("ieee", "tf32", "tf32x3"):
    register_path("memory-chunkscan" + ("" if _precision == "ieee" else f"-{_precision}"), kind="memory",
                  reference="memory-fft",
                  description=f"chunked memory: products inside chunks, state passed by a scan; {_precision} "
                              "products (cuBLAS / MKL), all states")(
        _dense_product_builder(linear_memory_chunk_scan, _precision))


# --------------------------------------------------------------------------------------------------- LMU cells
# LMU keyword arguments per configuration; every one has an nn.RNNCell hidden cell and returns the last output.
LMU_CONFIGS: dict[str, dict[str, Any]] = {
    "cell": {"hidden_to_memory": True},  # the full cell: h_{t-1} feeds u_t, so only a loop computes it
    "psmnist": {"input_to_hidden": True},  # Voelker et al.'s psMNIST LMU: the memory is fed by x alone
    # The same with the Triton kernels' products in tf32 (CUDA only: elsewhere kernel_precision changes nothing).
    "cell-tf32": {"hidden_to_memory": True, "kernel_precision": "tf32"},
    "cell-tf32x3": {"hidden_to_memory": True, "kernel_precision": "tf32x3"},
    "psmnist-tf32": {"input_to_hidden": True, "kernel_precision": "tf32"},
    # tf32 except for the memory's state products (tf32x3): the precision of cuDNN's default (TF32) LSTM.
    "cell-mixed": {"hidden_to_memory": True, "kernel_precision": "mixed"},
    "psmnist-mixed": {"input_to_hidden": True, "kernel_precision": "mixed"},
    # The memory's feedback as a convolution of past inputs (one barrier per step; contime.ops.lmu_cell.convolution).
    "cell-conv": {"hidden_to_memory": True, "fused_algorithm": "convolution"},
    "cell-conv-tf32": {"hidden_to_memory": True, "fused_algorithm": "convolution", "kernel_precision": "tf32"},
    "psmnist-conv": {"input_to_hidden": True, "fused_algorithm": "convolution"},
    "psmnist-conv-tf32": {"input_to_hidden": True, "fused_algorithm": "convolution", "kernel_precision": "tf32"},
}


@contextlib.contextmanager
def attribute_set(owner, name: str, value):
    """``owner.name = value`` inside, the previous value restored after (a global switch for one path)."""
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


def persistent_elman_on_cuda():
    """The parallel modes' Elman recurrence in the persistent Triton kernels on CUDA inside (``CUDA_BACKEND`` of
    ``contime.ops.elman.manual``, restored after)."""
    from ..ops.elman import manual
    return attribute_set(manual, "CUDA_BACKEND", "triton")


def lmu_case(shape: BenchShape, device: torch.device, dtype: torch.dtype, mode: str, config: str,
             persistent_elman: bool = False) -> Case:
    """The LMU of ``LMU_CONFIGS[config]`` in ``mode``: x ``(batch, time, 1)`` -> last output ``(batch, hidden)``.
    ``persistent_elman``: its hidden RNNCell in the persistent Triton kernels (CUDA only).

    Raises ``PathUnavailable`` when ``mode`` is not in the configuration's ``LMU.valid_modes()``.
    """
    if persistent_elman and device.type != "cuda":
        raise PathUnavailable("the persistent Elman kernels are chosen on CUDA only")
    kwargs = LMU_CONFIGS[config]
    hidden_in = shape.memory_d * shape.order + (1 if kwargs.get("input_to_hidden") else 0)
    lmu = LMU(1, shape.memory_d, shape.order, float(shape.theta), nn.RNNCell(hidden_in, shape.hidden),
              return_sequences=False, **kwargs)
    if kwargs.get("kernel_precision", "ieee") != "ieee" and device.type != "cuda":
        raise PathUnavailable("kernel_precision applies to the Triton kernels on CUDA only")
    valid = lmu.valid_modes()
    if mode not in valid:
        raise PathUnavailable(f"mode {mode!r} is not among LMU.valid_modes() {valid} for the {config!r} configuration")
    lmu.mode = mode
    lmu = module_on(lmu, device, dtype)
    x = draw((shape.batch, shape.time, 1), device, dtype)
    return Case(run=lambda inp: lmu(inp)[0], input=x,
                parameters=tuple(p for p in lmu.parameters() if p.requires_grad), info={"mode": mode, "config": config},
                settings=persistent_elman_on_cuda if persistent_elman else contextlib.nullcontext)


def register_lmu_path(name: str, mode: str, config: str, description: str = "", persistent_elman: bool = False):
    """Register the LMU of ``LMU_CONFIGS[config]`` run in ``mode`` as path ``name`` (kind "cell");
    ``persistent_elman`` as in ``lmu_case``."""
    if config not in LMU_CONFIGS:
        raise ValueError(f"config must be one of {tuple(LMU_CONFIGS)}, got {config!r}")
    description = description or (f"LMU ({config}: {', '.join(LMU_CONFIGS[config])}), RNNCell hidden, mode {mode!r}"
                                   + (", Elman recurrence in the persistent kernels" if persistent_elman else ""))

    def build(shape, device, dtype):
        return lmu_case(shape, device, dtype, mode, config, persistent_elman)
    register_path(name, kind="cell", description=description)(build)


register_lmu_path("lmu-cell-loop", mode="recurrent", config="cell")
register_lmu_path("lmu-cell-fused", mode="fused", config="cell")
register_lmu_path("lmu-cell-fused-tf32x3", mode="fused", config="cell-tf32x3")
register_lmu_path("lmu-cell-fused-tf32", mode="fused", config="cell-tf32")
register_lmu_path("lmu-fft", mode="fft", config="psmnist")  # on CUDA: the projected Toeplitz kernel
register_lmu_path("lmu-fft-tf32", mode="fft", config="psmnist-tf32")
register_lmu_path("lmu-fft-elman", mode="fft", config="psmnist", persistent_elman=True)
register_lmu_path("lmu-cell-fused-mixed", mode="fused", config="cell-mixed")
register_lmu_path("lmu-fused", mode="fused", config="psmnist")
register_lmu_path("lmu-fused-mixed", mode="fused", config="psmnist-mixed")
register_lmu_path("lmu-cell-fused-conv", mode="fused", config="cell-conv")
register_lmu_path("lmu-cell-fused-conv-tf32", mode="fused", config="cell-conv-tf32")
register_lmu_path("lmu-fused-conv", mode="fused", config="psmnist-conv")
register_lmu_path("lmu-fused-conv-tf32", mode="fused", config="psmnist-conv-tf32")
register_lmu_path("lmu-loop", mode="recurrent", config="psmnist")


# ---------------------------------------------------------------------------------------------------- baseline
def _cudnn_rnn_switch() -> tuple:
    """(owner, attribute, on, off) of the switch that lets cuDNN's RNNs run float32 products on TF32 tensor cores:
    torch.backends.cudnn.rnn.fp32_precision where torch has it (the legacy allow_tf32 raises once the conv and RNN
    flags differ), else allow_tf32. PyTorch's default is on: the RNN descriptor then gets CUDNN_DEFAULT_MATH,
    not CUDNN_FMA_MATH."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        return rnn, "fp32_precision", "tf32", "ieee"
    return torch.backends.cudnn, "allow_tf32", True, False


def cudnn_rnn_tf32() -> bool:
    """Whether cuDNN's RNNs may run float32 products on TF32 tensor cores now."""
    owner, name, on, _ = _cudnn_rnn_switch()
    return getattr(owner, name) == on


def cudnn_tf32(allowed: bool):
    """cuDNN's RNNs with TF32 ``allowed`` or not inside, the switch restored after."""
    owner, name, on, off = _cudnn_rnn_switch()
    return attribute_set(owner, name, on if allowed else off)


def lstm_case(shape: BenchShape, device: torch.device, dtype: torch.dtype, tf32: bool) -> Case:
    """``nn.LSTM(1, hidden)``: x ``(batch, time, 1)`` -> last output ``(batch, hidden)``, in the faster of the
    batch-first and time-major layouts (measured here), with cuDNN's TF32 allowed or not."""
    batch_first = module_on(nn.LSTM(1, shape.hidden, batch_first=True), device, dtype)
    time_major = module_on(nn.LSTM(1, shape.hidden), device, dtype)
    time_major.load_state_dict(batch_first.state_dict())
    x = draw((shape.batch, shape.time, 1), device, dtype)
    settings = lambda: cudnn_tf32(tf32)  # noqa: E731
    cases = {
        "batch_first": Case(run=lambda inp: batch_first(inp)[0][:, -1], input=x,
                            parameters=tuple(batch_first.parameters()), settings=settings),
        "time_major": Case(run=lambda inp: time_major(inp)[0][-1], input=x.transpose(0, 1).contiguous(),
                           parameters=tuple(time_major.parameters()), settings=settings),
    }
    # The layout is picked by the forward + backward time (training is where it matters), measured here.
    layout_ms = {}
    for layout, case in cases.items():
        layout_ms[layout] = time_call(case.pass_fn("backward", case.output_grad()), device, warmup=1,
                                      repeat=2)["median_ms"]
    layout = min(layout_ms, key=layout_ms.get)
    chosen = cases[layout]
    chosen.info = {"layout": layout, "layout_fwd_bwd_ms": layout_ms,
                   "cudnn": bool(device.type == "cuda" and torch.backends.cudnn.enabled), "cudnn_allow_tf32": tf32}
    return chosen


@register_path(REFERENCE_PATH, kind="baseline",
               description="nn.LSTM(1, hidden) (cuDNN on CUDA, TF32 allowed: PyTorch's default), last output")
def _lstm(shape, device, dtype):
    return lstm_case(shape, device, dtype, tf32=True)


@register_path("lstm-fp32", kind="baseline",
               description="the same LSTM with cuDNN's TF32 off (float32 products, as the 'ieee' kernels)")
def _lstm_fp32(shape, device, dtype):
    return lstm_case(shape, device, dtype, tf32=False)
