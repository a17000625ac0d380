"""Datasets from TensorFlow Datasets by name, read from a prepared data folder through `tfds.data_source`.

No TensorFlow is needed to read, and tensorflow-datasets is imported only here.
"""

from __future__ import annotations

import os

import numpy as np

from jal.data.dataset import Dataset, checked_splits
from jal.data.normalization import from_training, identity
from jal.errors import JalError


def load_tfds(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    normalize: bool = True,
) -> Dataset:
    """The train and test splits of the prepared TFDS dataset `name` (nothing is downloaded).

    Inputs and labels are the dataset's supervised keys (else "image" and "label").
    MNIST keeps the reference's normalisation; other datasets are standardised with the
    training split's statistics unless `normalize` is False.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise JalError("reading TFDS needs tensorflow-datasets: pip install 'jal[tfds]'") from e

    where = f"TFDS {name} in {data_dir or 'the default TFDS folder'}"
    try:
        keys = tfds.builder(name, data_dir=data_dir).info.supervised_keys or ("image", "label")
    except Exception as e:  # tfds raises several types for a missing or broken dataset
        raise JalError(f"{where}: {e}; prepare it with tfds or name another `tfds`") from e
    input_key, label_key = keys
    arrays, names = {}, {}
    for split in ("train", "test"):
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
            records = [source[i] for i in range(len(source))]
        except Exception as e:  # tfds raises several types for a missing or broken dataset
            raise JalError(f"{where} ({split}): {e}; prepare it with tfds or name another `tfds`") from e
        if not records:
            raise JalError(f"{where}: the {split} split is empty; an empty split cannot be used")
        arrays[f"x_{split}"] = np.stack([np.asarray(r[input_key]) for r in records])
        arrays[f"y_{split}"] = np.asarray([r[label_key] for r in records])
        names[f"x_{split}"], names[f"y_{split}"] = f"{where}, {split} {input_key}", f"{where}, {split} {label_key}"
    arrays, num_classes = checked_splits(arrays, names, num_classes)
    if not normalize:
        normalization = identity(arrays["x_train"].shape[-1])
    elif name == "mnist":
        from jal.data.mnist import NORMALIZATION as normalization
    else:
        normalization = from_training(arrays["x_train"])
    source = {"kind": "tfds", "name": name, "path": None if data_dir is None else str(data_dir)}
    return Dataset(
        arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], num_classes, normalization, source
    )
