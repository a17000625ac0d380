"""The model interface, and MC dropout for any Flax module as a vmap over dropout draws.

A `Model` is what training, scoring and the loop need of a classifier with dropout:

    params = model.init(key)
    logits = model.logits(params, x, key)                # training forward, dropout on
    log_probs = model.log_probs(params, x)               # [B, C], dropout off
    log_probs = model.mc_log_probs(params, x, keys, K)   # [B, K, C], K dropout draws

`mc_log_probs` takes one key per input ([B]), so that an input's samples depend on the
input's position in the pool and not on how the pool is chunked, or one key for every
input (consistent MC dropout: the same K networks for all inputs). Every model is a
frozen dataclass, so it can be a static argument of `jax.jit`.

The layers before a model's first dropout layer compute the same for all K draws, and
they are computed once per input, for any model, with nothing to declare: `jax.vmap`
batches only what depends on the batched dropout draws, so a prefix that draws no
randomness stays unbatched (a test checks it in the compiled program's FLOPs).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jal.errors import JalError

Params = Any  # a pytree of arrays


@dataclasses.dataclass(frozen=True)
class Model:
    """A classifier with MC dropout over inputs of `input_shape`, into `num_classes` classes.

    Subclasses implement `init`, `logits`, `forward` and `sample_noise`; the base class
    derives `log_probs` and the vmapped `mc_log_probs` from them. A model with a faster
    exact form overrides `mc_log_probs`.
    """

    input_shape: tuple[int, ...]
    num_classes: int

    def init(self, key: jax.Array) -> Params:
        """Fresh parameters."""
        raise NotImplementedError

    def logits(self, params: Params, x: jax.Array, key: jax.Array) -> jax.Array:
        """Training logits [B, C] of inputs [B, *input_shape], dropout drawn from `key`."""
        raise NotImplementedError

    def forward(self, params: Params, x: jax.Array, noise) -> jax.Array:
        """Logits [B, C] under one draw of `sample_noise` (for a batch of one), or with dropout off (None)."""
        raise NotImplementedError

    def sample_noise(self, key: jax.Array, mc_samples: int):
        """K dropout draws for one input, stacked on a leading axis."""
        raise NotImplementedError

    def log_probs(self, params: Params, x: jax.Array) -> jax.Array:
        """log p(y | x) [B, C] with dropout off."""
        return jax.nn.log_softmax(self.forward(params, x, None))

    def mc_log_probs(self, params: Params, x: jax.Array, keys: jax.Array, mc_samples: int) -> jax.Array:
        """log p(y | x, dropout draw k) [B, K, C]: the forward vmapped over inputs and their K draws.

        Args:
          params: the model's parameters.
          x: [B, *input_shape] inputs.
          keys: [B] one PRNG key per input, or a single key shared by every input.
          mc_samples: K.
        """

        def one_input(x_i, key):
            noise = self.sample_noise(key, mc_samples)
            return jax.vmap(lambda draw: self.forward(params, x_i[None], draw)[0])(noise)

        key_axis = None if keys.ndim == 0 else 0  # a shared key: the same K draws for every input
        return jax.nn.log_softmax(jax.vmap(one_input, in_axes=(0, key_axis))(x, keys))

    @classmethod
    def setting_fields(cls) -> list[dataclasses.Field]:
        """The model's own settings' fields: what `jal.models.build_model` takes besides the data's shapes."""
        skip = {"input_shape", "num_classes", "module"}
        return [f for f in dataclasses.fields(cls) if f.init and f.name not in skip]

    @property
    def settings(self) -> dict:
        """The model's own settings, by name."""
        return {f.name: getattr(self, f.name) for f in self.setting_fields()}

    def resolved_settings(self) -> dict:
        """`settings` as they apply here ("auto" choices resolved), for a run's record."""
        return self.settings


@dataclasses.dataclass(frozen=True)
class FlaxModel(Model):
    """Any Flax module with dropout on Flax's `dropout` RNG stream, as a `Model`.

    The module's `__call__(x, train)` returns logits [B, C], with dropout on when `train`
    is True. `jal.models.dropout.Dropout` is a drop-in for `flax.linen.Dropout` whose masks
    cost a bit per unit rather than a random float, which makes MC scoring of small
    models several times faster. No mutable collections (batch statistics): an
    MC-dropout model's forward must be a function of its parameters.
    """

    module: nn.Module = None

    def init(self, key: jax.Array) -> Params:
        variables = self.module.init(key, jnp.zeros((1, *self.input_shape), jnp.float32))
        if set(variables) != {"params"}:
            others = ", ".join(sorted(set(variables) - {"params"}))
            raise JalError(f"the model keeps mutable state ({others}); MC dropout needs a model without it")
        return variables["params"]

    def logits(self, params: Params, x: jax.Array, key: jax.Array) -> jax.Array:
        return self.forward(params, x, key)

    def forward(self, params: Params, x: jax.Array, noise) -> jax.Array:
        rngs = {} if noise is None else {"dropout": noise}
        return self.module.apply({"params": params}, x, train=noise is not None, rngs=rngs)

    def sample_noise(self, key: jax.Array, mc_samples: int) -> jax.Array:
        return jax.random.split(key, mc_samples)
