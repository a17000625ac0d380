"""The samples a project labels: any dataset jal reads, with or without labels for its pool.

The person is the oracle, so the training split's labels are never read as labels: an
array dataset (`.npz`, a folder of `.npy` files) may leave `y_train` out, and also its test
split (`x_test` with `y_test`), which then gives no learning curve. With no labels at all,
the number of classes comes from `--num-classes`. Every array present is validated as
`jal.data` validates a complete dataset.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jal import loop
from jal.data import DataConfig, Dataset, checked_splits, from_training, identity, load_dataset, make_pool
from jal.data.arrays import KEYS, file_md5
from jal.errors import JalError


class Samples(NamedTuple):
    """A project's pool: what to show the person, what the model sees, and the test split to evaluate on."""

    raw: np.ndarray  # [P, *input_shape] the pool's inputs as the dataset holds them, to render
    data: loop.Data  # normalised, on the device; a test split of no samples where the data have no test labels
    num_classes: int
    record: dict  # what the settings resolved to: the data's source, input shape, classes, pool size


def load_samples(config: DataConfig) -> Samples:
    """The pool `config` draws from its dataset, and the dataset's test split where it has one."""
    dataset = _unlabelled_arrays(config) if _lacks_labels(config) else load_dataset(config)
    indices = make_pool(len(dataset.x_train), config.pool_size, seed=config.pool_seed)
    raw = np.asarray(dataset.x_train[indices])
    normalize = dataset.normalization.apply
    data = loop.Data(
        jnp.asarray(normalize(raw)), jnp.asarray(normalize(dataset.x_test)), jnp.asarray(dataset.y_test, jnp.int32)
    )
    record = {
        "data": dataset.source,
        "input_shape": list(dataset.input_shape),
        "num_classes": dataset.num_classes,
        "pool_size": len(indices),
        "test_size": len(dataset.x_test),
    }
    return Samples(raw, data, dataset.num_classes, record)


def _lacks_labels(config: DataConfig) -> bool:
    """Whether `config` names an array dataset without pool labels or without a test split."""
    return config.path is not None and not set(KEYS) <= set(_keys(Path(config.path)))


def _keys(path: Path) -> list[str]:
    if path.is_dir():
        return [key for key in KEYS if (path / f"{key}.npy").is_file()]
    try:
        with np.load(path, allow_pickle=False) as archive:
            return list(archive.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return list(KEYS)  # not readable: load_dataset says what is wrong with it


def _unlabelled_arrays(config: DataConfig) -> Dataset:
    """An array dataset with `x_train` and perhaps `x_test` and `y_test`, validated by `checked_splits`.

    The arrays missing are stood in for while the present ones are checked: labels of every
    class for the training inputs, one training input as the test split. Then the stand-ins go.
    """
    path = Path(config.path)
    arrays, where = _read(path)
    if "x_train" not in arrays:
        load_dataset(config)  # says which keys the file lacks and how to fix it
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise JalError(f"{path}: give x_test with its labels y_test for a learning curve, or neither")
    has_test = "x_test" in arrays
    num_classes = config.num_classes
    if num_classes is None:
        if not has_test:
            raise JalError(f"{path}: no labels to count the classes by; give --num-classes")
        num_classes = int(np.max(arrays["y_test"])) + 1
    x_train = arrays["x_train"]
    stand_ins = {
        "y_train": np.arange(len(x_train)) % num_classes,
        "x_test": x_train[:1],
        "y_test": np.zeros(1, np.int64),
    }
    where = {**dict.fromkeys(KEYS, str(path)), **where}
    arrays, num_classes = checked_splits({**stand_ins, **arrays}, where, num_classes)
    x_train = arrays["x_train"]
    if not has_test:
        arrays["x_test"], arrays["y_test"] = x_train[:0], np.zeros(0, np.int32)
    normalization = from_training(x_train) if config.normalize else identity(x_train.shape[-1])
    files = sorted(path.glob("*.npy")) if path.is_dir() else [path]
    source = {"kind": "arrays", "path": str(path.absolute()), "md5": {f.name: file_md5(f) for f in files}}
    return Dataset(x_train, None, arrays["x_test"], arrays["y_test"], num_classes, normalization, source)


def _read(path: Path) -> tuple[dict, dict]:
    """The arrays of KEYS that a .npz file or .npy folder holds, and where each is, for messages."""
    arrays, where = {}, {}
    try:
        if path.is_dir():
            for key in _keys(path):
                where[key] = str(path / f"{key}.npy")
                arrays[key] = np.load(where[key], mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                for key in set(KEYS) & set(archive.files):
                    arrays[key], where[key] = archive[key], f"{path}, key {key}"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise JalError(f"{path}: cannot read it ({e}); the file is corrupt, truncated or not numpy's") from e
    return arrays, where
