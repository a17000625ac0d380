"""jal.compare on fixed synthetic run directories (config.json and metrics.jsonl only) with known answers."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from jal import compare, figures
from jal.errors import JalError

MD5 = {"x_train.npy": "aa", "y_train.npy": "bb", "x_test.npy": "cc", "y_test.npy": "dd"}


def write_run(directory: Path, accuracy, *, acquisition="bald", seed=1, initial=20, acquire=10, md5=MD5,
              data_path="/data/digits", **top) -> Path:  # fmt: skip
    """A run directory as jal writes it, as far as jal.compare reads it: labels initial, initial + acquire, ..."""
    directory.mkdir(parents=True)
    config = {
        "data": {"path": data_path, "mnist_dir": None, "tfds": None, "pool_seed": 1},
        "model": {"name": "mlp", "settings": {"hidden_sizes": [128, 128], "dropout_rate": 0.5}},
        "loop": {"acquisition": acquisition, "acquire": acquire, "mc_samples": 32, "train": {"learning_rate": 2e-3}},
        "initial": initial,
        "iterations": len(accuracy) - 1,
        "seed": seed,
        "filter_fraction": 0.0,
        **top,
        "record": {"data": {"kind": "arrays", "path": data_path, "md5": md5}, "input_shape": [64], "num_classes": 10},
    }
    (directory / "config.json").write_text(json.dumps(config))
    lines = [{"iteration": i, "num_labeled": initial + acquire * i, "test_accuracy": a} for i, a in enumerate(accuracy)]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return directory


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# Labels to reach an accuracy ------------------------------------------------------------------------------------

# Labels 20, 30, 40, 50, 60. Seed 3 never reaches 90%; 0.95 is reached exactly (>=) by seed 2 at 50.
CURVES = {
    1: [0.50, 0.70, 0.91, 0.93, 0.96],  # 90% at 40, 95% at 60
    2: [0.60, 0.92, 0.94, 0.95, 0.97],  # 90% at 30, 95% at 50
    3: [0.50, 0.60, 0.70, 0.80, 0.85],  # never
}


@pytest.fixture
def reach_group(tmp_path) -> compare.Group:
    dirs = [write_run(tmp_path / f"bald-seed{s}", curve, seed=s) for s, curve in CURVES.items()]
    (group,) = compare.compare(compare.load_runs(dirs), at=(0.9, 0.95, 0.97, 0.99)).groups
    return group


def test_labels_to_reach_counts_never_as_infinite(reach_group):
    at_90, at_95, at_97, at_99 = reach_group.reach
    assert at_90.per_run == (40, 30, None)
    assert (at_90.median, at_90.low, at_90.high, at_90.missed) == (40, 30, math.inf, 1)  # median of 30, 40, inf
    assert at_95.per_run == (60, 50, None) and at_95.median == 60
    assert at_97.per_run == (None, 60, None) and at_97.median == math.inf and at_97.low == 60  # most never got there
    assert at_99.per_run == (None, None, None) and at_99.low is None and at_99.missed == 3


def test_labels_to_reach_in_markdown_and_csv(reach_group):
    comparison = compare.Comparison((0.9, 0.95, 0.97, 0.99), (reach_group,), ())
    row = compare.markdown(comparison).splitlines()[2]
    assert row.startswith("| bald | 3 | 40 (30 to >60), 1 of 3 not reached | 60 (50 to >60), 1 of 3 not reached | ")
    assert ">60 (60 to >60), 2 of 3 not reached | >60 (3 of 3 not reached) | 60 |" in row
    (line,) = csv.DictReader(io.StringIO(compare.csv(comparison)))
    assert float(line["labels_to_0.9_median"]) == 40 and line["labels_to_0.9_max"] == "inf"
    assert line["labels_to_0.99_min"] == "" and line["labels_to_0.99_missed"] == "3"
    assert line["seeds"] == "1 2 3" and line["final_labels"] == "60"


def test_a_group_is_cut_to_the_labels_all_its_runs_reached(tmp_path):
    long = write_run(tmp_path / "a", [0.5, 0.6, 0.7, 0.95], seed=1)
    short = write_run(tmp_path / "b", [0.5, 0.7, 0.8], seed=2, iterations=3)  # interrupted after 40 labels
    (group,) = compare.compare(compare.load_runs([long, short])).groups
    assert list(group.labels) == [20, 30, 40]
    assert group.final.mean == pytest.approx(0.75)
    assert group.reach[0].per_run == (None, None)  # seed 1's 95% at 50 labels is past what seed 2 reached


# Final accuracy: bootstrap interval ------------------------------------------------------------------------------


def test_bootstrap_interval_is_reproducible_and_brackets_the_mean():
    values = [0.95, 0.96, 0.97, 0.94, 0.99]
    low, high = compare.bootstrap_interval(values)
    assert (low, high) == compare.bootstrap_interval(values)
    assert min(values) <= low < np.mean(values) < high <= max(values)


def test_bootstrap_interval_covers_the_true_mean():
    # 200 simulated experiments of 10 seeds from N(0.9, 0.02). The percentile interval of a
    # mean is about mean +- 1.96 * s * sqrt((n - 1) / n) / sqrt(n): narrower than the t
    # interval (2.26 * s / sqrt(n)), so with n = 10 it covers about P(|t_9| <= 1.86) = 90%,
    # not 95%. 200 experiments measure a coverage with a standard error of about 2 points:
    # accept 84% to 97%, three standard errors around 90%.
    rng = np.random.default_rng(1)
    covered = [low <= 0.9 <= high for low, high in (compare.bootstrap_interval(rng.normal(0.9, 0.02, 10))
                                                    for _ in range(200))]  # fmt: skip
    assert 0.84 <= np.mean(covered) <= 0.97


# Paired test ----------------------------------------------------------------------------------------------------


def test_sign_flip_p_against_hand_computed_values():
    # All 5 differences positive: only the all-plus and all-minus assignments are as extreme: 2/32.
    assert compare.sign_flip_p([0.01, 0.02, 0.03, 0.04, 0.05]) == 2 / 32
    # Observed sum 5 = 15 - 2 * 5. Negating a subset S of {1..5} gives 15 - 2 sum(S), at least 5
    # from 0 where sum(S) <= 5 or >= 10: 10 subsets each (sums 0,1,2,3,3,4,4,5,5,5 and their complements).
    assert compare.sign_flip_p([1, 2, 3, 4, -5]) == 20 / 32
    # A zero difference counts either way, and ties in size are found despite rounding (0.002 is not exact):
    # of the 8 assignments of +-2 +-2 +-4, all but +2 +2 -4 and -2 -2 +4 are at least 4 from 0.
    assert compare.sign_flip_p([0.0, 0.002, -0.002, 0.004]) == 6 / 8
    assert compare.sign_flip_p([0.0, 0.0]) == 1.0


def test_sign_flip_p_is_every_assignment_for_small_n():
    d = np.random.default_rng(0).normal(0.01, 0.02, 8)
    sums = [abs(np.dot(signs, d)) for signs in itertools.product([1, -1], repeat=len(d))]
    assert compare.sign_flip_p(d) == pytest.approx(np.mean(np.array(sums) >= abs(d.sum()) - 1e-12))


def test_sign_flip_p_samples_assignments_for_many_pairs():
    assert compare.sign_flip_p(np.full(25, 0.01)) == 1 / (1 + compare.RANDOM_FLIPS)  # never 0
    p = compare.sign_flip_p(np.random.default_rng(0).normal(0, 0.01, 30))
    assert 0.01 < p <= 1


def test_paired_test_on_run_directories(tmp_path):
    bald = {1: [0.80, 0.96], 2: [0.82, 0.95], 3: [0.78, 0.97], 4: [0.81, 0.96], 5: [0.80, 0.98], 6: [0.9, 0.99]}
    random = {1: [0.79, 0.93], 2: [0.80, 0.94], 3: [0.78, 0.94], 4: [0.80, 0.95], 5: [0.80, 0.93], 7: [0.5, 0.6]}
    dirs = [write_run(tmp_path / f"bald-{s}", a, seed=s) for s, a in bald.items()]
    dirs += [write_run(tmp_path / f"random-{s}", a, acquisition="random", seed=s) for s, a in random.items()]
    final, area = compare.compare(compare.load_runs(dirs), pairs=[("bald", "random")]).tests
    assert final.n == area.n == 5  # seeds 6 and 7 have no partner
    assert final.mean_difference == pytest.approx(np.mean([0.03, 0.01, 0.03, 0.01, 0.05]))
    assert final.p_value == 2 / 32  # bald is ahead on every seed
    assert area.mean_difference == pytest.approx(np.mean([0.02, 0.015, 0.015, 0.01, 0.025]))
    assert area.p_value == 2 / 32
    assert final.measure == "final accuracy (30 labels)"


def test_paired_test_needs_two_seeds_in_both_groups(tmp_path):
    dirs = [write_run(tmp_path / "bald", [0.8, 0.9], seed=1),
            write_run(tmp_path / "random", [0.7, 0.8], acquisition="random", seed=2)]  # fmt: skip
    comparison = compare.compare(compare.load_runs(dirs))
    assert all(t.p_value is None and t.n == 0 for t in comparison.tests)
    assert "needs 2 or more seeds run in both groups; they share none" in compare.markdown(comparison)
    (line, _) = csv.DictReader(io.StringIO(compare.csv(comparison, "tests")))
    assert line["p_value"] == "" and "needs 2 or more seeds" in line["note"]


# Grouping -------------------------------------------------------------------------------------------------------


def test_grouping_ignores_the_seed_and_separates_by_acquisition(tmp_path):
    dirs = [
        write_run(tmp_path / "bald-1", [0.5, 0.6], seed=1, data_path="/a/digits"),
        write_run(tmp_path / "random-1", [0.5, 0.55], acquisition="random", seed=1),
        write_run(tmp_path / "bald-2", [0.5, 0.7], seed=2, data_path="/b/digits", resumed=[{"round": 1}]),
    ]
    groups = compare.group(compare.load_runs(dirs))
    assert {label: [run.path.name for run in runs] for label, runs in groups.items()} == {
        "bald": ["bald-1", "bald-2"],
        "random": ["random-1"],
    }
    assert list(figures.group_runs(dirs)) == ["bald", "random"]  # the figures group the same way


def test_labels_name_the_other_settings_that_differ(tmp_path):
    dirs = [
        write_run(tmp_path / "bald", [0.5, 0.6]),
        write_run(tmp_path / "bald-filtered", [0.5, 0.6], filter_fraction=0.5),
        write_run(tmp_path / "random", [0.5, 0.6], acquisition="random"),
    ]
    labels = list(compare.group(compare.load_runs(dirs)))
    assert labels == ["bald (filter_fraction=0.0)", "bald (filter_fraction=0.5)", "random (filter_fraction=0.0)"]


# Output ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_plot_writes_the_figure_whole(tmp_path, suffix):
    dirs = [write_run(tmp_path / f"run-{s}", curve, seed=s) for s, curve in CURVES.items()]
    comparison = compare.compare(compare.load_runs(dirs))
    out = tmp_path / "figures" / f"curves{suffix}"
    out.parent.mkdir()
    out.write_bytes(b"old")
    assert compare.plot(comparison, out, band="iqr") == out
    assert out.stat().st_size > 1000
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left beside it


# Bad input: one line naming the problem and the fix ------------------------------------------------------------


def test_bad_run_directories(tmp_path):
    good = write_run(tmp_path / "good", [0.5, 0.6])
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    filter_dir = write_run(tmp_path / "filter", [0.5])
    (filter_dir / "filtering.jsonl").write_text("")
    old = write_run(tmp_path / "old", [0.5])
    config = json.loads((old / "config.json").read_text())
    del config["record"]
    (old / "config.json").write_text(json.dumps(config))
    unstarted = write_run(tmp_path / "unstarted", [0.5])
    (unstarted / "metrics.jsonl").write_text("")
    foreign = write_run(tmp_path / "foreign", [0.5])
    (foreign / "metrics.jsonl").write_text('{"num_labeled": 20, "test_accuracy": 95}\n')
    cases = {
        tmp_path / "missing": "no such directory; pass jal run directories",
        tmp_path / "file.txt": "no such directory",
        tmp_path / "empty": "is " + str(tmp_path / "empty") + " a jal run or filter directory?",
        filter_dir: "a jal filter directory, not a run; pass jal run directories",
        old: "written by an older jal",
        unstarted: "no finished round yet",
        foreign: "metrics.jsonl:1: no num_labeled with a test_accuracy from 0 to 1",
    }
    for directory, problem in cases.items():
        with pytest.raises(JalError) as error:
            compare.load_runs([good, directory])
        assert problem in one_line(error) and str(directory) in str(error.value)


def test_runs_of_different_data_are_not_compared(tmp_path):
    digits = write_run(tmp_path / "digits", [0.5, 0.6])
    moved = write_run(tmp_path / "moved", [0.5, 0.7], seed=2, data_path="/elsewhere/digits")  # same md5: same data
    other = write_run(tmp_path / "other", [0.5, 0.6], md5={**MD5, "x_train.npy": "ee"})
    assert len(compare.compare(compare.load_runs([digits, moved])).groups) == 1
    with pytest.raises(JalError) as error:
        compare.compare(compare.load_runs([digits, moved, other]))
    assert "were run on different data; compare runs of one dataset at a time" in one_line(error)
    assert str(other) in str(error.value)


def test_empty_and_inconsistent_requests(tmp_path):
    bald = write_run(tmp_path / "bald", [0.5, 0.6])
    again = write_run(tmp_path / "again", [0.5, 0.6])  # the same settings and seed
    runs = compare.load_runs([bald])
    problems = [
        (lambda: compare.load_runs([]), "no run directories given; pass one or more"),
        (lambda: compare.compare([]), "no runs to compare; pass one or more"),
        (lambda: compare.compare(runs, pairs=[("bald", "random")]), "no group 'random'; name groups by their labels"),
        (lambda: compare.compare(runs, at=(90,)), "give accuracies above 0 and at most 1"),
        (lambda: compare.compare(compare.load_runs([bald, again])), "the same settings and seed 1; pass one of them"),
        (lambda: compare.plot(compare.compare(runs), tmp_path / "f.jpg"), "use a .png, .svg, .pdf file name"),
        (lambda: compare.csv(compare.compare(runs), "runs"), "choose one of groups, tests"),
    ]
    for call, problem in problems:
        with pytest.raises(JalError) as error:
            call()
        assert problem in one_line(error)
