"""The memory as one FFT convolution of the input with the impulse response H_s = A_bar^s B_bar."""

from __future__ import annotations

import torch

from ...legendre import impulse_response
from ..backward import refuse_double_backward
from .common import expand_dims, zero_input_response


def fft_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: a size the FFT handles fast (plain Python, so torch.compile traces it)."""
    best = 1 << max(n - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35
            while size < n:
                size *= 2
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


def causal_fft_product(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """out[b, t, d, c] = sum_{j <= t} u[b, j, d] kernel[d or 0, t - j, c] by FFT, in plain torch ops (so
    differentiable to any order).

    Args:
        u: ``(batch, time, D)``; kernel: ``(k, time, C)`` with k = 1 (shared) or D.

    Returns:
        ``(batch, time, D, C)``.
    """
    time = u.shape[1]
    n_fft = fft_length(2 * time - 1)  # no circular wrap-around
    U = torch.fft.rfft(u, n=n_fft, dim=1)  # (batch, F, D)
    K = torch.fft.rfft(kernel, n=n_fft, dim=1).permute(1, 0, 2)  # (F, k, C)
    return torch.fft.irfft(U.unsqueeze(-1) * K, n=n_fft, dim=1)[:, :time]


def linear_memory_fft(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                      m0: torch.Tensor | None = None, *,
                      impulse: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution m_t = sum_s H_s u_{t-s} (+ A_bar^(t+1) m0) in O(T log T). Shapes as in the package docstring."""
    time = u.shape[1]
    H = impulse_response(A_bar, B_bar, time) if impulse is None else impulse  # (k, T, n)
    m = causal_fft_product(u, H)
    if m0 is not None:
        m = m + zero_input_response(A_bar, m0, time)
    return m


class _CausalConvFFT(torch.autograd.Function):
    """out[b, g, t] = sum_{s, d} kernel[g, d, s] u[b, d, t - s], time in the last (contiguous) axis so every
    transform runs in place along memory. The backward pass is written in the frequency domain: one forward
    transform of the output gradient serves both input gradients."""

    @staticmethod
    def forward(ctx, u, kernel):
        time = u.shape[-1]
        n_fft = fft_length(2 * time - 1)  # no circular wrap-around
        U = torch.fft.rfft(u, n=n_fft)  # (batch, D, F)
        K = torch.fft.rfft(kernel, n=n_fft)  # (G, D, F)
        ctx.save_for_backward(U, K)
        ctx.shape = (time, n_fft)
        return torch.fft.irfft(_mix(U, K), n=n_fft)[..., :time]

    @staticmethod
    def backward(ctx, grad_out):
        refuse_double_backward("FFT convolution", "recurrent")
        U, K = ctx.saved_tensors
        time, n_fft = ctx.shape
        # Correlation = convolution with the conjugate spectrum; the zero padding keeps it acyclic.
        GO = torch.fft.rfft(grad_out, n=n_fft)  # (batch, G, F)
        grad_u = grad_kernel = None
        # The conjugates are formed here (conj_physical), not left as lazy views: a product with a lazy
        # conjugate that broadcasts over g took 26.6 ms against 10.1 ms at the psMNIST shape on this CPU.
        if ctx.needs_input_grad[0]:  # sum over g of GO * conj(K): (batch, D, F)
            K_conj = K.conj_physical()
            spectrum = torch.stack([(GO * K_conj[:, d]).sum(1) for d in range(K.shape[1])], dim=1) \
                if K.shape[1] <= _FEW_CHANNELS else torch.einsum("bgf,gdf->bdf", GO, K_conj)
            grad_u = torch.fft.irfft(spectrum, n=n_fft)[..., :time]
        if ctx.needs_input_grad[1]:  # sum over the batch of GO * conj(U): (G, D, F)
            U_conj = U.conj_physical()
            spectrum = torch.stack([(GO * U_conj[:, d:d + 1]).sum(0) for d in range(U.shape[1])], dim=1) \
                if U.shape[1] <= _FEW_CHANNELS else torch.einsum("bgf,bdf->gdf", GO, U_conj)
            grad_kernel = torch.fft.irfft(spectrum, n=n_fft)[..., :time]
        return grad_u, grad_kernel


# With few input channels, a loop of broadcast products beats einsum, which batches over frequencies and
# copies every operand into that layout.
_FEW_CHANNELS = 8


def _mix(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Per frequency, (batch, D, F) spectra through (G, D, F) kernels -> (batch, G, F)."""
    if K.shape[1] > _FEW_CHANNELS:
        return torch.einsum("bdf,gdf->bgf", U, K)
    out = U[:, 0:1] * K[:, 0]  # (batch, 1, F) * (G, F)
    for d in range(1, K.shape[1]):
        out = out + U[:, d:d + 1] * K[:, d]
    return out


def projected_memory_fft(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, weight: torch.Tensor,
                         m0: torch.Tensor | None = None, *, impulse: torch.Tensor | None = None) -> torch.Tensor:
    """W m_t for every step, without ever forming the memory m.

    The projection commutes with the convolution: W m_t = sum_s (W H_s) u_{t-s}. Projecting the impulse
    response first (T x G x D numbers) and convolving u with it replaces a (batch*T, D*n) memory and a
    (batch*T, D*n) x (D*n, G) product by a convolution with G output channels.

    Args:
        u, A_bar, B_bar, m0, impulse: as in the package docstring.
        weight: ``(G, D, n)``, the projection applied to the memory of each step.

    Returns:
        ``(batch, time, G)``, a view whose storage is time-last ``(batch, G, time)``.
    """
    batch, time, dims = u.shape
    H = impulse_response(A_bar, B_bar, time) if impulse is None else impulse  # (k, T, n)
    kernel = torch.einsum("gdn,dtn->gdt", weight, expand_dims(H, dims))  # (G, D, T)
    out = _CausalConvFFT.apply(u.transpose(1, 2), kernel).transpose(1, 2)
    if m0 is not None:
        out = out + torch.einsum("btdn,gdn->btg", zero_input_response(A_bar, m0, time), weight)
    return out


def toeplitz_kernel_gradient(grad: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The gradient of a causal Toeplitz product out[b, t, d, c] = sum_{j <= t} u[b, j, d] K[t - j, c] with
    respect to its kernel, by FFT: d loss / d K[s, c] = sum_{b, d, t} g[b, t, d, c] u[b, t - s, d].

    Args:
        grad: ``(B, T, D, C)``; u: ``(B, T, D)``.

    Returns:
        ``(T, C)``.
    """
    time = u.shape[1]
    n_fft = fft_length(2 * time - 1)
    G = torch.fft.rfft(grad, n=n_fft, dim=1)  # (B, F, D, C)
    U = torch.fft.rfft(u, n=n_fft, dim=1)  # (B, F, D)
    spectrum = torch.einsum("bfdc,bfd->fc", G, U.conj())
    return torch.fft.irfft(spectrum, n=n_fft, dim=0)[:time]
