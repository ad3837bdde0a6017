"""Every Triton kernel compiles for an sm_90 GPU, from this CPU (see triton_compile_check.py)."""

from __future__ import annotations

import pytest
import triton_compile_background

from contime.ops.lmu_cell import triton_available


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_kernels_compile_for_hopper():
    """The subprocess was started when the suite was collected (triton_compile_background.py); this waits for it."""
    check = triton_compile_background.running()
    assert check is not None, "the compile check was not started at collection"
    returncode, stdout, stderr = check.result()
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert stdout.count("compiled") >= 12
