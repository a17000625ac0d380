"""Bayesian active learning and data filtering with MC-dropout BALD scores, in JAX.

The public face; every name is imported on first use, so that `import jal` (or a figure
module) does not load the training stack.

    import jal
    model = jal.build_model("mlp", input_shape=(64,), num_classes=10)
    learner = jal.ActiveLearner(model, pool, initial_indices=idx, initial_labels=y)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # models
    "Model": "jal.models",
    "FlaxModel": "jal.models",
    "build_model": "jal.models",
    # data
    "DataConfig": "jal.data",
    "Dataset": "jal.data",
    "Normalization": "jal.data",
    "load_dataset": "jal.data",
    "make_pool": "jal.data",
    # scoring and acquisition
    "mc_log_probs": "jal.scoring",
    "log_probs": "jal.scoring",
    "score_pool": "jal.scoring",
    "Acquisition": "jal.acquire",
    "ACQUISITIONS": "jal.acquire",
    "ESTIMATORS": "jal.acquire",
    # the loop, training, the learner
    "LoopConfig": "jal.loop",
    "LoopState": "jal.loop",
    "StepInfo": "jal.loop",
    "Data": "jal.loop",
    "TrainConfig": "jal.train",
    "ActiveLearner": "jal.learner",
    # recipes
    "RunConfig": "jal.config",
    "FilterConfig": "jal.config",
    "ModelSpec": "jal.config",
    "run": "jal.experiment",
    "filter_pool": "jal.experiment",
    "analyze_run": "jal.experiment",
    "JalError": "jal.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jal' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
