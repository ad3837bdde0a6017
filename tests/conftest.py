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


def pytest_collection_modifyitems(session, config, items):
    # The sm_90 compile check runs as a subprocess beside the other tests (tests/triton_compile_background.py).
    from contime.ops.lmu_cell import triton_available
    if triton_available():
        import triton_compile_background
        triton_compile_background.start_if_selected(items)


def pytest_sessionfinish(session, exitstatus):
    import triton_compile_background
    triton_compile_background.stop()
