"""A labelling project's settings (`jal serve`), with their defaults, saved in its config.json.

The data, model and training settings are `jal run`'s; a person labels, so there is no
iteration count, initial label set or stopping rule: the first round proposes `initial`
random pool samples, and every later round trains a fresh model on the labels so far and
proposes the `loop.acquire` samples its acquisition scores highest.
"""

from __future__ import annotations

import dataclasses

from jal.config import ModelSpec
from jal.data import DataConfig
from jal.loop import LoopConfig


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    data: DataConfig = DataConfig()
    model: ModelSpec = ModelSpec()
    loop: LoopConfig = LoopConfig(acquire=10)  # its `model` is built from `model` and the data, and not saved
    initial: int = 20  # random pool samples proposed before there is a model to choose them
    seed: int = 42  # of the initial samples, training, scoring and stochastic choices
