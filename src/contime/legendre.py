"""The Legendre delay system (LegT) of the LMU paper, in float64.

The memory m(t) in R^d solves  theta * dm/dt = A m + B u  (Voelker, Kajic, Eliasmith 2019, eq. 1-2):

    A_ij = (2i + 1) * (-1            if i < j
                       (-1)^(i-j+1)  if i >= j)
    B_i  = (2i + 1) * (-1)^i

and holds the shifted-Legendre projection of the window u(t - theta'), theta' in [0, theta]:

    u(t - theta') ~= sum_i P~_i(theta' / theta) * m_i(t).

Discrete time, with step ``dt`` (in the same unit as theta):  m_t = A_bar m_{t-1} + B_bar u_t,
so m_t = sum_{s >= 0} H_s u_{t-s} with the impulse response H_s = A_bar^s B_bar.

Every function here accepts theta as a tensor of shape ``(k,)`` (one time scale per memory
dimension, or ``k = 1`` shared) and returns matrices batched over that leading axis, so a single
call discretizes all of them; gradients flow to theta. ``discretize_steps`` does the same for many step
lengths at once (irregularly sampled series).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.special
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

DISCRETIZERS = ("zoh", "euler", "bilinear")


def legt_matrices(order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous LegT system matrices.

    Returns:
        A: ``(order, order)`` float64.
        B: ``(order,)`` float64.
    """
    _check_order(order)
    i = torch.arange(order, dtype=torch.float64)[:, None]
    j = torch.arange(order, dtype=torch.float64)[None, :]
    sign_lower = torch.where(((i - j + 1) % 2) == 0, 1.0, -1.0)  # (-1)^(i-j+1)
    A = (2 * i + 1) * torch.where(i < j, torch.tensor(-1.0, dtype=torch.float64), sign_lower)
    k = torch.arange(order, dtype=torch.float64)
    B = (2 * k + 1) * torch.where(k % 2 == 0, 1.0, -1.0)
    return A, B


def _check_order(order) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")


def _legt_on(order: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``legt_matrices(order)`` cast to ``dtype`` on ``device``, made once per key: a copy from pageable host memory
    to a GPU waits for the stream's queued work, and a trainable theta discretizes at every forward call. Built
    outside inference mode, so that later calls may save them for a backward pass. Callers must not modify them."""
    _check_order(order)  # before the cache hashes it
    if _tensors_are_traced(device):
        A, B = legt_matrices(order)
        return A.to(device=device, dtype=dtype), B.to(device=device, dtype=dtype)
    return _legt_cached(order, device, dtype)


def _tensors_are_traced(device: torch.device) -> bool:
    """Whether tensors made now would be stand-ins (fake tensors under torch.export or a FakeTensorMode, any
    dispatch mode, torch.compile's tracing) or live in a CUDA graph's private pool: such must not be cached."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


@functools.lru_cache(maxsize=32)
def _legt_cached(order: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False):
        A, B = legt_matrices(order)
        return A.to(device=device, dtype=dtype), B.to(device=device, dtype=dtype)


def under_vmap() -> bool:
    """Whether a ``torch.func.vmap`` is among the active functorch transforms: its batched tensors have no single
    value to read (``bool(t)`` raises), even beneath a ``grad``."""
    stack = torch._C._functorch.get_interpreter_stack()
    return bool(stack) and any(level.key() == torch._C._functorch.TransformType.Vmap for level in stack)


def can_read_values(tensor: torch.Tensor) -> bool:
    """Whether a check may read ``tensor``'s values on the host: not while torch.compile traces (the read would
    break its graph), not under ``torch.func.vmap``, nor, for a CUDA tensor, while the current stream captures a
    CUDA graph (a host synchronization aborts the capture). The checks skipped then only guard against bad input;
    nothing computed depends on them."""
    if torch.compiler.is_compiling() or under_vmap():
        return False
    return not (tensor.is_cuda and torch.cuda.is_current_stream_capturing())


def _as_theta(theta) -> torch.Tensor:
    theta = torch.as_tensor(theta, dtype=torch.float64) if not torch.is_tensor(theta) else theta
    if theta.ndim == 0:
        theta = theta.reshape(1)
    if theta.ndim != 1:
        raise ValueError(f"theta must be a scalar or a 1-D tensor, got shape {tuple(theta.shape)}")
    if not torch.is_floating_point(theta):
        theta = theta.to(torch.float64)
    if not can_read_values(theta):
        return theta
    if not bool(torch.all(theta.detach() > 0)):
        raise ValueError(f"theta must be > 0, got {theta.detach().cpu().tolist()}")
    return theta


def _matrix_exp(matrices: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.matrix_exp`` of a ``(k, n, n)`` batch, accurate for k = 1 too.

    torch 2.13 loses up to ~1e-10 on a batch of exactly one matrix with 1-norm in about [0.004, 0.05]
    (its degree-8 path misses a factor, pytorch/pytorch#196592); batches of two or more take an exact path.
    """
    if matrices.shape[0] == 1:
        return torch.linalg.matrix_exp(matrices.expand(2, -1, -1))[:1]
    return torch.linalg.matrix_exp(matrices)


def discretize(order: int, theta, dt: float = 1.0, method: str = "zoh") -> tuple[torch.Tensor, torch.Tensor]:
    """Discretize the LegT system with step ``dt``.

    Args:
        order: memory order d.
        theta: window length(s), scalar or ``(k,)`` tensor (differentiable).
        dt: time step, same unit as theta.
        method: ``"zoh"`` (exact for a held input), ``"euler"`` or ``"bilinear"`` (Tustin).

    Returns:
        A_bar: ``(k, order, order)``, B_bar: ``(k, order)``; float64 unless theta has another float dtype.
    """
    if method not in DISCRETIZERS:
        raise ValueError(f"method must be one of {DISCRETIZERS}, got {method!r}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt!r}")
    theta = _as_theta(theta)
    A, B = _legt_on(order, theta.device, theta.dtype)
    scale = (dt / theta)[:, None, None]  # (k, 1, 1)
    eye = torch.eye(order, dtype=theta.dtype, device=theta.device)
    if method == "zoh":
        # expm([[A, B], [0, 0]] * dt / theta) = [[A_bar, B_bar], [0, 1]].
        aug = torch.zeros(order + 1, order + 1, dtype=theta.dtype, device=theta.device)
        aug[:order, :order] = A
        aug[:order, order] = B
        expm = _matrix_exp(aug * scale)
        return expm[:, :order, :order], expm[:, :order, order]
    if method == "euler":
        return eye + scale * A, scale[:, :, 0] * B
    # bilinear: (I - dt/(2 theta) A)^-1 (I + dt/(2 theta) A), (I - dt/(2 theta) A)^-1 dt/theta B
    left = eye - 0.5 * scale * A
    A_bar = torch.linalg.solve(left, eye + 0.5 * scale * A)
    B_bar = torch.linalg.solve(left, (scale[:, :, 0] * B).unsqueeze(-1)).squeeze(-1)
    return A_bar, B_bar


# Matrices per matrix_exp call in discretize_steps: bounds the float64 work space for many distinct steps.
_EXPM_CHUNK = 1024


class _ScaledMatrixExp(torch.autograd.Function):
    """expm(s_i * M) for a batch of scalars s ``(m,)`` and one constant matrix M ``(p, p)`` -> ``(m, p, p)``.

    The backward pass needs no matrix exponential of a doubled matrix (what autograd through
    ``torch.linalg.matrix_exp`` computes): M commutes with expm(s M), so d expm(s M) / ds = M expm(s M),
    and dL/ds_i = <G_i, M E_i>, one product per matrix.
    """

    @staticmethod
    def forward(ctx, scale, matrix):
        chunks = [_matrix_exp(part[:, None, None] * matrix) for part in scale.split(_EXPM_CHUNK)]
        expm = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        ctx.save_for_backward(expm, matrix)
        return expm

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        expm, matrix = ctx.saved_tensors
        return ((matrix @ expm) * grad).sum(dim=(-2, -1)), None


def discretize_steps(order: int, theta, dt: torch.Tensor,
                     method: str = "zoh") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Discretize the LegT system for many step lengths at once (irregularly sampled series).

    A step of length dt with the input held over it maps m to A_bar(dt) m + B_bar(dt) u, with
    ``"zoh"``: [[A_bar, B_bar], [0, 1]] = expm([[A, B], [0, 0]] * dt / theta), or the ``"euler"`` and
    ``"bilinear"`` closed forms of ``discretize``. Only the distinct values of dt are discretized (one batched
    matrix exponential over all of them and all thetas); ``inverse`` maps each entry of dt to its matrices.
    When dt requires grad, every entry is discretized on its own so that it receives its own gradient.

    Args:
        order: memory order n.
        theta: window length(s), scalar or ``(k,)`` tensor (differentiable).
        dt: step lengths, any shape, finite and > 0, same unit as theta (differentiable).
        method: ``"zoh"``, ``"euler"`` or ``"bilinear"``.

    Returns:
        A_bar: ``(U, k, n, n)``, B_bar: ``(U, k, n)`` for the U distinct steps, in theta's float dtype
        (float64 for a number); inverse: ``dt.shape`` long, entry j uses ``A_bar[inverse[j]]``.
    """
    if method not in DISCRETIZERS:
        raise ValueError(f"method must be one of {DISCRETIZERS}, got {method!r}")
    if not torch.is_tensor(dt) or not torch.is_floating_point(dt):
        got = dt.dtype if torch.is_tensor(dt) else type(dt).__name__
        raise TypeError(f"dt must be a floating-point tensor, got {got}")
    if dt.numel() == 0:
        raise ValueError("dt must not be empty")
    theta = _as_theta(theta)
    dt = dt.to(device=theta.device, dtype=theta.dtype)
    if can_read_values(dt) and not bool(torch.all(torch.isfinite(dt.detach()) & (dt.detach() > 0))):
        raise ValueError("dt must be finite and > 0")
    if dt.requires_grad:
        values, inverse = dt.reshape(-1), torch.arange(dt.numel(), device=dt.device).reshape(dt.shape)
    else:
        values, inverse = torch.unique(dt, return_inverse=True)
    distinct, k = values.shape[0], theta.shape[0]
    scale = (values[:, None] / theta[None, :]).reshape(-1)  # (U*k,): dt / theta for every pair
    A, B = _legt_on(order, theta.device, theta.dtype)
    if method == "zoh":
        aug = torch.zeros(order + 1, order + 1, dtype=theta.dtype, device=theta.device)
        aug[:order, :order] = A
        aug[:order, order] = B
        expm = _ScaledMatrixExp.apply(scale, aug)  # (U*k, n+1, n+1)
        A_bar, B_bar = expm[:, :order, :order], expm[:, :order, order]
    else:
        s = scale[:, None, None]
        eye = torch.eye(order, dtype=theta.dtype, device=theta.device)
        if method == "euler":
            A_bar, B_bar = eye + s * A, s[:, :, 0] * B
        else:  # bilinear, as in discretize
            left = eye - 0.5 * s * A
            A_bar = torch.linalg.solve(left, eye + 0.5 * s * A)
            B_bar = torch.linalg.solve(left, (s[:, :, 0] * B).unsqueeze(-1)).squeeze(-1)
    return A_bar.reshape(distinct, k, order, order), B_bar.reshape(distinct, k, order), inverse


def power_sequence(A_bar: torch.Tensor, v: torch.Tensor, length: int) -> torch.Tensor:
    """``A_bar^s @ v`` for s = 0 .. length-1, by doubling (log2(length) batched products, no loop over s).

    Args:
        A_bar: ``(k, n, n)``.
        v: ``(k, n, c)``.
        length: number of powers L >= 1.

    Returns:
        ``(k, L, n, c)``.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    k, n, c = v.shape
    out = v  # (k, n, s*c + j): columns for powers 0..filled-1, side by side, so each doubling is one product
    power = A_bar
    filled = 1
    while filled < length:
        # out holds powers 0..filled-1; power = A_bar^filled extends it to 0..2*filled-1.
        out = torch.cat([out, power @ out], dim=-1)
        power = power @ power
        filled *= 2
    return out[:, :, :length * c].reshape(k, n, length, c).permute(0, 2, 1, 3)


def impulse_response(A_bar: torch.Tensor, B_bar: torch.Tensor, length: int) -> torch.Tensor:
    """H_s = A_bar^s B_bar for s < length.

    Args:
        A_bar: ``(k, n, n)``; B_bar: ``(k, n)``.

    Returns:
        ``(k, length, n)``.
    """
    return power_sequence(A_bar, B_bar.unsqueeze(-1), length).squeeze(-1)


def impulse_response_length(A_bar: torch.Tensor, B_bar: torch.Tensor, tol: float = 1e-10,
                            max_length: int = 1 << 22) -> int:
    """Length L after which the impulse response stays below ``tol`` times its peak.

    "Stays below" is checked on a horizon four times longer than the answer (doubled until the
    tail beyond L is below tol), so a late bump is not missed. Returns at most ``max_length``.
    """
    with torch.no_grad():
        A64, B64 = A_bar.detach().double(), B_bar.detach().double()
        horizon = 64
        while True:
            H = impulse_response(A64, B64, min(horizon, max_length))  # (k, L, n)
            size = H.abs().amax(dim=(0, 2))  # (L,)
            above = torch.nonzero(size > tol * size.max()).flatten()
            last = int(above[-1]) + 1 if above.numel() else 1
            if horizon >= max_length:
                return min(last, max_length)
            if last * 4 <= horizon:
                return last
            horizon *= 4


def shifted_legendre(order: int, r) -> torch.Tensor:
    """Shifted Legendre polynomials P~_i(r) = P_i(2r - 1), i < order.

    Args:
        r: ``(q,)`` points in [0, 1].

    Returns:
        ``(q, order)`` float64.
    """
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    values = np.stack([scipy.special.eval_sh_legendre(i, r) for i in range(order)], axis=-1)
    return torch.from_numpy(values)


def legendre_readout(order: int, delays, theta: float) -> torch.Tensor:
    """Matrix C that decodes u(t - theta') from the memory: u(t - theta'_q) ~= (C @ m(t))_q.

    Args:
        order: memory order d.
        delays: ``(q,)`` delays theta' in [0, theta], same unit as theta.
        theta: the window length.

    Returns:
        C: ``(q, order)`` float64.
    """
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta!r}")
    delays = np.asarray(delays, dtype=np.float64)
    if delays.ndim > 1:
        raise ValueError(f"delays must be a number or a 1-D list, got shape {delays.shape}")
    delays = delays.reshape(-1)
    if not np.all(np.isfinite(delays)) or np.any(delays < 0) or np.any(delays > theta):
        raise ValueError(f"delays must lie in [0, theta={theta}], got {delays.tolist()}")
    return shifted_legendre(order, delays / theta)
