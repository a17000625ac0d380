"""MNIST-format data: IDX files (gzipped or not), TFDS, download, validation, pools.

Images stay uint8 [N, 28, 28] on the host until `normalize` turns them into the
float32 NHWC arrays the model takes.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jal.errors import JalError

IMAGE_SIZE = 28
NUM_CLASSES = 10
# The reference's torchvision Normalize((0.1307,), (0.3081,)).
MEAN = 0.1307
STD = 0.3081

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

# Standard file names and the md5 of each file's uncompressed content.
IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": ("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
    "test_images": ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
    "test_labels": ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
}
# The mirror TFDS itself downloads MNIST from.
DEFAULT_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"


class MNIST(NamedTuple):
    """Raw MNIST-format data, as stored."""

    train_images: np.ndarray  # [N_train, 28, 28] uint8
    train_labels: np.ndarray  # [N_train] uint8
    test_images: np.ndarray  # [N_test, 28, 28] uint8
    test_labels: np.ndarray  # [N_test] uint8


def default_cache_dir() -> Path:
    """Where `jal` keeps downloaded MNIST: $JAL_CACHE_DIR, else ~/.cache/jal."""
    return Path(os.environ.get("JAL_CACHE_DIR", Path.home() / ".cache" / "jal")) / "mnist"


def _find_idx_file(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise JalError(
        f"{directory}: missing {name} (or {name}.gz); point --data-dir at a folder holding the four MNIST IDX files"
    )


def _read_bytes(path: Path, *, gzipped: bool) -> bytes:
    try:
        if gzipped:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise JalError(f"{path}: cannot read ({e}); the file is corrupt or truncated, replace it") from e


def read_idx(path: str | os.PathLike, *, magic: int) -> np.ndarray:
    """Reads one IDX file of unsigned bytes and checks its header against its size.

    Args:
      path: an IDX file, gzipped when its name ends in `.gz`.
      magic: the expected magic number (`IMAGES_MAGIC` or `LABELS_MAGIC`).

    Returns:
      A uint8 array with the dimensions the header declares.
    """
    path = Path(path)
    raw = _read_bytes(path, gzipped=path.suffix == ".gz")
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise JalError(f"{path}: only {len(raw)} bytes, too short for an IDX header; replace the file")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise JalError(
            f"{path}: magic number {found:#010x}, expected {magic:#010x}; not an MNIST IDX file of this kind"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + int(np.prod(dims))
    if len(raw) != expected:
        raise JalError(
            f"{path}: {len(raw)} bytes where the header {dims} implies {expected}; "
            "the file is truncated or corrupt, replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def _check(images: np.ndarray, labels: np.ndarray, what: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise JalError(f"{what}: images of shape {images.shape[1:]}, expected 28x28 grayscale")
    if len(images) != len(labels):
        raise JalError(f"{what}: {len(images)} images but {len(labels)} labels; the files do not belong together")
    if len(images) == 0:
        raise JalError(f"{what}: no samples")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise JalError(f"{what}: label {int(labels.max())} outside 0..9; the labels file is corrupt")


def load_idx_dir(directory: str | os.PathLike) -> MNIST:
    """Loads the four standard MNIST IDX files (gzipped or not) from a folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise JalError(f"{directory}: no such folder; pass --data-dir with the MNIST IDX files")
    arrays = {}
    for field, (name, _) in IDX_FILES.items():
        magic = IMAGES_MAGIC if field.endswith("images") else LABELS_MAGIC
        path = _find_idx_file(directory, name)
        arrays[field] = read_idx(path, magic=magic)
        arrays[field + "_path"] = path
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        paths = f"{arrays[f'{split}_images_path']} / {arrays[f'{split}_labels_path'].name}"
        _check(images, labels, paths)
    return MNIST(*(arrays[f] for f in IDX_FILES))


def load_tfds(data_dir: str | os.PathLike | None = None) -> MNIST:
    """Loads prepared TFDS MNIST through `tfds.data_source` (no TensorFlow needed)."""
    import tensorflow_datasets as tfds

    splits = {}
    for split in ("train", "test"):
        try:
            source = tfds.data_source("mnist", split=split, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises several types for a missing or broken dataset
            raise JalError(f"TFDS mnist ({split}) in {data_dir or 'the default TFDS folder'}: {e}") from e
        records = [source[i] for i in range(len(source))]
        images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
        if images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 1):
            images = images[..., 0]
        labels = np.asarray([r["label"] for r in records], np.uint8)
        _check(images, labels, f"TFDS mnist {split}")
        splits[split] = (images, labels)
    return MNIST(*splits["train"], *splits["test"])


def download_mnist(directory: str | os.PathLike, *, mirror: str = DEFAULT_MIRROR) -> Path:
    """Fetches the four gzipped IDX files into `directory` unless already there.

    Each file's uncompressed md5 is checked before it is moved into place, so an
    interrupted or corrupt download never leaves a file behind.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JalError(f"cannot create {directory} ({e}); set JAL_CACHE_DIR or pass --data-dir") from e
    for name, md5 in IDX_FILES.values():
        target = directory / f"{name}.gz"
        if target.is_file():
            continue
        url = mirror.rstrip("/") + f"/{name}.gz"
        part = directory / f"{name}.gz.part"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
                shutil.copyfileobj(response, f)
            found = hashlib.md5(_read_bytes(part, gzipped=True)).hexdigest()
            if found != md5:
                raise JalError(f"{url}: content md5 {found}, expected {md5}; the mirror is broken, try again later")
            part.rename(target)
        except (OSError, http.client.HTTPException) as e:
            raise JalError(f"cannot download {url} ({e}); offline, pass --data-dir with the MNIST IDX files") from e
        finally:
            part.unlink(missing_ok=True)
    return directory


def normalize(images):
    """uint8 [N, 28, 28] -> float32 [N, 28, 28, 1], scaled to [0, 1] then standardised.

    Works on numpy and jax arrays alike (`jal.score_pool` normalises on the device).
    """
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD)[..., None]


def make_pool(num_train: int, pool_size: int, *, seed: int = 1) -> np.ndarray:
    """The pool: a seeded random subset of the training set, as the reference draws it.

    Returns:
      int64 [pool_size] indices into the training set.
    """
    if not 0 < pool_size <= num_train:
        raise JalError(f"pool size {pool_size} must be between 1 and the {num_train} training samples")
    return np.random.default_rng(seed).permutation(num_train)[:pool_size]


def load_mnist(data_dir: str | os.PathLike | None = None, *, tfds_data_dir: str | os.PathLike | None = None) -> MNIST:
    """MNIST from the first source given: TFDS folder, IDX folder, $JAL_MNIST_DIR, download.

    Without a folder named, the IDX files are downloaded once into `default_cache_dir()`.
    """
    if tfds_data_dir is not None:
        return load_tfds(tfds_data_dir)
    data_dir = data_dir or os.environ.get("JAL_MNIST_DIR") or download_mnist(default_cache_dir())
    return load_idx_dir(data_dir)
