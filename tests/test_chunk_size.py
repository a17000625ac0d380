"""The scoring chunk size: "auto" is 32 on the CPU and 1,024 on GPU and TPU, and runs record what it resolved to."""

import jax
import numpy as np
import pytest

from jal import chunks, experiment, loop
from jal.cli import build_parser, main
from jal.config import DataConfig, ModelSpec, RunConfig, from_json, override, to_json
from jal.errors import JalError
from jal.models import build_model
from jal.scoring import mc_log_probs, score_pool


def test_auto_is_32_on_the_cpu_and_1024_on_accelerators(monkeypatch):
    assert RunConfig().loop.chunk_size == "auto" and loop.LoopConfig().scoring_chunk_size == 32
    assert loop.LoopConfig(chunk_size=64).scoring_chunk_size == 64
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(chunks.jax, "default_backend", lambda backend=backend: backend)
        assert chunks.default_chunk_size() == 1024 and loop.LoopConfig().scoring_chunk_size == 1024
        assert loop.LoopConfig(chunk_size=64).scoring_chunk_size == 64


@pytest.mark.slow
def test_auto_scores_as_32_does_on_the_cpu():
    model = build_model("mlp", (6,), 3, hidden_sizes=(8,))
    params = model.init(jax.random.key(0))
    inputs = np.random.default_rng(0).normal(size=(70, 6)).astype(np.float32)
    key = jax.random.key(1)
    auto = mc_log_probs(model, params, inputs, key=key, mc_samples=4)
    np.testing.assert_array_equal(auto, mc_log_probs(model, params, inputs, key=key, mc_samples=4, chunk_size=32))
    scores = score_pool(model, params, inputs, key=key, mc_samples=4)
    np.testing.assert_array_equal(scores, score_pool(model, params, inputs, key=key, mc_samples=4, chunk_size=32))


def test_config_saves_auto_and_the_record_what_it_resolved_to(digits):
    config = RunConfig(
        data=DataConfig(path=str(digits), pool_size=100), model=ModelSpec("mlp"), initial=10, iterations=1
    )
    saved = to_json(config)
    assert saved["loop"]["chunk_size"] == "auto" and from_json(RunConfig, saved).loop.chunk_size == "auto"
    assert experiment.setup(config).facts["chunk_size"] == 32
    assert experiment.setup(override(config, {"loop.chunk_size": 48})).facts["chunk_size"] == 48


def test_a_chunk_size_is_auto_or_a_whole_number(tmp_path, capsys):
    parsed = vars(build_parser().parse_args(["run", "--out", str(tmp_path / "run"), "--chunk-size", "auto"]))
    assert parsed["loop.chunk_size"] == "auto"
    with pytest.raises(JalError, match="`chunk_size` 'big'"):
        loop.check_config(loop.LoopConfig(chunk_size="big"))
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--out", str(tmp_path / "run"), "--chunk-size", "big"])
    assert exit_.value.code == 2 and "not an integer" in capsys.readouterr().err
