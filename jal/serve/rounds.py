"""One round of a labelling project: `jal.loop.propose` on the labels a person has given so far.

A fresh model trains on those labels, scores the whole pool (and the test split, for the
learning curve) and chooses what to label next. The state it runs on is built from the
labels alone, with the round's number as its iteration, so a round's randomness depends
on the project's seed and the round, and the same labels give the same proposals.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jal import loop


class Proposal(NamedTuple):
    indices: np.ndarray  # [k] pool indices to label next, best first
    scores: np.ndarray  # [k] their scores
    pool_scores: np.ndarray  # [P] the score of every pool sample
    test_accuracy: float | None  # None where there are no test labels
    test_nll: float | None


def propose(data: loop.Data, config: loop.LoopConfig, labels: dict[int, int], *, number: int, seed: int) -> Proposal:
    """Round `number`'s model trained on `labels` (pool index -> class, in the order given), and its choice.

    It proposes `config.acquire` samples, or as many as are left unlabelled. Raises
    `jal.loop.Diverged` where training diverged.
    """
    pool_size, num_classes = len(data.pool_inputs), config.model.num_classes
    state = loop.init(jax.random.key(seed), pool_size, list(labels), list(labels.values()), num_classes=num_classes)
    config = config._replace(acquire=min(config.acquire, pool_size - len(labels)))
    indices, info = loop.propose(state._replace(iteration=jnp.int32(number)), data, config)
    loop.check_trained(info, num_classes)
    tested = len(data.test_labels) > 0
    return Proposal(
        np.asarray(indices),
        np.asarray(info.acquired_scores),
        np.asarray(info.pool_scores),
        float(info.test_accuracy) if tested else None,
        float(info.test_nll) if tested else None,
    )
