"""The memory as one FFT convolution of the input with the impulse response H_s = A_bar^s B_bar."""

from __future__ import annotations

import torch

from ...legendre import impulse_response
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


def linear_memory_fft(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                      m0: torch.Tensor | None = None, *,
                      impulse: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution m_t = sum_s H_s u_{t-s} (+ A_bar^(t+1) m0) in O(T log T). Shapes as in the package docstring."""
    batch, time, dims = u.shape
    H = impulse_response(A_bar, B_bar, time) if impulse is None else impulse  # (k, T, n)
    n_fft = fft_length(2 * time - 1)  # no circular wrap-around
    U = torch.fft.rfft(u, n=n_fft, dim=1)  # (batch, F, D)
    Hf = torch.fft.rfft(H, n=n_fft, dim=1).permute(1, 0, 2)  # (F, k, n)
    m = torch.fft.irfft(U.unsqueeze(-1) * Hf, n=n_fft, dim=1)[:, :time]  # (batch, T, D, n)
    if m0 is not None:
        m = m + zero_input_response(A_bar, m0, time)
    return m


class _CausalConvFFT(torch.autograd.Function):
    """out[b, t, g] = sum_{s, d} kernel[s, d, g] u[b, t - s, d], with a backward pass written in the
    frequency domain: one forward transform of the output gradient serves both input gradients, and the
    sums over channels and over the batch are matrix products there."""

    @staticmethod
    def forward(ctx, u, kernel):
        batch, time, dims = u.shape
        n_fft = fft_length(2 * time - 1)  # no circular wrap-around
        U = torch.fft.rfft(u, n=n_fft, dim=1)  # (batch, F, D)
        K = torch.fft.rfft(kernel, n=n_fft, dim=0)  # (F, D, G)
        ctx.save_for_backward(U, K)
        ctx.shape = (time, n_fft)
        return torch.fft.irfft(_mix(U, K), n=n_fft, dim=1)[:, :time]

    @staticmethod
    def backward(ctx, grad_out):
        U, K = ctx.saved_tensors
        time, n_fft = ctx.shape
        # Correlation = convolution with the conjugate spectrum; the zero padding keeps it acyclic.
        GO = torch.fft.rfft(grad_out, n=n_fft, dim=1)  # (batch, F, G)
        grad_u = grad_kernel = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft(_mix(GO, K.conj().transpose(1, 2)), n=n_fft, dim=1)[:, :time]
        if ctx.needs_input_grad[1]:
            spectrum = U.conj().permute(1, 2, 0) @ GO.transpose(0, 1)  # (F, D, batch) @ (F, batch, G)
            grad_kernel = torch.fft.irfft(spectrum, n=n_fft, dim=0)[:time]
        return grad_u, grad_kernel


def _mix(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Per frequency, channels (batch, F, C) times (F, C, G) -> (batch, F, G)."""
    if K.shape[1] == 1:
        return X * K[:, 0]
    return (X.transpose(0, 1) @ K).transpose(0, 1)


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
        ``(batch, time, G)``.
    """
    batch, time, dims = u.shape
    H = impulse_response(A_bar, B_bar, time) if impulse is None else impulse  # (k, T, n)
    kernel = torch.einsum("gdn,dtn->tdg", weight, expand_dims(H, dims))  # (T, D, G)
    out = _CausalConvFFT.apply(u, kernel)
    if m0 is not None:
        out = out + torch.einsum("btdn,gdn->btg", zero_input_response(A_bar, m0, time), weight)
    return out
