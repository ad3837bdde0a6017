"""The sm_90 compile check (triton_compile_check.py) as a subprocess started when the test suite starts.

It took about 90 s of the suite's 440 s, mostly in Triton's single-threaded ptxas, while the other tests wait on
torch's two threads. Started at collection (only when its test is selected), it runs beside them; the test then
waits for its result. A fresh Triton cache: a kernel compiled earlier must not hide a compile error now.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TEST_NAME = "test_kernels_compile_for_hopper"
TIMEOUT_S = 540


class CompileCheck:
    def __init__(self):
        self.cache = tempfile.mkdtemp(prefix="contime-triton-cache-")
        env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": self.cache}
        script = Path(__file__).with_name("triton_compile_check.py")
        self.process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env)

    def result(self) -> tuple[int, str, str]:
        """(return code, stdout, stderr), waiting at most TIMEOUT_S from now."""
        stdout, stderr = self.process.communicate(timeout=TIMEOUT_S)
        return self.process.returncode, stdout, stderr

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
        shutil.rmtree(self.cache, ignore_errors=True)


_running: CompileCheck | None = None


def start_if_selected(items) -> None:
    global _running
    if _running is None and any(item.name == TEST_NAME for item in items):
        _running = CompileCheck()


def running() -> CompileCheck | None:
    return _running


def stop() -> None:
    global _running
    if _running is not None:
        _running.close()
        _running = None
