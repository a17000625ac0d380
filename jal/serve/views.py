"""What the service's endpoints answer, as JSON values of one consistent state (no web framework here)."""

from __future__ import annotations

import time

import numpy as np

from jal.serve.project import Job, Project
from jal.serve.state import State

HISTOGRAM_BINS = 30


def image_url(index: int) -> str:
    return f"/api/samples/{index}/image"


def progress(job: Job | None, now: float) -> dict | None:
    """The round in training, or the last that failed: its elapsed time against the previous round's."""
    if job is None:
        return None
    elapsed = now - job.started
    fraction = None if job.expected is None or job.error else min(elapsed / max(job.expected, 1e-3), 0.99)
    return {"round": job.round, "elapsed": elapsed, "expected": job.expected, "fraction": fraction, "error": job.error}


def summary(project: Project) -> dict:
    state, job = project.state, project.job
    return {
        "project": project.directory.name,
        "pool_size": project.pool_size,
        "num_classes": project.num_classes,
        "acquisition": project.loop_config.acquisition_entry.name,
        "acquire": project.loop_config.acquire,
        "has_test_labels": project.samples.record["test_size"] > 0,
        "labelled": len(state.labelled),
        "round": state.round.number,
        "pending": len(state.pending),
        "can_undo": bool(state.labels) and state.labels[-1].round == state.round.number,
        "job": progress(job, time.time()),
    }


def proposals(state: State) -> dict:
    """The current round's proposals, best first, with their labels where given."""
    current = state.round
    scores = dict(zip(current.proposals, current.scores, strict=False))
    return {
        "round": current.number,
        "samples": [
            {"index": i, "score": scores.get(i), "image": image_url(i), "label": state.labelled.get(i)}
            for i in current.proposals
        ],
    }


def curve(state: State) -> dict:
    """Test accuracy against the labels each round's model trained on."""
    return {
        "points": [
            {"round": r.number, "labels": r.trained_on, "test_accuracy": r.test_accuracy, "test_nll": r.test_nll}
            for r in state.rounds
            if r.test_accuracy is not None
        ]
    }


def score_histogram(project: Project) -> dict:
    """The last trained round's pool scores: a histogram of the unlabelled samples and of the labelled ones.

    The proposals are marked one by one, at their scores; the labelled samples (all that
    were acquired) are counted in the same bins, to show where they fall now.
    """
    state = project.state
    trained = next((r for r in reversed(state.rounds) if r.number > 0), None)
    if trained is None:
        return {"round": None, "edges": [], "unlabelled": [], "labelled": [], "proposed": []}
    pool_scores = project.pool_scores(trained.number)
    labelled = np.zeros(len(pool_scores), bool)
    labelled[list(state.labelled)] = True
    edges = np.histogram_bin_edges(pool_scores, HISTOGRAM_BINS)
    return {
        "round": trained.number,
        "edges": edges.tolist(),
        "unlabelled": np.histogram(pool_scores[~labelled], edges)[0].tolist(),
        "labelled": np.histogram(pool_scores[labelled], edges)[0].tolist(),
        "proposed": [{"index": i, "score": s} for i, s in zip(trained.proposals, trained.scores, strict=True)],
    }


def history(state: State, limit: int) -> dict:
    """The last `limit` labels, newest first, each with the round that proposed it and its score then."""
    scores = {r.number: dict(zip(r.proposals, r.scores, strict=False)) for r in state.rounds}
    return {
        "total": len(state.labels),
        "labels": [
            {
                "index": label.index,
                "label": label.label,
                "round": label.round,
                "score": scores[label.round].get(label.index),
                "time": label.time,
                "image": image_url(label.index),
            }
            for label in reversed(state.labels[-limit:])
        ],
    }
