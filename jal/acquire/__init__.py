"""Acquisitions: how the next samples to label are chosen, one registry entry each.

An `Acquisition` is a score of every input, computed from MC log-probabilities
[N, K, C], and optionally its own way to select a batch from the pool (else the top k of
the scores, or a stochastic draw from them). `ACQUISITIONS` holds the shipped ones; the
loop and the command line read it and never branch on names, so adding one means adding
an entry here. A user's own works the same way through the Python API:

    def closest_to_half(log_probs, targets):  # a score: higher is chosen first
        return -abs(jnp.exp(log_probs).mean(1).max(-1) - 0.5)

    LoopConfig(acquisition=Acquisition("half", score=closest_to_half))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax

from jal.acquire.batchbald import batchbald
from jal.acquire.epig import epig
from jal.acquire.estimators import ESTIMATORS, bald
from jal.acquire.sampling import SAMPLINGS, choose, random_scores, top_k_unlabeled
from jal.checks import check_sizes
from jal.errors import JalError

__all__ = ["ACQUISITIONS", "ESTIMATORS", "SAMPLINGS", "Acquisition", "check_estimator", "choose", "resolve"]


class Acquisition(NamedTuple):
    """One way to choose what to label next.

    Attributes:
      name: what runs record as the acquisition.
      score: (log_probs [N, K, C], targets [T, K, C] or None) -> [N], higher is more
        informative; recorded for every pool and test sample. Jit-traceable.
      select: None to choose by `score` (top k, or a draw under the loop's `sampling`), or
        (key, log_probs [P, K, C], scores [P], labeled [P] bool, k, config) -> [k] pool
        indices, never labeled ones; `config` is the loop's settings. Jit-traceable, k static.
      consistent: needs the same K dropout masks for every input (joint quantities).
      uses_targets: `score` reads `targets`: the log-probabilities of `config.epig_targets`
        pool inputs drawn at random each round.
      score_name: what the recorded score is (default: `name`).
      min_mc_samples: the fewest MC samples K that make `score` mean anything: 2 for a
        disagreement between the K samples (BALD, EPIG, ...), which one sample makes 0.
      select_reads_log_probs: `select` reads `log_probs`; False: it may be given None, so
        it works on a pool scored batch by batch that keeps no log-probabilities
        (`jal.streamed`).
    """

    name: str
    score: Callable[[jax.Array, jax.Array | None], jax.Array]
    select: Callable | None = None
    consistent: bool = False
    uses_targets: bool = False
    score_name: str | None = None
    min_mc_samples: int = 1
    select_reads_log_probs: bool = True

    @property
    def recorded_score(self) -> str:
        return self.score_name or self.name

    @property
    def needs_pool_log_probs(self) -> bool:
        """Whether a round must keep the pool's log-probabilities [P, K, C] (for targets or for `select`)."""
        return self.uses_targets or (self.select is not None and self.select_reads_log_probs)

    def check_mc_samples(self, mc_samples: int) -> None:
        """Refuses a K that makes every score of this acquisition meaningless."""
        if mc_samples < self.min_mc_samples:
            raise JalError(
                f"`mc_samples` {mc_samples} is too few for {self.name}: it scores disagreement between MC samples, "
                f"and one sample has none (every score is 0); use at least {self.min_mc_samples}"
            )


def per_input(estimator: Callable[[jax.Array], jax.Array]) -> Callable:
    """A score from an estimator of one input at a time (`jal.acquire.estimators`)."""
    return lambda log_probs, targets: estimator(log_probs)


def _epig_score(log_probs, targets):
    return epig(log_probs, target_log_probs=targets)


def _batchbald_select(key, log_probs, scores, labeled, k, config):
    return batchbald(log_probs, k, key=key, joint_samples=config.joint_samples, excluded=labeled)[0]


def _random_select(key, log_probs, scores, labeled, k, config):
    return top_k_unlabeled(random_scores(key, scores.shape[0]), labeled, k)[0]


_bald = per_input(bald)
# The estimators of disagreement between the K MC samples; predictive entropy and the
# confidence scores of the mean predictive mean something with one sample.
_DISAGREEMENT = ("bald", "variation_ratio", "mean_std")
ACQUISITIONS: dict[str, Acquisition] = {
    **{
        name: Acquisition(name, per_input(estimator), min_mc_samples=2 if name in _DISAGREEMENT else 1)
        for name, estimator in ESTIMATORS.items()
    },
    "epig": Acquisition("epig", _epig_score, consistent=True, uses_targets=True, min_mc_samples=2),
    # BatchBALD chooses the batch itself; its first step is BALD, the score it records.
    "batchbald": Acquisition(
        "batchbald", _bald, _batchbald_select, consistent=True, score_name="bald", min_mc_samples=2
    ),
    # Random acquisition records BALD, so its informativeness compares with a BALD run's;
    # its choice needs no score, so one sample is enough.
    "random": Acquisition("random", _bald, _random_select, score_name="bald", select_reads_log_probs=False),
}


def resolve(acquisition: str | Acquisition) -> Acquisition:
    """The registry's entry of a name, or an `Acquisition` as it is."""
    if isinstance(acquisition, Acquisition):
        return acquisition
    if acquisition not in ACQUISITIONS:
        raise JalError(f"unknown acquisition {acquisition!r}; choose one of {', '.join(ACQUISITIONS)}")
    return ACQUISITIONS[acquisition]


def check_estimator(estimator: str, mc_samples: int) -> None:
    """Refuses an unknown estimator, and a K too few for it (its `ACQUISITIONS` entry's `min_mc_samples`)."""
    if estimator not in ESTIMATORS:
        raise JalError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    ACQUISITIONS[estimator].check_mc_samples(mc_samples)


def select(acquisition: Acquisition, key, log_probs, scores, labeled, k: int, config) -> jax.Array:
    """k pool indices under `acquisition`: its own selection, else by its scores under the loop's sampling."""
    check_sizes(k=k)
    if acquisition.select is not None:
        return acquisition.select(key, log_probs, scores, labeled, k, config)
    return choose(key, scores, labeled, k, sampling=config.sampling, temperature=config.temperature)[0]
