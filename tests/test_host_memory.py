"""contime.host_memory and the command's launcher: torch's huge pages for large CPU tensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import contime_launch
from contime import host_memory

# Allocates, writes and frees a 64 MiB tensor, then does it again, and prints the minor page faults of the
# second round. Without huge pages the block is mapped afresh (glibc unmaps blocks over 32 MiB on free), and
# each 4 KiB page faults once.
_FAULTS_OF_A_NEW_BLOCK = """
import json, resource, torch
def round_trip():
    t = torch.ones(16 << 20)
    del t
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_trip()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""
PAGES = (64 << 20) // 4096

needs_madvise = pytest.mark.skipif(host_memory.kernel_huge_pages() != "madvise",
                                   reason="the comparison needs the kernel's 'madvise' huge page mode")


def _faults(value: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != host_memory.HUGE_PAGES_VARIABLE}
    if value is not None:
        env[host_memory.HUGE_PAGES_VARIABLE] = value
    out = subprocess.run([sys.executable, "-c", _FAULTS_OF_A_NEW_BLOCK], capture_output=True, text=True,
                         check=True, env=env, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_madvise
def test_torch_takes_huge_pages_when_asked():
    assert _faults(None) > PAGES // 2  # the premise: 4 KiB pages, every one faulted in again
    assert _faults("1") < PAGES // 20  # 2 MiB pages: 512 times fewer


def test_launcher_turns_huge_pages_on(monkeypatch):
    seen = []
    monkeypatch.delenv(host_memory.HUGE_PAGES_VARIABLE, raising=False)
    monkeypatch.setattr("contime.cli.app", lambda: seen.append(os.environ[host_memory.HUGE_PAGES_VARIABLE]))
    contime_launch.main()
    assert seen == ["1"]


def test_launcher_keeps_a_value_the_user_set(monkeypatch):
    seen = []
    monkeypatch.setenv(host_memory.HUGE_PAGES_VARIABLE, "0")
    monkeypatch.setattr("contime.cli.app", lambda: seen.append(os.environ[host_memory.HUGE_PAGES_VARIABLE]))
    contime_launch.main()
    assert seen == ["0"]


@pytest.mark.parametrize("text, mode", [("always [madvise] never\n", "madvise"), ("[always] madvise never\n", "always"),
                                        ("always madvise [never]\n", "never"), ("", None)])
def test_kernel_mode_read_from_sysfs(tmp_path, monkeypatch, text, mode):
    setting = tmp_path / "enabled"
    setting.write_text(text)
    monkeypatch.setattr(host_memory, "_KERNEL_SETTING", setting)
    assert host_memory.kernel_huge_pages() == mode


def test_kernel_without_huge_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(host_memory, "_KERNEL_SETTING", tmp_path / "missing")
    assert host_memory.kernel_huge_pages() is None


def test_settings_record(monkeypatch):
    monkeypatch.setenv(host_memory.HUGE_PAGES_VARIABLE, "1")
    record = host_memory.host_memory_settings()
    assert record["thp_mem_alloc_enable"] == "1"
    assert record["transparent_hugepage"] == host_memory.kernel_huge_pages()
