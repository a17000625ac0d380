"""`jal run --seeds`: several seeds in one vmapped program against the same seeds run alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jal import store
from jal.cli import main

SMALL = ["--model", "mlp", "--mc-samples", "4", "--epochs", "1", "--min-samples-per-epoch", "256",
         "--iterations", "3", "--acquire", "5", "--initial", "20", "--pool-size", "600"]  # fmt: skip


@pytest.mark.slow
def test_three_seeds_in_one_program_equal_three_runs_alone(digits, tmp_path):
    assert main(["run", "--data", str(digits), "--out", str(tmp_path / "batched"), "--seeds", "0,1,2", *SMALL]) == 0
    for seed in (0, 1, 2):
        alone = tmp_path / f"alone-{seed}"
        assert main(["run", "--data", str(digits), "--out", str(alone), "--seed", str(seed), *SMALL]) == 0
        batched = tmp_path / "batched" / f"seed-{seed}"
        got, want = store.read_metrics(batched), store.read_metrics(alone)
        assert [m["acquired"] for m in got] == [m["acquired"] for m in want]
        config, expected = store.read_config(batched), store.read_config(alone)
        assert config == expected, "the directory is the one --seed makes"
        assert store.read_status(batched)["state"] == "finished"
        # Batching over seeds may round sums differently; nothing more than that.
        for name in (store.POOL_SCORES, store.MODELS):
            a, b = np.load(batched / name), np.load(alone / name)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
        for key in ("test_accuracy", "test_nll"):
            np.testing.assert_allclose([m[key] for m in got], [m[key] for m in want], rtol=1e-4, atol=1e-5)
    acquired = [json.dumps(store.read_metrics(tmp_path / "batched" / f"seed-{s}")[0]["acquired"]) for s in (0, 1, 2)]
    assert len(set(acquired)) == 3, "the seeds are different runs"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seeds", "0,1,1"], "1 repeated; give each seed once"),
        (["--seeds", "0,x"], "--seeds"),
        (["--seeds", "0,1", "--seed", "3"], "drop --seed"),
        (["--seeds", "0,1", "--filter-fraction", "0.5"], "run each seed alone"),
    ],
)
def test_bad_seed_lists_are_refused_with_nothing_written(digits, tmp_path, capsys, flags, message):
    out = tmp_path / "runs"
    try:
        code = main(["run", "--data", str(digits), "--out", str(out), *SMALL, *flags])
    except SystemExit as e:  # refused while parsing the flags
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())
