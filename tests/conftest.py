import os

import pytest
import torch

# Without a GPU, Triton's kernels run in its interpreter (numpy on the CPU). It is read when a kernel is
# defined, so it must be set before any test imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
