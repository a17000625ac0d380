"""Stopping rules: each stops where it should, is recorded, and a resumed run stops where the whole one did."""

import dataclasses

import pytest

from jal import experiment, store
from jal.errors import JalError
from jal.stopping import StopConfig, check, reason
from tests.test_resume import interrupt_after, same_run, small_config


def rounds(*accuracies, labels=10, step=5):
    return [{"test_accuracy": a, "num_labeled": labels + i * step} for i, a in enumerate(accuracies)]


def test_target_accuracy_stops_at_the_first_round_that_reaches_it():
    rule = StopConfig(target_accuracy=0.9)
    assert reason(rule, rounds(0.5, 0.89)) is None
    assert "0.9000 reached the target 0.9" in reason(rule, rounds(0.5, 0.89, 0.9))


def test_max_labels_stops_once_a_model_trained_on_the_budget():
    rule = StopConfig(max_labels=20)
    assert reason(rule, rounds(0.1, 0.2)) is None  # 10, 15 labels
    assert "20 labels reached the budget of 20" in reason(rule, rounds(0.1, 0.2, 0.3))


def test_plateau_waits_for_n_rounds_without_a_new_best():
    rule = StopConfig(plateau=2, plateau_delta=0.01)
    assert reason(rule, rounds(0.5, 0.6, 0.6)) is None  # only one round since the best
    assert reason(rule, rounds(0.5, 0.6, 0.61, 0.605)) is not None  # +0.01 is not more than the delta
    assert reason(rule, rounds(0.5, 0.6, 0.59, 0.62)) is None  # a new best by more than the delta
    assert "in 2 rounds" in reason(rule, rounds(0.5, 0.6, 0.59, 0.58))
    assert reason(StopConfig(), rounds(0.5, 0.5, 0.5, 0.5)) is None  # no rule, no stop


@pytest.mark.parametrize(
    "rule, name",
    [(StopConfig(target_accuracy=1.5), "target_accuracy"), (StopConfig(max_labels=0), "max_labels"),
     (StopConfig(plateau=0), "plateau"), (StopConfig(plateau_delta=-1.0), "plateau_delta")],
)  # fmt: skip
def test_impossible_rules_are_refused(rule, name):
    with pytest.raises(JalError, match=f"`{name}`"):
        check(rule)


@pytest.mark.slow
def test_a_run_stops_by_its_rule_records_why_and_resumes_to_the_same_stop(digits, tmp_path):
    config = dataclasses.replace(small_config(digits), iterations=6, stop=StopConfig(max_labels=11))
    experiment.run(config, tmp_path / "whole")
    metrics = store.read_metrics(tmp_path / "whole")
    assert [m["num_labeled"] for m in metrics] == [10, 11]  # stopped after the round trained on 11 labels
    status = store.read_status(tmp_path / "whole")
    assert status["state"] == "finished" and "11 labels reached the budget of 11" in status["stopped"]
    with pytest.raises(JalError, match="interrupted"):
        experiment.run(config, tmp_path / "cut", on_round=interrupt_after(1))
    experiment.run(config, tmp_path / "cut", resume=True)
    same_run(tmp_path / "whole", tmp_path / "cut")
    assert store.read_status(tmp_path / "cut")["stopped"] == status["stopped"]
