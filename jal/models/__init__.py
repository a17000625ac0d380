"""Models: the interface, the generic Flax path, and the shipped models by name.

    model = build_model("mlp", input_shape=(64,), num_classes=10, hidden_sizes=(256,))

Any Flax module with dropout on the `dropout` RNG stream works through `FlaxModel`; the
names below are the ones `jal run --model` knows.
"""

from __future__ import annotations

from jal.errors import JalError
from jal.models.base import FlaxModel, Model, Params
from jal.models.cnn import CNNModel
from jal.models.lenet5 import LeNet5
from jal.models.mlp import MLPModel

MODELS: dict[str, type[Model]] = {"lenet5": LeNet5, "mlp": MLPModel, "cnn": CNNModel}

__all__ = ["MODELS", "FlaxModel", "Model", "Params", "build_model", "default_settings"]


def default_settings(name: str) -> dict:
    """The settings `name` takes besides the data's shapes, with their defaults."""
    return {f.name: f.default for f in _model_class(name).setting_fields()}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **settings) -> Model:
    """The model `name` for inputs of `input_shape` and `num_classes` classes, with `settings` (else defaults)."""
    unknown = set(settings) - set(default_settings(name))
    if unknown:
        names = ", ".join(sorted(unknown))
        raise JalError(f"model {name} has no setting {names}; it takes {', '.join(default_settings(name)) or 'none'}")
    return _model_class(name)(tuple(input_shape), int(num_classes), **settings)


def _model_class(name: str) -> type[Model]:
    if name not in MODELS:
        raise JalError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]
