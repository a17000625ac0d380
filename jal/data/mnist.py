"""MNIST from its IDX files (gzipped or not): reading, validation, where to find it, download.

The images stay uint8 on the host, [N, 28, 28, 1]; the reference's normalisation
(torchvision's Normalize((0.1307,), (0.3081,))) is the dataset's `normalization`.

Without a folder named, MNIST comes from the first of: $JAL_MNIST_DIR; the download
cache; the copy a clone of the repository ships in `data/mnist`; a download. The cache's
and the repository's files are checked against MNIST's md5 sums before use.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import shutil
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from jal.data.dataset import Dataset
from jal.data.normalization import Normalization
from jal.errors import JalError

IMAGE_SIZE = 28
NUM_CLASSES = 10
NORMALIZATION = Normalization(np.float32([0.1307]), np.float32([0.3081]), 255.0)

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


def default_cache_dir() -> Path:
    """Where `jal` keeps downloaded MNIST: $JAL_CACHE_DIR, else ~/.cache/jal."""
    return Path(os.environ.get("JAL_CACHE_DIR", Path.home() / ".cache" / "jal")) / "mnist"


def _find_idx_file(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise JalError(
        f"{directory}: missing {name} (or {name}.gz); point `mnist_dir` at a folder holding the four MNIST IDX files"
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
    return parse_idx(_read_bytes(path, gzipped=path.suffix == ".gz"), path, magic=magic)


def parse_idx(raw: bytes, path: Path, *, magic: int) -> np.ndarray:
    """The array of an IDX file's uncompressed bytes `raw` (read from `path`, named in errors)."""
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
    expected = header_size + math.prod(dims)  # exact: numpy's product wraps around at 2**64
    if len(raw) != expected:
        raise JalError(
            f"{path}: {len(raw)} bytes where the header {dims} implies {expected}; "
            "the file is truncated or corrupt, replace it"
        )
    try:
        return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)
    except ValueError as e:  # an empty array whose other dimensions exceed what numpy can index
        raise JalError(f"{path}: the header's dimensions {dims} cannot be an array ({e}); replace the file") from e


def check_mnist(images: np.ndarray, labels: np.ndarray, what: str) -> None:
    """Raises JalError unless `images` [N, 28, 28] and `labels` [N] are one non-empty MNIST split."""
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise JalError(f"{what}: images of shape {images.shape[1:]}, expected 28x28 grayscale")
    if len(images) != len(labels):
        raise JalError(f"{what}: {len(images)} images but {len(labels)} labels; the files do not belong together")
    if len(images) == 0:
        raise JalError(f"{what}: no samples")
    if labels.max() >= NUM_CLASSES:
        raise JalError(f"{what}: label {int(labels.max())} outside 0..9; the labels file is corrupt")


def mnist_dataset(train_images, train_labels, test_images, test_labels, source: dict) -> Dataset:
    """The MNIST splits as a `Dataset`: uint8 images [N, 28, 28, 1], int32 labels, the reference normalisation."""
    return Dataset(
        train_images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1),
        np.asarray(train_labels, np.int32),
        test_images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1),
        np.asarray(test_labels, np.int32),
        NUM_CLASSES,
        NORMALIZATION,
        source,
    )


def load_idx_dir(directory: str | os.PathLike) -> Dataset:
    """Loads the four standard MNIST IDX files (gzipped or not) from a folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise JalError(f"{directory}: no such folder; pass `mnist_dir` with the MNIST IDX files")
    arrays, paths, md5 = {}, {}, {}
    for field, (name, _) in IDX_FILES.items():
        magic = IMAGES_MAGIC if field.endswith("images") else LABELS_MAGIC
        path = paths[field] = _find_idx_file(directory, name)
        raw = _read_bytes(path, gzipped=path.suffix == ".gz")
        md5[name] = hashlib.md5(raw).hexdigest()  # of the uncompressed file, as MNIST's own list gives it
        arrays[field] = parse_idx(raw, path, magic=magic)
    for split in ("train", "test"):
        where = f"{paths[f'{split}_images']} / {paths[f'{split}_labels'].name}"
        check_mnist(arrays[f"{split}_images"], arrays[f"{split}_labels"], where)
    source = {"kind": "mnist", "path": str(directory.absolute()), "md5": md5}
    return mnist_dataset(*(arrays[field] for field in IDX_FILES), source)


def download_mnist(directory: str | os.PathLike, *, mirror: str = DEFAULT_MIRROR) -> Path:
    """Fetches the four gzipped IDX files into `directory` unless already there.

    Each file's uncompressed md5 is checked before it is moved into place, so an
    interrupted or corrupt download never leaves a file behind.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JalError(f"cannot create {directory} ({e}); set JAL_CACHE_DIR or pass `mnist_dir`") from e
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
            raise JalError(f"cannot download {url} ({e}); offline, pass `mnist_dir` with the MNIST IDX files") from e
        finally:
            part.unlink(missing_ok=True)
    return directory


def repository_copy() -> Path | None:
    """The `data/mnist` folder of the clone jal runs from, if it runs from one (an installed jal has none)."""
    root = Path(__file__).resolve().parents[2]
    folder = root / "data" / "mnist"
    return folder if (root / "pyproject.toml").is_file() and folder.is_dir() else None


def _holds_mnist(directory: Path) -> bool:
    return all((directory / f"{name}.gz").is_file() or (directory / name).is_file() for name, _ in IDX_FILES.values())


def check_md5(dataset: Dataset, what: str) -> Dataset:
    """`dataset` if every file it was read from has MNIST's md5, else a JalError naming the file."""
    for name, md5 in IDX_FILES.values():
        found = dataset.source["md5"][name]
        if found != md5:
            path = _find_idx_file(Path(dataset.source["path"]), name)
            raise JalError(
                f"{path}: content md5 {found}, expected {md5}; {what} is altered or corrupt: restore it, "
                "or pass `mnist_dir`"
            )
    return dataset


def load_mnist(directory: str | os.PathLike | None = None) -> Dataset:
    """MNIST from the IDX folder given, else the first source that has it (see the module's docstring).

    The dataset's `source["origin"]` says which: "given", "JAL_MNIST_DIR", "cache",
    "repository" or "download".
    """
    if directory is not None:
        origin, dataset = "given", load_idx_dir(directory)
    elif os.environ.get("JAL_MNIST_DIR"):
        origin, dataset = "JAL_MNIST_DIR", load_idx_dir(os.environ["JAL_MNIST_DIR"])
    elif _holds_mnist(default_cache_dir()):
        origin, dataset = "cache", check_md5(load_idx_dir(default_cache_dir()), "the download cache")
    elif repository_copy() is not None:
        origin, dataset = "repository", check_md5(load_idx_dir(repository_copy()), "the repository's copy")
    else:
        origin, dataset = "download", load_idx_dir(download_mnist(default_cache_dir()))
    return dataset._replace(source={**dataset.source, "origin": origin})
