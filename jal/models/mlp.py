"""A multilayer perceptron with MC dropout, for feature vectors (embeddings, tabular data).

Dense -> ReLU -> [dropout -> Dense -> ReLU] per further hidden layer -> dropout -> Dense C,
on inputs of any shape, flattened.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from jal.errors import JalError
from jal.models.base import FlaxModel
from jal.models.dropout import Dropout


class MLP(nn.Module):
    hidden_sizes: tuple[int, ...]
    num_classes: int
    dropout_rate: float
    dropout: type[nn.Module] = Dropout  # or flax.linen.Dropout: the same distribution, masks from random floats

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(nn.Dense(self.hidden_sizes[0])(x.reshape(x.shape[0], -1)))
        for size in self.hidden_sizes[1:]:
            x = nn.relu(nn.Dense(size)(self.dropout(self.dropout_rate)(x, deterministic=not train)))
        return nn.Dense(self.num_classes)(self.dropout(self.dropout_rate)(x, deterministic=not train))


@dataclasses.dataclass(frozen=True)
class MLPModel(FlaxModel):
    """`MLP` over inputs of any shape (flattened).

    Attributes:
      hidden_sizes: the widths of the hidden layers (at least one).
      dropout_rate: the dropout rate after every hidden layer, in [0, 1).
    """

    hidden_sizes: tuple[int, ...] = (128, 128)
    dropout_rate: float = 0.5

    def __post_init__(self):
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise JalError(f"hidden sizes {list(self.hidden_sizes)}: give at least one layer, each at least 1 wide")
        if not 0 <= self.dropout_rate < 1:
            raise JalError(f"dropout rate {self.dropout_rate} must be in [0, 1)")
        hidden = tuple(int(size) for size in self.hidden_sizes)
        object.__setattr__(self, "hidden_sizes", hidden)
        object.__setattr__(self, "module", MLP(hidden, self.num_classes, float(self.dropout_rate)))
