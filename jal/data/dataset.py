"""A dataset as arrays, its validation, and the pool drawn from its training split."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from jal.data.host import release
from jal.data.normalization import BLOCK, Normalization
from jal.errors import JalError


class Dataset(NamedTuple):
    """Train and test splits as host arrays; inputs may be memory-mapped and are read lazily."""

    x_train: np.ndarray  # [N, *input_shape], raw values (any numeric dtype)
    y_train: np.ndarray  # [N] int32 in [0, num_classes)
    x_test: np.ndarray  # [T, *input_shape]
    y_test: np.ndarray  # [T] int32
    num_classes: int
    normalization: Normalization
    source: dict  # what was read, for the record: kind, path, md5 where known

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def checked_splits(arrays: dict, where: dict, num_classes: int | None) -> tuple[dict, int]:
    """Validates the four arrays of a dataset; returns them ready to use and the number of classes.

    Args:
      arrays: x_train, y_train, x_test and y_test, numpy arrays or memmaps.
      where: for each key, how to name it in an error ("data.npz, key x_train").
      num_classes: C if given, else taken from the labels (their largest + 1).

    Inputs of one channel without a channel axis ([N, H, W]) get one ([N, H, W, 1], a
    view). Every error names the file and key and how to fix it.
    """
    for key in ("x_train", "x_test"):
        x = arrays[key]
        if x.ndim < 2 or x.dtype.kind not in "biuf":
            raise JalError(f"{where[key]}: {x.dtype} array of shape {list(x.shape)}; inputs must be a numeric [N, ...]")
        if len(x) == 0:
            raise JalError(f"{where[key]}: no samples; an empty split cannot be used")
        if x.ndim == 3:
            arrays[key] = x.reshape(*x.shape, 1)
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise JalError(
            f"{where['x_test']}: inputs of shape {list(arrays['x_test'].shape[1:])} but training inputs of shape "
            f"{list(arrays['x_train'].shape[1:])}; train and test inputs must have one shape"
        )
    for split in ("train", "test"):
        x, y, key = arrays[f"x_{split}"], arrays[f"y_{split}"], f"y_{split}"
        if y.ndim != 1 or len(y) != len(x):
            raise JalError(f"{where[key]}: labels of shape {list(y.shape)} for {len(x)} inputs; give one label each")
        if y.dtype.kind not in "iu":
            raise JalError(f"{where[key]}: {y.dtype} labels; labels must be integers 0..C-1 (e.g. y.astype(int))")
        if y.min() < 0:
            raise JalError(f"{where[key]}: label {int(y.min())}; labels must be integers 0..C-1")
    largest = int(max(arrays["y_train"].max(), arrays["y_test"].max()))
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        key = "y_train" if arrays["y_train"].max() == largest else "y_test"
        raise JalError(
            f"{where[key]}: label {largest} with {num_classes} classes; raise `num_classes` or fix the labels"
        )
    if num_classes < 2:
        raise JalError(f"{where['y_train']}: only {num_classes} class; classification needs at least 2")
    for key in ("x_train", "x_test"):
        _check_finite(arrays[key], where[key])
    for key in ("y_train", "y_test"):
        arrays[key] = np.asarray(arrays[key], np.int32)
    warn_if_identical(arrays["x_train"], where["x_train"])
    warn_if_one_class(arrays["y_train"], where["y_train"])
    return arrays, num_classes


def warn_if_identical(inputs, where: str) -> None:
    """Warns when every input [N, ...] is the same: no score can tell the samples apart.

    Works on numpy and jax arrays; a block at a time, so any real data stops at the first.
    """
    for start in range(0, len(inputs), BLOCK):
        if not (inputs[start : start + BLOCK] == inputs[:1]).all():
            return
    if len(inputs) > 1:
        warnings.warn(f"{where}: all {len(inputs)} inputs are identical; no score can tell them apart", stacklevel=2)


def warn_if_one_class(labels: np.ndarray, where: str) -> None:
    """Warns when the training labels hold one class: a model trained on them knows no other."""
    if len(labels) > 1 and labels.min() == labels.max():
        warnings.warn(
            f"{where}: every training label is class {labels.min()}; a model trained on them predicts it alone",
            stacklevel=2,
        )


def _check_finite(x: np.ndarray, where: str) -> None:
    if x.dtype.kind != "f":
        return
    for start in range(0, len(x), BLOCK):  # a memmap is read a block at a time
        block = np.asarray(x[start : start + BLOCK])
        release(x)
        if not np.isfinite(block).all():
            index = start + int(np.flatnonzero(~np.isfinite(block).reshape(len(block), -1).all(axis=1))[0])
            raise JalError(f"{where}: input {index} holds NaN or inf; remove or repair it")


def pool_size_for(num_train: int, pool_size: int | None) -> int:
    """The pool's size: `pool_size`, or 10,000 (the reference's) or the whole training split if smaller."""
    if pool_size is None:
        return min(10_000, num_train)
    if not 0 < pool_size <= num_train:
        raise JalError(f"`pool_size` {pool_size} must be between 1 and the {num_train} training samples")
    return pool_size


def make_pool(num_train: int, pool_size: int | None = None, *, seed: int = 1) -> np.ndarray:
    """The pool: a seeded random subset of the training split, as the reference draws it (size: `pool_size_for`).

    Returns:
      int64 [pool_size] indices into the training split.
    """
    pool_size = pool_size_for(num_train, pool_size)
    return np.random.default_rng(seed).permutation(num_train)[:pool_size]
