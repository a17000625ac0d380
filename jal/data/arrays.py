"""Datasets as arrays: one `.npz` file, or a folder of `.npy` files (memory-mapped).

Both hold the keys x_train, y_train, x_test and y_test; inputs of any shape and numeric
dtype, integer labels. A folder's `.npy` files are memory-mapped, so a pool larger than
memory is read only where it is used.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from jal.data.dataset import Dataset, checked_splits
from jal.data.normalization import Normalization, from_training, identity
from jal.errors import JalError

KEYS = ("x_train", "y_train", "x_test", "y_test")


def _read_npz(path: Path) -> tuple[dict, dict]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in KEYS if key not in archive.files]
            if missing:
                found = ", ".join(archive.files) or "none"
                raise JalError(
                    f"{path}: missing key {', '.join(missing)} (found {found}); save it with {', '.join(KEYS)}"
                )
            arrays = {key: archive[key] for key in KEYS}
    except JalError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise JalError(f"{path}: cannot read it as .npz ({e}); the file is corrupt, truncated or not numpy's") from e
    return arrays, {key: f"{path}, key {key}" for key in KEYS}


def _read_npy_folder(folder: Path) -> tuple[dict, dict]:
    arrays, where = {}, {}
    for key in KEYS:
        path = folder / f"{key}.npy"
        if not path.is_file():
            raise JalError(
                f"{folder}: missing key {key} ({key}.npy); the folder needs {', '.join(k + '.npy' for k in KEYS)}"
            )
        try:
            arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise JalError(
                f"{path}: cannot read it as .npy ({e}); the file is corrupt, truncated or not numpy's"
            ) from e
        where[key] = str(path)
    return arrays, where


def file_md5(path: Path, limit: int = 4 * 2**30) -> str | None:
    """The md5 of a file's bytes, for the record of what a run read; None above `limit` bytes (too long to read)."""
    if path.stat().st_size > limit:
        return None
    digest = hashlib.md5()
    with path.open("rb") as f:
        while block := f.read(2**24):
            digest.update(block)
    return digest.hexdigest()


def load_arrays(path: str | os.PathLike, *, num_classes: int | None = None, normalize: bool = True) -> Dataset:
    """A dataset from an `.npz` file or a folder of `.npy` files.

    Args:
      path: the file or folder.
      num_classes: C, else the labels' largest + 1.
      normalize: standardise inputs with the training split's statistics (per channel
        or feature); else use them as they are.
    """
    path = Path(path)
    if path.is_dir():
        arrays, where = _read_npy_folder(path)
    elif path.is_file():
        arrays, where = _read_npz(path)
    else:
        raise JalError(f"{path}: no such file or folder; pass `path` a .npz file or a folder of .npy files")
    arrays, num_classes = checked_splits(arrays, where, num_classes)
    x_train = arrays["x_train"]
    normalization: Normalization = from_training(x_train) if normalize else identity(x_train.shape[-1])
    files = sorted(path.glob("*.npy")) if path.is_dir() else [path]
    source = {"kind": "arrays", "path": str(path.absolute()), "md5": {f.name: file_md5(f) for f in files}}
    return Dataset(*(arrays[key] for key in KEYS), num_classes, normalization, source)
