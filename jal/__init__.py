"""Bayesian active learning and data filtering with MC-dropout BALD scores in JAX."""
