"""Data: any dataset as arrays (.npz, a folder of .npy files), TFDS by name, MNIST's IDX files.

    dataset = load_dataset(DataConfig(path="embeddings.npz"))
    pool = make_pool(len(dataset.x_train), 10_000, seed=1)
    x = dataset.normalization.apply(dataset.x_train[pool])   # float32, ready for a model

Every loader validates what it reads and raises a one-line `JalError` naming the file and
key; `jal.data.tfds` imports tensorflow-datasets only when TFDS is read.
"""

from __future__ import annotations

import dataclasses

from jal.data.dataset import Dataset, checked_splits, make_pool, pool_size_for
from jal.data.normalization import Normalization, from_training, identity
from jal.errors import JalError

__all__ = [
    "DataConfig",
    "Dataset",
    "Normalization",
    "checked_splits",
    "from_training",
    "identity",
    "load_dataset",
    "make_pool",
    "pool_size_for",
]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where a run's data comes from, and how its pool is drawn.

    At most one source: `path` (a .npz file or a folder of .npy files), `mnist_dir` (the
    four MNIST IDX files), `tfds` (a prepared TFDS dataset by name, in `tfds_data_dir`).
    None of them: MNIST from $JAL_MNIST_DIR, the download cache, a clone's `data/mnist`,
    or a download (`jal.data.mnist.load_mnist`).
    """

    path: str | None = None
    mnist_dir: str | None = None
    tfds: str | None = None
    tfds_data_dir: str | None = None
    num_classes: int | None = None  # else the labels' largest + 1
    normalize: bool = True  # standardise inputs (MNIST: the reference's constants); else use them as they are
    pool_size: int | None = None  # else 10,000, or the whole training split if smaller
    pool_seed: int = 1

    SOURCES = ("path", "mnist_dir", "tfds", "tfds_data_dir")  # the fields that say where the data is

    def __post_init__(self):
        named = [name for name in ("path", "mnist_dir", "tfds") if getattr(self, name) is not None]
        if len(named) > 1:
            raise JalError(f"data from {' and '.join(named)} at once; name one source")
        if self.tfds_data_dir is not None and named and named != ["tfds"]:
            raise JalError(f"`tfds_data_dir` is for TFDS data, not with `{named[0]}`; name one source")


def load_dataset(config: DataConfig) -> Dataset:
    """The dataset `config` names, validated."""
    if config.path is not None:
        from jal.data.arrays import load_arrays

        return load_arrays(config.path, num_classes=config.num_classes, normalize=config.normalize)
    if config.tfds is not None or config.tfds_data_dir is not None:
        from jal.data.tfds import load_tfds

        name = config.tfds or "mnist"
        return load_tfds(name, config.tfds_data_dir, num_classes=config.num_classes, normalize=config.normalize)
    from jal.data.mnist import load_mnist

    dataset = load_mnist(config.mnist_dir)
    if config.num_classes is not None:
        if config.num_classes < dataset.num_classes:
            raise JalError(f"MNIST has {dataset.num_classes} classes; `num_classes` must be at least that")
        dataset = dataset._replace(num_classes=config.num_classes)
    if not config.normalize:
        dataset = dataset._replace(normalization=identity())
    return dataset
