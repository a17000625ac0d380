"""Bayesian active learning and data filtering with MC-dropout BALD scores in JAX."""

from jal.scoring import mc_log_probs, score_pool

__all__ = ["mc_log_probs", "score_pool"]
