"""The device benchmark's budget on the CPU: what it cuts it names, and the JSON holds what it measured."""

import json
import sys
import time

import pytest

pytest.importorskip(
    "torch",
    reason="PyTorch is not installed (JAL_WITH_TORCH=1 bin/test installs it): the benchmark compares against it",
)

from benchmarks import device  # noqa: E402  (needs torch)


def test_without_budget_every_part_is_cut_and_named(tmp_path, monkeypatch):
    out = tmp_path / "device.json"
    monkeypatch.setattr(sys, "argv", ["device", "--budget-s", "0", "--out", str(out)])
    device.main()
    report = json.loads(out.read_text())
    assert report["device"]["backend"] == "cpu" and report["device"]["devices"] == ["cpu:0"]
    assert report["device"]["versions"]["jax"] and report["device"]["versions"]["torch"]
    assert not report["complete"] and [why.split(":")[0] for why in report["cut"]] == [
        "chunk_sizes",
        "side_by_side",
        "experiment",
    ]


@pytest.mark.slow
def test_the_experiment_stops_before_a_round_that_would_end_past_its_deadline():
    result = device.reference_experiment(iterations=1, pool_size=100, deadline=time.perf_counter() + 1, minimum_s=0)
    assert (result["rounds_planned"], result["rounds_done"], result["final_num_labeled"]) == (2, 1, 60)
    assert result["cut"] == ["stopped after 1 of 2 rounds: the next would end past the budget"]
    assert result["record"]["chunk_size"] == 32 and result["record"]["backend"] == "cpu"
    assert result["median_round_s"] is None and 0 < result["final_test_accuracy"] <= 1
