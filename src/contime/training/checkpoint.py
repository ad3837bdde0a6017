"""Checkpoints: safetensors for tensors, JSON for everything else, never a pickle.

Layout under a checkpoint root (the trainer uses ``<run_dir>/checkpoints``)::

    last.json                  {"checkpoint": "ckpt-e0002-s00000130-xxxxxxxx", ...}: the pointer to the latest
    best.json                  the same, for the best-validation checkpoint (often the same folder as "last")
    ckpt-e0002-s00000130-xxxxxxxx/
        model.safetensors      the model's state_dict (parameters and buffers)
        optimizer.safetensors  the optimizer's per-parameter tensors, as "state/<param index>/<name>"
        optimizer.json         its param_groups and any non-tensor per-parameter state
        trainer.safetensors    tensor parts of the trainer state (e.g. "rng/torch_cpu", uint8)
        trainer.json           the rest of the trainer state (epoch, step, schedule, history, ...)
        config.json            the run's configuration

A checkpoint folder is written in full (every file flushed and fsynced) before a pointer names it, and a pointer
is replaced atomically (temporary file, then ``os.replace``). So "last" and "best" always name complete folders,
whenever the process dies. A failed write removes its folder; folders that no pointer names (left by a killed
process, or superseded) are deleted after each successful write.

Loading uses ``safetensors.torch.load_file`` and ``json`` only: no code is unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as _safetensors_bytes

FORMAT = "contime-checkpoint/1"
POINTERS = ("last", "best")
FOLDER_PREFIX = "ckpt-"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"
CONFIG_JSON = "config.json"


# ------------------------------------------------------------------------------------------ atomic files
def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_UMASK: int | None = None


def _mode(base: int) -> int:
    """``base`` (0o666 for files, 0o777 for folders) under the process umask (tempfile creates 0o600 / 0o700)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return base & ~_UMASK


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then ``os.replace`` it onto ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _mode(0o666))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def json_bytes(obj: Any) -> bytes:
    """Indented, strict JSON (NaN and Inf raise ``ValueError``)."""
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON, atomically."""
    return write_bytes_atomic(path, json_bytes(obj))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------ tensors
def cpu_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies: safe to serialize (no shared storage) and a snapshot of the moment."""
    out = {}
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"tensors[{key!r}] must be a Tensor, got {type(value).__name__}")
        out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors encoding of ``tensors`` (copied to the CPU first)."""
    return _safetensors_bytes(cpu_tensors(tensors), metadata=metadata)


def save_weights(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model.state_dict()`` (parameters and buffers) to a safetensors file, atomically."""
    return write_bytes_atomic(path, safetensors_bytes(model.state_dict(), {"format": FORMAT}))


def load_weights(model: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> torch.nn.Module:
    """Load weights saved by ``save_weights`` (or a checkpoint folder's model.safetensors; a checkpoint folder
    itself is accepted too) into ``model``, in place, and return it."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    model.load_state_dict(load_file(path), strict=strict)
    return model


# ------------------------------------------------------------------------------------------ optimizer state
def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``"state/<param>/<name>"``) and a JSON-ready dict."""
    tensors: dict[str, torch.Tensor] = {}
    other_state: dict[str, dict[str, Any]] = {}
    for param_id, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{param_id}/{key}"] = value
            else:
                other_state.setdefault(str(param_id), {})[key] = value
    groups = []
    for group in state_dict["param_groups"]:
        out = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer param_groups[{key!r}] is a Tensor; only plain values can be stored "
                                f"as JSON")
            out[key] = list(value) if isinstance(value, tuple) else value
        groups.append(out)
    return tensors, {"param_groups": groups, "state": other_state,
                     "param_ids": sorted({int(k) for k in state_dict["state"]})}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``flatten_optimizer_state``: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {int(pid): {} for pid in info.get("param_ids", [])}
    for name, tensor in tensors.items():
        match = re.fullmatch(r"state/(\d+)/(.+)", name)
        if match is None:
            raise ValueError(f"unexpected tensor {name!r} in the optimizer state")
        state.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    for pid, values in info.get("state", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for group in info["param_groups"]:
        groups.append({key: (tuple(value) if isinstance(value, list) and key != "params" else value)
                       for key, value in group.items()})
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------ checkpoints
@dataclass
class Checkpoint:
    """A checkpoint read back from its folder."""

    path: Path
    model: dict[str, torch.Tensor]
    config: dict[str, Any]
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None


def _check_pointers(pointers) -> tuple[str, ...]:
    pointers = tuple(pointers)
    bad = [p for p in pointers if p not in POINTERS]
    if bad or not pointers:
        raise ValueError(f"pointers must be a non-empty subset of {list(POINTERS)}, got {list(pointers)}")
    return pointers


def write_checkpoint(root: str | os.PathLike, *, model_state: dict[str, torch.Tensor], config: dict[str, Any],
                     state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None,
                     optimizer_state: dict[str, Any] | None = None, label: str = "ckpt",
                     pointers=("last",)) -> Path:
    """Write a new checkpoint folder under ``root``, then point ``pointers`` ("last", "best") at it.

    Args:
        model_state: the model's ``state_dict()``.
        config: JSON-ready configuration of the run.
        state: JSON-ready trainer state.
        tensors: tensor parts of the trainer state (e.g. RNG states).
        optimizer_state: ``optimizer.state_dict()``, or None.
        label: readable part of the folder name (e.g. "e0002-s00000130").

    Returns:
        The folder. Everything is serialized before the folder is created, so an unserializable value leaves
        nothing behind; an error while writing removes the folder, and the pointers keep their old targets.
    """
    pointers = _check_pointers(pointers)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
        raise ValueError(f"label must be letters, digits, '_', '.' or '-', got {label!r}")
    files: dict[str, bytes] = {
        MODEL_FILE: safetensors_bytes(model_state, {"format": FORMAT}),
        TRAINER_TENSORS: safetensors_bytes(tensors or {}, {"format": FORMAT}),
        TRAINER_JSON: json_bytes({"format": FORMAT, **state}),
        CONFIG_JSON: json_bytes(config),
    }
    if optimizer_state is not None:
        opt_tensors, opt_info = flatten_optimizer_state(optimizer_state)
        files[OPTIMIZER_TENSORS] = safetensors_bytes(opt_tensors, {"format": FORMAT})
        files[OPTIMIZER_JSON] = json_bytes({"format": FORMAT, **opt_info})

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{label}-", dir=root))
    named = False  # once a pointer names the folder, it must stay
    try:
        os.chmod(folder, _mode(0o777))
        for name, data in files.items():
            with open(folder / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(folder)
        for pointer in pointers:
            write_json_atomic(root / f"{pointer}.json", {"format": FORMAT, "checkpoint": folder.name})
            named = True
        fsync_dir(root)
    except BaseException:
        if not named:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    remove_unreferenced(root)
    return folder


def find_checkpoint(root: str | os.PathLike, which: str = "last") -> Path | None:
    """The folder that ``root/<which>.json`` names ("last" or "best"), or None when there is none yet."""
    _check_pointers((which,))
    pointer = Path(root) / f"{which}.json"
    if not pointer.is_file():
        return None
    name = read_json(pointer).get("checkpoint")
    if not isinstance(name, str) or Path(name).name != name or not name.startswith(FOLDER_PREFIX):
        raise ValueError(f"{pointer} names an invalid checkpoint folder {name!r}")
    folder = Path(root) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{pointer} names {folder}, which does not exist")
    return folder


def remove_unreferenced(root: str | os.PathLike) -> list[Path]:
    """Delete checkpoint folders under ``root`` that no pointer names; return them."""
    root = Path(root)
    keep = set()
    for which in POINTERS:
        try:
            folder = find_checkpoint(root, which)
        except (ValueError, FileNotFoundError, json.JSONDecodeError):
            folder = None
        if folder is not None:
            keep.add(folder.name)
    removed = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(FOLDER_PREFIX) and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def read_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint folder (safetensors and JSON only)."""
    folder = Path(folder)
    if not (folder / TRAINER_JSON).is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no {TRAINER_JSON})")
    state = read_json(folder / TRAINER_JSON)
    if state.pop("format", None) != FORMAT:
        raise ValueError(f"{folder / TRAINER_JSON} is not in the format {FORMAT}")
    optimizer = None
    if (folder / OPTIMIZER_JSON).is_file():
        info = read_json(folder / OPTIMIZER_JSON)
        info.pop("format", None)
        optimizer = unflatten_optimizer_state(load_file(folder / OPTIMIZER_TENSORS), info)
    return Checkpoint(path=folder, model=load_file(folder / MODEL_FILE), config=read_json(folder / CONFIG_JSON),
                      state=state, tensors=load_file(folder / TRAINER_TENSORS), optimizer=optimizer)
