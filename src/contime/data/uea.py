"""UEA/UCR archives bundled in aeon's wheel, loaded through aeon's own API, as ``IrregularData``.

aeon gives ``(n_cases, n_channels, n_timepoints)`` arrays, or a list of ``(n_channels, n_timepoints_i)`` arrays
for unequal lengths (JapaneseVowels). Here the series become ``(N, L, C)`` padded to the longest, with times
0, 1, 2, ... (the archives are regularly sampled) and a mask of the real points; labels become int64 indices
into the sorted class names, which are returned beside the data.
"""

from __future__ import annotations

import numpy as np
import torch

from .irregular import IrregularData

BUNDLED_CLASSIFICATION = ("JapaneseVowels", "BasicMotions", "ACSF1", "GunPoint", "ItalyPowerDemand", "OSULeaf",
                          "PickupGestureWiimoteZ", "ArrowHead")
BUNDLED_REGRESSION = ("Covid3Month", "CardanoSentiment")


def to_irregular(X, targets: torch.Tensor, dtype: torch.dtype = torch.float32) -> IrregularData:
    """aeon's ``X`` (3-D array or list of 2-D arrays) -> padded ``IrregularData``; NaN in X counts as missing."""
    series = [np.asarray(x, dtype=np.float64) for x in X]
    if not series or any(s.ndim != 2 for s in series):
        raise ValueError("X must be (n_cases, n_channels, n_timepoints) or a list of (n_channels, n_timepoints)")
    channels = {s.shape[0] for s in series}
    if len(channels) != 1:
        raise ValueError(f"every case of X needs the same number of channels, got {sorted(channels)}")
    n, length, c = len(series), max(s.shape[1] for s in series), channels.pop()
    values = torch.full((n, length, c), float("nan"), dtype=torch.float64)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i, s in enumerate(series):
        values[i, : s.shape[1]] = torch.from_numpy(s.T)
        mask[i, : s.shape[1]] = torch.from_numpy(~np.isnan(s).any(axis=0))
    times = torch.arange(length, dtype=torch.float64).expand(n, length).clone()
    return IrregularData(values.to(dtype), times.to(dtype), mask, targets)


def load_uea(name: str, split: str, classes: list[str] | None = None,
             dtype: torch.dtype = torch.float32) -> tuple[IrregularData, list[str]]:
    """The ``split`` ("train" or "test") of a bundled classification set and its class names.

    Pass the train split's ``classes`` when loading the test split, so both use the same label indices.
    """
    from aeon.datasets import load_classification  # aeon is slow to import; only the UEA runs need it

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        X, y = load_classification(name, split=split)
    except Exception as err:  # aeon raises several types for a name it cannot find offline
        raise ValueError(f"could not load UEA/UCR dataset {name!r} offline ({err}); bundled with aeon: "
                         f"{', '.join(BUNDLED_CLASSIFICATION)}") from err
    names = classes if classes is not None else sorted(set(map(str, y)))
    lookup = {c: i for i, c in enumerate(names)}
    unknown = sorted(set(map(str, y)) - set(lookup))
    if unknown:
        raise ValueError(f"{name} {split} has labels {unknown} not among the classes {names}")
    labels = torch.tensor([lookup[str(v)] for v in y], dtype=torch.long)
    return to_irregular(X, labels, dtype), names
