"""What every JSON line of ``contime bench`` carries about the run, and the writer of those lines."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterable

import torch

from .. import __version__
from ..host_memory import host_memory_settings

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/contime: the code whose speed is measured


def git_commit() -> str | None:
    """The library's short commit, with "+dirty" when its sources have uncommitted changes; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_PACKAGE_DIR, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=_PACKAGE_DIR,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def device_name(device: torch.device) -> str:
    """The card's name on CUDA; the processor (or machine) on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def run_metadata(device: torch.device, shape: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Keys shared by every line of one run."""
    meta = {"timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "contime": __version__, "git": git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads(), "shape": shape, "dtype": str(dtype).replace("torch.", "")}
    if device.type == "cuda":
        meta["cuda"] = torch.version.cuda
        meta["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    else:
        meta.update(host_memory_settings())  # huge pages halve CPU step times here (contime.host_memory)
        if hasattr(os, "getloadavg"):
            meta["loadavg"] = os.getloadavg()[0]  # other work on the CPU inflates the times
    return meta


def _json_safe(value):
    """NaN and infinities become null (JSON has no such numbers); containers are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def append_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Append one JSON object per record to ``path`` (folders created); returns the number of lines written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(_json_safe(r), allow_nan=False) + "\n" for r in records]
    with path.open("a") as f:
        f.writelines(lines)
    return len(lines)
