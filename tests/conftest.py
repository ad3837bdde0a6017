import os

import pytest
import torch

# The tests run Triton's kernels in its interpreter (numpy, on CPU tensors), on any machine; the compiled
# kernels are checked on a GPU by benchmarks/gpu_kernel_check.py. Read when a kernel is defined, so it is set
# before any test imports one.
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
