"""The block-GEMM memory (contime.ops.lmu_memory.block_gemm): plain torch ops, so checked on the CPU in float64
against the reference loop, with its gradients."""

from __future__ import annotations

import pytest
import torch

from contime.legendre import discretize, impulse_response
from contime.ops.lmu_memory import linear_memory_naive
from contime.ops.lmu_memory.block_gemm import block_gemm_toeplitz, block_length, linear_memory_block_gemm
from memory_reference import assert_equals_the_loop, system


@pytest.mark.parametrize("batch,time,dims,order,block", [
    (3, 37, 1, 8, None),  # L = 32 with a padded last block
    (4, 21, 2, 5, 4),  # several dimensions, padding
    (2, 64, 3, 6, 16),  # no padding
    (2, 10, 1, 3, 1),  # blocks of one step
    (2, 7, 1, 3, 32),  # one block longer than the sequence
])
def test_block_gemm_memory_equals_the_loop(batch, time, dims, order, block):
    # Measured ~1e-15 on the outputs.
    assert_equals_the_loop(lambda u, A, B, m0, H: linear_memory_block_gemm(u, A, B, m0, impulse=H, block=block),
                           batch, time, dims, order)


def test_block_gemm_in_float32():
    A, B = system(16, 100)
    u = torch.randn(5, 200, 1)
    m = linear_memory_block_gemm(u, A.float(), B.float())
    ref = linear_memory_naive(u.double(), A, B)
    assert float((m.double() - ref).norm() / ref.norm()) < 1e-5  # measured ~3e-7


def test_block_length_prefers_a_divisor_near_32():
    assert block_length(784) == 28 and block_length(64) == 32 and block_length(96) == 32
    assert block_length(7) == 7 and block_length(37) == 37 and block_length(1009) == 32  # a prime: padding


def test_outputs_are_contiguous_and_inputs_may_not_be():
    """A padded last block or D > 1 would leave a strided view; the result is always contiguous. Transposed
    inputs and a broadcast gradient give the same values as contiguous ones."""
    A, B = system(5, 9)
    H = impulse_response(A, B, 67)[0]
    for dims in (1, 2):
        u = torch.randn(dims, 67, 3, dtype=torch.float64).transpose(0, 2)  # (3, 67, dims), not contiguous
        out = block_gemm_toeplitz(u, H, block=32)
        assert out.is_contiguous() and out.shape == (3, 67, dims, 5)
        torch.testing.assert_close(out, block_gemm_toeplitz(u.contiguous(), H, block=32))
    u = torch.randn(3, 67, 1, dtype=torch.float64, requires_grad=True)
    grad, = torch.autograd.grad(block_gemm_toeplitz(u, H, block=32).sum(), u)  # sum() gives an expanded gradient
    u_ref = u.detach().clone().requires_grad_()
    ref_grad, = torch.autograd.grad(linear_memory_naive(u_ref, A, B).sum(), u_ref)
    torch.testing.assert_close(grad, ref_grad, atol=1e-12, rtol=1e-10)


def test_autocast_keeps_the_product_in_float32():
    """Forward under autocast, backward outside it (as the trainer does): float32 results and gradients."""
    A, B = system(8, 20)
    H = impulse_response(A, B, 40)[0].float()
    u = torch.randn(4, 40, 1, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = block_gemm_toeplitz(u, H)
    assert m.dtype == torch.float32
    m.sum().backward()
    assert u.grad.dtype == torch.float32
    ref = linear_memory_naive(u.detach().double(), A, B)
    assert float((m.detach().double() - ref).norm() / ref.norm()) < 1e-5


def test_tf32_setting_is_set_for_cuda_and_restored():
    """The flag is process-wide: set only around CUDA products (no GPU needed to flip it) and restored."""
    from contime.ops.lmu_memory.common import matmul_precision
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    with matmul_precision("tf32", torch.device("cuda")):
        assert matmul.fp32_precision == "tf32"
    assert matmul.fp32_precision == before
    with matmul_precision("tf32", torch.device("cpu")):
        assert matmul.fp32_precision == before
    block_gemm_toeplitz(torch.randn(2, 9, 1), torch.randn(9, 3), precision="tf32")
    assert matmul.fp32_precision == before


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="precision"):
        block_gemm_toeplitz(torch.randn(2, 5, 1), torch.randn(5, 3), precision="tf32x3")
    with pytest.raises(ValueError, match="kernel"):
        block_gemm_toeplitz(torch.randn(2, 5, 1), torch.randn(4, 3))
    with pytest.raises(ValueError, match="dtype"):
        block_gemm_toeplitz(torch.randn(2, 5, 1), torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="block"):
        block_gemm_toeplitz(torch.randn(2, 5, 1), torch.randn(5, 3), block=0)
    with pytest.raises(ValueError, match="block"):
        block_gemm_toeplitz(torch.randn(2, 5, 1), torch.randn(5, 3), block=8.0)
    A, B = discretize(4, torch.tensor([3.0, 5.0], dtype=torch.float64), 1.0, "zoh")
    with pytest.raises(ValueError, match="k = 2"):
        linear_memory_block_gemm(torch.randn(2, 5, 2, dtype=torch.float64), A, B)
