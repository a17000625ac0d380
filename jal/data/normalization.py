"""Input normalisation: (x / scale - mean) / std, with statistics per channel or feature."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jal.data.host import release

BLOCK = 65_536  # inputs read at a time when computing statistics: a memmap is never read whole


class Normalization(NamedTuple):
    """(x / scale - mean) / std over the last axis (an image's channels, a vector's features).

    Works on numpy and jax arrays alike, so raw inputs can be normalised on the device
    (`jal.scoring.score_pool`).
    """

    mean: np.ndarray  # [last axis] or [1], float32
    std: np.ndarray  # [last axis] or [1], float32, positive
    scale: float = 1.0  # raw values are divided by it first: 255 for bytes

    def apply(self, x):
        """float32 normalised inputs of the same shape as `x`."""
        return (x.astype(np.float32) / self.scale - self.mean) / self.std


def identity(num_features: int = 1) -> Normalization:
    """Inputs used as they are (cast to float32)."""
    return Normalization(np.zeros(num_features, np.float32), np.ones(num_features, np.float32), 1.0)


def from_training(x_train) -> Normalization:
    """Mean and standard deviation of every channel or feature over the training inputs [N, ..., F].

    Bytes are first scaled to [0, 1]. A constant feature gets std 1, so that it maps to 0
    rather than dividing by zero. Read in blocks and accumulated in float64; a memmap's pages
    are released block by block (`jal.data.host`).
    """
    scale = 255.0 if np.dtype(x_train.dtype) == np.uint8 else 1.0
    features = x_train.shape[-1]
    total, total_sq, count = np.zeros(features), np.zeros(features), 0
    for start in range(0, len(x_train), BLOCK):
        block = np.asarray(x_train[start : start + BLOCK], np.float64).reshape(-1, features) / scale
        release(x_train)  # a memmap's pages: one block resident at a time
        total += block.sum(axis=0)
        total_sq += np.square(block).sum(axis=0)
        count += len(block)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return Normalization(mean.astype(np.float32), std.astype(np.float32), scale)
