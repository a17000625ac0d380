"""Shared fixtures: small synthetic MNIST-format data, and the real MNIST when available."""

from __future__ import annotations

import gc
import gzip
from pathlib import Path

import jax
import numpy as np
import pytest

from jal.data.mnist import IDX_FILES, IMAGES_MAGIC, LABELS_MAGIC, NORMALIZATION


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def synthetic_mnist(num_train: int, num_test: int, seed: int = 0):
    """Learnable 28x28 images: class c lights a 6x6 patch at a class-dependent place, plus noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            row, col = 2 + 8 * (c // 4), 2 + 7 * (c % 4)
            images[i, row : row + 6, col : col + 6] = 255
        return images, labels

    return (*make(num_train), *make(num_test))


def normalize(images: np.ndarray) -> np.ndarray:
    """MNIST-format uint8 images [N, 28, 28] as LeNet's float32 inputs [N, 28, 28, 1]."""
    return NORMALIZATION.apply(images[..., None])


def write_idx_dir(directory: Path, arrays, *, gzipped: bool = True) -> Path:
    """Writes (train_images, train_labels, test_images, test_labels) as the four IDX files."""
    directory.mkdir(parents=True, exist_ok=True)
    for (field, (name, _)), array in zip(IDX_FILES.items(), arrays, strict=True):
        data = idx_bytes(array, IMAGES_MAGIC if field.endswith("images") else LABELS_MAGIC)
        if gzipped:
            with gzip.open(directory / f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            (directory / name).write_bytes(data)
    return directory


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Frees each module's compiled programs when the module ends.

    XLA's CPU backend maps about three memory regions for every executable it keeps. The suite
    compiles tens of thousands of distinct programs in one process; kept all together they
    reach the kernel's limit of 65,530 mappings (vm.max_map_count), and the next compilation
    dies with a segmentation fault. A run of jal compiles a fixed set of programs, so this
    concerns only a process that, like the suite, compiles without end.
    """
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def synthetic_dir(tmp_path) -> Path:
    return write_idx_dir(tmp_path / "mnist", synthetic_mnist(600, 200))


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """scikit-learn's real 8x8 digits (offline) as a jal .npz: 1,400 training and 397 test inputs."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, x_train=x[:1400].astype(np.float32), y_train=y[:1400], x_test=x[1400:].astype(np.float32),
             y_test=y[1400:])  # fmt: skip
    return path


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST the repository ships."""
    return Path(__file__).resolve().parent.parent / "data" / "mnist"


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """A W&B that reads no login of this machine, writes under tmp_path, and is torn down afterwards."""
    wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install 'jal[wandb]')")
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    for name, folder in (("WANDB_DIR", "wandb"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                         ("WANDB_DATA_DIR", "data")):  # fmt: skip
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    # Quiet, W&B also skips asking the server who is logged in, which without a network takes 10 s.
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield tmp_path
    wandb.teardown()  # W&B reads its environment once per process: the next test gets a fresh one
