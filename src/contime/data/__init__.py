"""Data generators and loaders for the experiments."""

from .delay import band_limited_noise
from .idx import parse_idx, read_idx, write_idx
from .mackey_glass import MackeyGlassTask, integrate_mackey_glass, mackey_glass, mackey_glass_task
from .mnist import (
    FASHION_MNIST_DIR,
    MNIST_BASE_URL,
    MNIST_FILES,
    MNIST_MD5,
    DataSplit,
    MnistArrays,
    download_mnist,
    load_fashion_mnist,
    load_mnist5k,
    load_mnist_idx,
    make_permutation,
    psmnist_sequences,
    split_train_val_test,
)

__all__ = [
    "band_limited_noise",
    "parse_idx",
    "read_idx",
    "write_idx",
    "MackeyGlassTask",
    "integrate_mackey_glass",
    "mackey_glass",
    "mackey_glass_task",
    "FASHION_MNIST_DIR",
    "MNIST_BASE_URL",
    "MNIST_FILES",
    "MNIST_MD5",
    "DataSplit",
    "MnistArrays",
    "download_mnist",
    "load_fashion_mnist",
    "load_mnist5k",
    "load_mnist_idx",
    "make_permutation",
    "psmnist_sequences",
    "split_train_val_test",
]
