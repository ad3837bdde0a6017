"""Every Triton kernel compiles for an sm_90 GPU, from this CPU (see triton_compile_check.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contime.ops.lmu_cell import triton_available


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_kernels_compile_for_hopper(tmp_path):
    script = Path(__file__).with_name("triton_compile_check.py")
    # A fresh cache: a kernel compiled earlier must not hide a compile error now.
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("compiled") >= 12
