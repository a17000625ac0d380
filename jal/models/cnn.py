"""A small CNN with MC dropout for colour images, such as the 32x32 CIFAR-10 of the BatchBALD and EPIG papers.

[conv 3x3 (32) -> ReLU] x 2 -> max-pool 2 -> [conv 3x3 (64) -> ReLU] x 2 -> max-pool 2
-> flatten -> Dense 256 -> ReLU -> dropout -> Dense 128 -> ReLU -> dropout -> Dense C.

Its dropout sits in the classifier, so MC scoring computes the convolutional stack and
the first dense layer once per input and only the last two dense layers K times
(`jal.models.base`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from jal.errors import JalError
from jal.models.base import FlaxModel
from jal.models.convs import check_conv, conv_general_dilated, resolve_conv
from jal.models.dropout import Dropout

CHANNELS = (32, 64)
DENSE = (256, 128)


class CNN(nn.Module):
    num_classes: int
    dropout_rate: float
    conv: str = "auto"  # "auto", "im2col" or "xla" (`jal.models.convs`)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        convolve = conv_general_dilated(resolve_conv(self.conv, native=False))
        for channels in CHANNELS:
            for _ in range(2):
                x = nn.relu(nn.Conv(channels, (3, 3), padding="SAME", conv_general_dilated=convolve)(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(DENSE[0])(x.reshape(x.shape[0], -1)))
        x = nn.relu(nn.Dense(DENSE[1])(Dropout(self.dropout_rate)(x, deterministic=not train)))
        return nn.Dense(self.num_classes)(Dropout(self.dropout_rate)(x, deterministic=not train))


@dataclasses.dataclass(frozen=True)
class CNNModel(FlaxModel):
    """`CNN` over images [H, W, C] with H and W divisible by 4.

    Attributes:
      dropout_rate: the rate of both dropout layers, in [0, 1).
      conv: "auto" (im2col on CPU, XLA's convolution elsewhere), "im2col" or "xla".
    """

    dropout_rate: float = 0.5
    conv: str = "auto"

    def __post_init__(self):
        if len(self.input_shape) != 3 or self.input_shape[0] % 4 or self.input_shape[1] % 4:
            shape = "x".join(map(str, self.input_shape))
            raise JalError(f"the cnn takes images HxWxC with H and W divisible by 4, not {shape}; use `model` mlp")
        if not 0 <= self.dropout_rate < 1:
            raise JalError(f"dropout rate {self.dropout_rate} must be in [0, 1)")
        if check_conv(self.conv) == "native":
            raise JalError("conv 'native' is lenet5's; the cnn takes auto, im2col or xla")
        object.__setattr__(self, "module", CNN(self.num_classes, float(self.dropout_rate), self.conv))

    def resolved_settings(self) -> dict:
        return {**self.settings, "conv": resolve_conv(self.conv, native=False)}
