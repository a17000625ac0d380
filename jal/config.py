"""Every setting of `jal run` and `jal filter` in one object, with every default, saved as config.json.

    config = RunConfig(model=ModelSpec("mlp", {"hidden_sizes": (256,)}), iterations=20)
    config = override(config, {"loop.mc_samples": 64})   # what a command-line flag does
    to_json(config) == to_json(from_json(RunConfig, to_json(config)))

The defaults are the reference experiment's (`RunConfig()`); `jal run --config
RUN_DIR/config.json [--flag value ...]` reads a saved one back and varies it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from jal.data import DataConfig
from jal.errors import JalError
from jal.filtering import FRACTIONS
from jal.loop import LoopConfig
from jal.models import Model, build_model, default_settings
from jal.stopping import StopConfig
from jal.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model by name (`jal.models.MODELS`) and its own settings; the data gives its shapes."""

    name: str = "lenet5"
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def full_settings(self) -> dict:
        """The model's settings with its defaults filled in (JSON values: tuples as lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in {**default_settings(self.name), **self.settings}.items()
        }

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Model:
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in self.settings.items()}
        return build_model(self.name, input_shape, num_classes, **settings)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """`jal run`: an active-learning experiment. The defaults are the reference's."""

    data: DataConfig = DataConfig()
    model: ModelSpec = ModelSpec()
    loop: LoopConfig = LoopConfig()  # its `model` is built from `model` and the data, and not saved
    initial: int | None = 60  # initial labels, drawn at random
    initial_per_class: int | None = None  # instead of `initial`: this many random labels of every class
    iterations: int = 100
    seed: int = 42
    filter_fraction: float = 0.0  # first remove this fraction of the pool: the lowest filter_estimator scores
    filter_estimator: str = "bald"
    stop: StopConfig = StopConfig()  # stopping rules: a target accuracy, a label budget, a plateau
    stream: bool = False  # keep the pool on the host and score it batch by batch (`jal.streamed`): pools beyond memory
    history_dtype: str = "float32"  # of pool_scores.npy (`jal.store.HISTORY_DTYPES`): float16 halves it on disk


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """`jal filter`: test accuracy after removing the least informative fractions of the pool."""

    data: DataConfig = DataConfig()
    model: ModelSpec = ModelSpec()
    train: TrainConfig = TrainConfig()
    initial: int = 60  # the scoring model's labels, drawn from the pool
    held_out: int | None = None  # else train the scoring model on this many training inputs outside the pool
    estimator: str = "bald"
    fractions: tuple[float, ...] = FRACTIONS
    mc_samples: int = 32
    seed: int = 42


def to_json(value) -> Any:
    """JSON values of a config: dataclasses and NamedTuples as objects, tuples as lists."""
    if dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, ModelSpec):
            fields["settings"] = value.full_settings()
        return {k: to_json(v) for k, v in fields.items()}
    if isinstance(value, LoopConfig):
        fields = value._asdict()
        del fields["model"]  # built from the run's ModelSpec
        fields["acquisition"] = value.acquisition_entry.name
        return {k: to_json(v) for k, v in fields.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: to_json(v) for k, v in value._asdict().items()}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(cls: type, data: Mapping, where: str = "config") -> Any:
    """The `cls` (a config dataclass or NamedTuple) of `to_json`'s output; unknown keys are errors."""
    if not isinstance(data, Mapping):
        raise JalError(f"{where}: {data!r} is not a JSON object of settings")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else list(cls._fields)
    unknown = set(data) - set(names)
    if unknown:
        raise JalError(f"{where}: unknown setting {', '.join(sorted(unknown))}; is it a jal config of this version?")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if (
            isinstance(kind, type)
            and (dataclasses.is_dataclass(kind) or hasattr(kind, "_fields"))
            and kind is not Model
        ):
            value = from_json(kind, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    if cls is ModelSpec:
        values["settings"] = dict(values.get("settings", {}))
    try:
        return cls(**values)
    except TypeError as e:
        raise JalError(f"{where}: {e}") from e


def get(config, path: str):
    """The setting at a dotted path: get(config, "loop.train.epochs")."""
    for name in path.split("."):
        config = config[name] if isinstance(config, Mapping) else getattr(config, name)
    return config


def override(config, changes: Mapping[str, Any]):
    """`config` with the settings at dotted paths replaced: override(config, {"loop.mc_samples": 64})."""
    for path, value in changes.items():
        config = _replace(config, path.split("."), value)
    return config


def _replace(config, names: list[str], value):
    head, *rest = names
    if isinstance(config, Mapping):
        return {**config, head: _replace(config[head], rest, value) if rest else value}
    new = _replace(getattr(config, head), rest, value) if rest else value
    if dataclasses.is_dataclass(config):
        return dataclasses.replace(config, **{head: new})
    return config._replace(**{head: new})
