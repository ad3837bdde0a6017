"""The persistent cell kernels with several programs per group, each program in its own thread of Triton's
interpreter (tests/group_concurrency_check.py; a process of its own per case): the group barriers must hold
when members reach them at different times, which the one-program-per-group interpreter tests cannot show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contime.ops.lmu_cell import triton_available

CASES = {
    # kind, T, B, N, H, D, BLOCK_N, members cap, flags: N != H both ways, partial batch blocks, several members
    "resident-eh-em": ["resident", "5", "20", "40", "24", "1", "16", "8"],
    "resident-wider-h": ["resident", "6", "20", "24", "40", "2", "16", "3", "--no-em"],
    "chunked-two-chunks-per-member": ["chunked", "5", "20", "40", "24", "1", "16", "2"],
    "chunked-one-step": ["chunked", "1", "17", "32", "32", "1", "16", "2"],
    "convolution-extra-chunks": ["convolution", "7", "20", "0", "40", "1", "16", "2"],
    "convolution-one-chunk-each": ["convolution", "6", "33", "0", "40", "1", "16", "8", "--no-eh"],
    "elman": ["elman", "6", "20", "0", "40", "1", "16", "2"],
}


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", [1, 2])
def test_members_at_different_times_compute_what_the_torch_core_does(case, seed):
    script = Path(__file__).with_name("group_concurrency_check.py")
    result = subprocess.run([sys.executable, str(script), *CASES[case], "--seed", str(seed)], capture_output=True,
                            text=True, env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bad"] == [] and max(report["errors"].values()) < 1e-5  # float32 rounding: ~1e-7 to 1e-6
