"""`jal serve`: the labelling service's API, its files, its refusals, and a server killed with kill -9.

Small settings throughout (an mlp on 8x8 digits, a pool of 300, K = 4, one short epoch),
so that a round trains in well under a second once compiled.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="jal serve's tests need its extra: pip install 'jal[serve]'")
import httpx  # noqa: E402

with warnings.catch_warnings():  # Starlette suggests another HTTP client; httpx is the one jal's tests use
    warnings.filterwarnings("ignore", message="Using `httpx`")
    from fastapi.testclient import TestClient

from jal.cli import main  # noqa: E402
from jal.config import override  # noqa: E402
from jal.errors import JalError  # noqa: E402
from jal.serve import rounds  # noqa: E402
from jal.serve.app import MAX_BODY, create_app  # noqa: E402
from jal.serve.config import ServeConfig  # noqa: E402
from jal.serve.project import LABELS, ROUNDS, open_project  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
POOL, CLASSES = 300, 10
SMALL = {
    "model.name": "mlp",
    "model.settings": {"hidden_sizes": (32,)},
    "data.pool_size": POOL,
    "initial": 5,
    "loop.acquire": 5,
    "loop.mc_samples": 4,
    "loop.train.epochs": 1,
    "loop.train.batch_size": 32,
    "loop.train.min_samples_per_epoch": 64,
}
SMALL_FLAGS = ["--model", "mlp", "--hidden-sizes", "32", "--pool-size", str(POOL), "--initial", "5", "--acquire", "5",
               "--mc-samples", "4", "--epochs", "1", "--batch-size", "32", "--min-samples-per-epoch", "64"]  # fmt: skip


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """scikit-learn's digits as 8x8 images [N, 8, 8]: 1,400 training and 397 test samples."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.reshape(-1, 8, 8).astype(np.float32)
    path = tmp_path_factory.mktemp("images") / "images.npz"
    np.savez(path, x_train=x[:1400], y_train=y[:1400], x_test=x[1400:], y_test=y[1400:])
    return path


def small_config(data: Path, **changes) -> ServeConfig:
    return override(ServeConfig(), {"data.path": str(data), **SMALL, **changes})


@pytest.fixture
def project(tmp_path, images):
    with open_project(tmp_path / "project", small_config(images)) as opened:
        yield opened
        assert opened.wait(300), "a round still trains"


def client(project, *, token: str | None = None, local: bool = False, **headers) -> TestClient:
    return TestClient(create_app(project, token=token, local=local), headers=headers)


def wait_for_round(api, number: int, timeout: float = 300) -> dict:
    """The state once round `number` has finished (it fails where the round fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.get("/api/state").json()
        assert not (state["job"] and state["job"]["error"]), state["job"]
        if state["job"] is None and state["round"] >= number:
            return state
        time.sleep(0.05)
    raise AssertionError(f"round {number} did not finish in {timeout} s")


def label_all(api, label: int = 1) -> list[int]:
    """Labels every pending proposal with `label`; the indices labelled."""
    indices = [s["index"] for s in api.get("/api/proposals").json()["samples"] if s["label"] is None]
    for index in indices:
        assert api.post("/api/labels", json={"index": index, "label": label}).status_code == 200
    return indices


def held_rounds(monkeypatch) -> threading.Event:
    """Makes every round wait for the event before it trains: a round that is surely still training."""
    release, propose = threading.Event(), rounds.propose

    def held(*args, **kwargs):
        assert release.wait(300)
        return propose(*args, **kwargs)

    monkeypatch.setattr(rounds, "propose", held)
    return release


# ---- the API ------------------------------------------------------------------------------------------------


def test_a_new_project_proposes_initial_samples_at_random(project):
    api = client(project)
    state = api.get("/api/state").json()
    assert state | {"project": "project", "job": None} == {
        "project": "project",
        "pool_size": POOL,
        "num_classes": CLASSES,
        "acquisition": "bald",
        "acquire": 5,
        "has_test_labels": True,
        "labelled": 0,
        "round": 0,
        "pending": 5,
        "can_undo": False,
        "job": None,
    }
    proposals = api.get("/api/proposals").json()
    assert proposals["round"] == 0 and len(proposals["samples"]) == 5
    for sample in proposals["samples"]:
        assert sample["score"] is None and sample["label"] is None
        assert sample["image"] == f"/api/samples/{sample['index']}/image"
    assert api.get("/api/curve").json() == {"points": []}
    assert api.get("/api/scores").json()["round"] is None
    assert api.get("/api/history").json() == {"total": 0, "labels": []}


def test_labels_are_given_undone_and_listed(project):
    api = client(project)
    first, second, *rest = [s["index"] for s in api.get("/api/proposals").json()["samples"]]
    assert api.post("/api/labels", json={"index": first, "label": 3}).json()["labelled"] == 1
    state = api.post("/api/labels", json={"index": second, "label": 7}).json()
    assert state["labelled"] == 2 and state["pending"] == 3 and state["can_undo"]
    history = api.get("/api/history").json()
    assert history["total"] == 2
    assert [(e["index"], e["label"], e["round"]) for e in history["labels"]] == [(second, 7, 0), (first, 3, 0)]
    assert [e["index"] for e in api.get("/api/history?limit=1").json()["labels"]] == [second]

    undone = api.delete("/api/labels/last").json()
    assert undone["undone"] == {"index": second, "label": 7} and undone["state"]["labelled"] == 1
    labels = {s["index"]: s["label"] for s in api.get("/api/proposals").json()["samples"]}
    assert labels[first] == 3 and labels[second] is None
    assert api.delete("/api/labels/last").status_code == 200
    nothing = api.delete("/api/labels/last")
    assert nothing.status_code == 409 and "no label to undo" in nothing.json()["detail"]


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"index": 0, "label": CLASSES}, 400, "class 10 does not exist: classes are 0..9"),
        ({"index": 0, "label": -1}, 400, "class -1 does not exist"),
        ({"index": POOL, "label": 0}, 400, f"sample {POOL} is not in the pool: pool indices are 0..{POOL - 1}"),
        ({"index": -1, "label": 0}, 400, "sample -1 is not in the pool"),
        ({"index": "3", "label": 0}, 422, "integer"),
        ({"index": 1.5, "label": 0}, 422, "integer"),
        ({"index": 3}, 422, "Field required"),
        ({"index": 3, "label": 0, "path": "/etc/passwd"}, 422, "Extra inputs are not permitted"),
        ([3, 0], 422, "valid dictionary"),
    ],
)
def test_a_bad_label_request_is_refused_with_its_reason(project, body, status, message):
    api = client(project)
    if body == {"index": 0, "label": CLASSES}:  # a sample that is proposed: only the class is wrong
        body["index"] = api.get("/api/proposals").json()["samples"][0]["index"]
    answer = api.post("/api/labels", json=body)
    assert answer.status_code == status
    assert message in json.dumps(answer.json()["detail"])
    assert api.get("/api/state").json()["labelled"] == 0


def test_malformed_large_and_non_json_bodies_are_refused(project):
    api = client(project)
    index = api.get("/api/proposals").json()["samples"][0]["index"]
    broken = api.post("/api/labels", content=b'{"index": 1, "label":', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "JSON" in json.dumps(broken.json())
    big = json.dumps({"index": index, "label": 1, "padding": "x" * MAX_BODY}).encode()
    assert api.post("/api/labels", content=big, headers={"content-type": "application/json"}).status_code == 413

    def chunks():  # no Content-Length: the limit holds as the body streams in
        for _ in range(MAX_BODY // 64 + 2):
            yield b" " * 64

    streamed = api.post("/api/labels", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    # A cross-site form can post text/plain without asking first: such a body is not read as JSON.
    plain = json.dumps({"index": index, "label": 1}).encode()
    assert api.post("/api/labels", content=plain, headers={"content-type": "text/plain"}).status_code == 422
    assert api.get("/api/state").json()["labelled"] == 0


def test_a_sample_labelled_twice_or_not_proposed_is_a_conflict(project):
    api = client(project)
    proposed = [s["index"] for s in api.get("/api/proposals").json()["samples"]]
    assert api.post("/api/labels", json={"index": proposed[0], "label": 2}).status_code == 200
    again = api.post("/api/labels", json={"index": proposed[0], "label": 5})
    assert again.status_code == 409
    assert again.json()["detail"] == (
        f"sample {proposed[0]} is labelled already (class 2), perhaps in another tab; undo that label to change it"
    )
    other = next(i for i in range(POOL) if i not in proposed)
    refused = api.post("/api/labels", json={"index": other, "label": 5})
    assert refused.status_code == 409 and "not among round 0's proposals" in refused.json()["detail"]
    assert [e["label"] for e in api.get("/api/history").json()["labels"]] == [2]


def test_a_label_the_disk_refuses_is_not_given(project, monkeypatch):
    api = client(project)
    first, second = [s["index"] for s in api.get("/api/proposals").json()["samples"][:2]]
    api.post("/api/labels", json={"index": first, "label": 1})
    before = (project.directory / LABELS).read_bytes()

    def full(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    refused = api.post("/api/labels", json={"index": second, "label": 2})
    assert refused.status_code == 503
    assert refused.json()["detail"] == "the server could not save it (No space left on device); nothing changed"
    assert api.delete("/api/labels/last").status_code == 503
    monkeypatch.undo()
    assert (project.directory / LABELS).read_bytes() == before
    assert api.get("/api/state").json()["labelled"] == 1
    assert api.post("/api/labels", json={"index": second, "label": 2}).status_code == 200


def test_tabs_racing_for_one_sample_get_it_once(project):
    index = client(project).get("/api/proposals").json()["samples"][0]["index"]
    statuses, start = [], threading.Barrier(8)

    def tab(label: int) -> None:
        api = client(project)
        start.wait()
        statuses.append(api.post("/api/labels", json={"index": index, "label": label}).status_code)

    tabs = [threading.Thread(target=tab, args=(label,)) for label in range(8)]
    for t in tabs:
        t.start()
    for t in tabs:
        t.join()
    assert sorted(statuses) == [200] + [409] * 7
    assert client(project).get("/api/history").json()["total"] == 1
    assert (project.directory / LABELS).read_text().count("\n") == 1


@pytest.mark.slow
def test_a_round_trains_in_the_background_and_labels_given_meanwhile_count(project, monkeypatch):
    api = client(project)
    early = api.post("/api/rounds")
    assert early.status_code == 409 and "label at least one" in early.json()["detail"]
    proposed = [s["index"] for s in api.get("/api/proposals").json()["samples"]]
    for index in proposed[:4]:
        api.post("/api/labels", json={"index": index, "label": index % CLASSES})
    release = held_rounds(monkeypatch)
    started = api.post("/api/rounds")
    assert started.status_code == 202
    job = started.json()["job"]
    assert job["round"] == 1 and job["error"] is None and job["expected"] is None and job["fraction"] is None
    twice = api.post("/api/rounds")
    assert twice.status_code == 409 and "round 1 is training already" in twice.json()["detail"]
    assert api.get("/api/state").json()["job"]["elapsed"] >= 0
    # The last initial sample, labelled while round 1 trains: kept, and trained on in round 2.
    assert api.post("/api/labels", json={"index": proposed[4], "label": 4}).status_code == 200
    release.set()
    state = wait_for_round(api, 1)
    assert state["labelled"] == 5 and state["pending"] == 5 and state["can_undo"] is False
    first = api.get("/api/curve").json()["points"]
    assert [(p["round"], p["labels"]) for p in first] == [(1, 4)] and 0 <= first[0]["test_accuracy"] <= 1
    samples = api.get("/api/proposals").json()["samples"]
    assert not {s["index"] for s in samples} & set(proposed)
    assert [s["score"] for s in samples] == sorted((s["score"] for s in samples), reverse=True)
    # An earlier round's label is not undone: a model trained on it.
    late = api.delete("/api/labels/last")
    assert late.status_code == 409 and "belongs to round 0" in late.json()["detail"]

    label_all(api)
    assert api.post("/api/rounds").json()["job"]["expected"] > 0  # the last round's time: a progress estimate
    wait_for_round(api, 2)
    assert [p["labels"] for p in api.get("/api/curve").json()["points"]] == [4, 10]
    history = api.get("/api/history").json()
    assert history["total"] == 10 and [e["round"] for e in history["labels"]] == [1] * 5 + [0] * 5
    assert all(e["score"] is not None for e in history["labels"][:5])


def test_the_score_histogram_places_the_pool_the_labels_and_the_proposals(project):
    api = client(project)
    given = label_all(api)
    api.post("/api/rounds")
    wait_for_round(api, 1)
    histogram = api.get("/api/scores").json()
    assert histogram["round"] == 1 and len(histogram["edges"]) == len(histogram["unlabelled"]) + 1
    assert sum(histogram["unlabelled"]) == POOL - len(given) and sum(histogram["labelled"]) == len(given)
    scores = project.pool_scores(1)
    assert (histogram["edges"][0], histogram["edges"][-1]) == pytest.approx((scores.min(), scores.max()))
    proposed = api.get("/api/proposals").json()["samples"]
    assert histogram["proposed"] == [{"index": s["index"], "score": s["score"]} for s in proposed]
    assert [p["score"] for p in histogram["proposed"]] == pytest.approx(scores[[s["index"] for s in proposed]])


def test_a_failed_round_is_reported_and_can_be_started_again(project, monkeypatch):
    api = client(project)
    label_all(api)

    def diverges(*args, **kwargs):
        raise JalError("training diverged in round 1 (non-finite loss); lower `learning_rate`")

    monkeypatch.setattr(rounds, "propose", diverges)
    api.post("/api/rounds")
    project.wait(60)
    job = api.get("/api/state").json()["job"]
    assert job["round"] == 1 and job["error"].startswith("round 1 failed: training diverged")
    monkeypatch.undo()
    assert api.post("/api/rounds").status_code == 202
    assert wait_for_round(api, 1)["job"] is None


def test_samples_render_as_pngs(project, tmp_path, digits):
    api = client(project)
    image = api.get("/api/samples/7/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(image.content[16:20], "big") == 8  # the image's own width: the page scales it up
    with open_project(tmp_path / "vectors", small_config(digits)) as vectors:  # 64 features: a plot
        plot = client(vectors).get("/api/samples/7/image")
        assert plot.content[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(plot.content[16:20], "big") > 100


def test_the_page_loads_nothing_from_elsewhere(tmp_path):
    from tests.test_packaging import build_wheel

    names = ("index.html", "app.js", "app.css")
    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        files = {name: wheel.read(f"jal/serve/static/{name}").decode() for name in names}
    for name, text in files.items():
        # No URL but SVG's namespace, which names and fetches nothing; no protocol-relative address.
        assert re.findall(r"\w+://[^\s\"')]+", text) in ([], ["http://www.w3.org/2000/svg"]), name
        assert not re.search(r"""(src|href)=["']//""", text), name
    assert '<script src="/static/app.js">' in files["index.html"]


def test_every_endpoint_is_documented(project):
    schema = client(project).get("/openapi.json").json()
    operations = [op for path in schema["paths"].values() for op in path.values()]
    assert {path for path in schema["paths"]} == {
        "/api/state", "/api/rounds", "/api/proposals", "/api/samples/{index}/image", "/api/labels",
        "/api/labels/last", "/api/curve", "/api/scores", "/api/history",
    }  # fmt: skip
    assert all(op.get("summary") and len(op.get("description", "")) > 40 for op in operations)
    assert client(project).get("/docs").status_code == 200


# ---- security -----------------------------------------------------------------------------------------------


def test_a_token_guards_every_api_call(project):
    token = "s3cret-token"
    anyone, wrong = client(project, token=token), client(project, token=token, Authorization="Bearer nope")
    right = client(project, token=token, Authorization=f"Bearer {token}")
    reads = ("/api/state", "/api/proposals", "/api/samples/0/image", "/api/curve", "/api/scores", "/api/history")
    calls = [*(("get", path) for path in reads), ("post", "/api/rounds"), ("delete", "/api/labels/last")]
    for method, path in calls:
        missing = getattr(anyone, method)(path)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer", path
        assert getattr(wrong, method)(path).status_code == 403, path
        assert getattr(right, method)(path).status_code not in (401, 403), path
    # Not even a malformed body is looked at before the token.
    assert anyone.post("/api/labels", content=b"{", headers={"content-type": "application/json"}).status_code == 401
    assert anyone.get(f"/api/state?token={token}").status_code == 401  # the token never goes in a URL to the API
    index = right.get("/api/proposals").json()["samples"][0]["index"]
    assert right.post("/api/labels", json={"index": index, "label": 0}).status_code == 200
    # The page itself holds nothing of the project: it loads without the token and reads it from its URL.
    page = anyone.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert anyone.get("/static/app.js").status_code == 200 and anyone.get("/static/app.css").status_code == 200


def test_on_loopback_only_loopback_names_are_served(project):
    local = client(project, local=True)
    assert local.get("http://127.0.0.1:8000/api/state").status_code == 200
    assert local.get("http://localhost:8000/api/state").status_code == 200
    # A page elsewhere that points its own name at 127.0.0.1 sends its name as the host.
    assert local.get("http://rebound.example:8000/api/state").status_code == 400


def test_no_request_names_a_file(project):
    api = client(project)
    paths = [
        "/static/../config.json",
        "/static/%2e%2e%2fconfig.json",
        "/static/index.html",
        "/config.json",
        "/static/..%2flabels.jsonl",
        "/api/samples/..%2f..%2fconfig.json/image",
        "/static/app.js/../../config.json",
    ]
    for path in paths:
        answer = api.get(path)
        assert answer.status_code == 404, path
        assert b'"record"' not in answer.content and b'"label"' not in answer.content
    assert api.get("/api/samples/config.json/image").status_code == 422
    assert api.get(f"/api/samples/{POOL}/image").status_code == 400
    assert api.get("/api/samples/-1/image").status_code == 400


# ---- the project's files ------------------------------------------------------------------------------------


def test_a_reopened_project_is_as_it_was(tmp_path, images):
    config, where = small_config(images), tmp_path / "project"
    with open_project(where, config) as project:
        api = client(project)
        label_all(api, label=2)
        api.post("/api/rounds")
        wait_for_round(api, 1)
        first = api.get("/api/proposals").json()["samples"][0]["index"]
        api.post("/api/labels", json={"index": first, "label": 6})
        api.delete("/api/labels/last")
        api.post("/api/labels", json={"index": first, "label": 8})
        before = {path: client(project).get(path).json() for path in ("/api/proposals", "/api/curve", "/api/history")}
        state = api.get("/api/state").json()
    with (where / LABELS).open("a") as f:
        f.write('{"index": 1, "label": ')  # a write a kill cut short: never acknowledged
    with open_project(where, config) as project:
        api = client(project)
        assert {path: api.get(path).json() for path in before} == before
        assert api.get("/api/state").json() == state
        assert (where / LABELS).read_text().endswith("}\n")  # the torn line is gone
        assert api.post("/api/labels", json={"index": 1, "label": 0}).status_code == 409  # and never counted
    assert [json.loads(line)["number"] for line in (where / ROUNDS).read_text().splitlines()] == [0, 1]


def test_damaged_files_are_refused_on_opening(tmp_path, images):
    config, where = small_config(images), tmp_path / "project"
    with open_project(where, config):
        pass
    with (where / LABELS).open("a") as f:
        f.write(json.dumps({"index": POOL + 5, "label": 1, "round": 0, "time": 0}) + "\n")
    with pytest.raises(JalError, match=f"labels.jsonl: does not add up \\(sample {POOL + 5} is not in the pool"):
        with open_project(where, config):
            pass
    (where / LABELS).write_text("not json\n")
    with pytest.raises(JalError, match="labels.jsonl:1: not JSON"):
        with open_project(where, config):
            pass


def test_a_second_server_on_one_project_is_refused(project, images):
    with pytest.raises(JalError, match="another jal process is writing it"):
        with open_project(project.directory, small_config(images)):
            pass


def test_data_moved_elsewhere_still_open_the_project(tmp_path, images):
    where = tmp_path / "project"
    with open_project(where, small_config(images)):
        pass
    moved = tmp_path / "elsewhere" / images.name
    moved.parent.mkdir()
    moved.write_bytes(images.read_bytes())
    with open_project(where, small_config(moved)):
        pass
    assert json.loads((where / "config.json").read_text())["data"]["path"] == str(moved)


@pytest.mark.slow
def test_data_without_pool_labels_or_test_split(tmp_path, images):
    with np.load(images) as arrays:
        x_train, x_test, y_test = arrays["x_train"], arrays["x_test"], arrays["y_test"]
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x_train=x_train, x_test=x_test, y_test=y_test)
    with open_project(tmp_path / "a", small_config(unlabelled)) as project:
        assert project.num_classes == 10 and project.samples.record["test_size"] == len(x_test)
    bare = tmp_path / "bare.npz"
    np.savez(bare, x_train=x_train)
    with pytest.raises(JalError, match="no labels to count the classes by; give --num-classes"):
        with open_project(tmp_path / "b", small_config(bare)):
            pass
    assert not (tmp_path / "b").exists()
    with open_project(tmp_path / "b", small_config(bare, **{"data.num_classes": 10})) as project:
        api = client(project)
        assert api.get("/api/state").json()["has_test_labels"] is False
        label_all(api)
        api.post("/api/rounds")
        wait_for_round(api, 1)
        assert api.get("/api/curve").json() == {"points": []}
        assert len(api.get("/api/proposals").json()["samples"]) == 5
    half = tmp_path / "half.npz"
    np.savez(half, x_train=x_train, x_test=x_test)
    with pytest.raises(JalError, match="give x_test with its labels y_test"):
        with open_project(tmp_path / "c", small_config(half)):
            pass
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "x_train.npy", np.where(np.arange(len(x_train))[:, None, None] == 3, np.nan, x_train))
    with pytest.raises(JalError, match="x_train.npy: input 3 holds NaN"):
        with open_project(tmp_path / "d", small_config(folder, **{"data.num_classes": 10})):
            pass


# ---- the command line ---------------------------------------------------------------------------------------


def jal_serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jal", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("jal: warning")]
    assert len(lines) == 1 and lines[0].startswith(("jal: error: ", "jal serve: error: ")), result.stderr
    return lines[0]


def test_importing_jal_needs_no_web_framework():
    code = (
        "import sys, jal, jal.cli, jal.serve.project, jal.serve.views; jal.cli.build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_without_the_extra_it_says_what_to_install(tmp_path, images):
    code = "import sys; sys.modules['fastapi'] = None; from jal.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, "serve", "--out", str(tmp_path / "p"), "--data", str(images)],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert "pip install 'jal[serve]'" in one_error_line(result)
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_bad_command_lines_get_one_line(tmp_path, images, capsys):
    project = tmp_path / "project"
    with open_project(project, small_config(images)):
        pass
    a_run = tmp_path / "run"
    a_run.mkdir()
    (a_run / "config.json").write_text("{}")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cases = {
        ("--data", str(tmp_path / "missing.npz")): "missing.npz: no such file or folder",
        ("--acquire", "3"): "the project was made with --acquire 5, not 3",
        ("--hidden-sizes", "16", "8", "--lr", "0.1"): "--lr 0.0005, not 0.1; --hidden-sizes 32, not 16 8",
        ("--data", str(Path(__file__))): "cannot read it",
        ("--port", str(taken.getsockname()[1])): "cannot listen on 127.0.0.1 port",
        ("--host", "no.such.host.invalid"): "--host no.such.host.invalid: not an address of this machine",
        ("--initial", "301"): "--initial 301 must be between 1 and the pool size 300",
    }
    for flags, message in cases.items():
        out = project if flags[0] in ("--acquire", "--hidden-sizes") else tmp_path / "new"
        capsys.readouterr()
        assert main(["serve", "--out", str(out), "--port", "0", "--data", str(images), *SMALL_FLAGS[:6], *flags]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("jal: error: ") and message in error, (flags, error)
    taken.close()
    for flags, message in ((("--port", "70000"), "70000 is above the maximum 65535"),
                           (("--dropout-rate", "2"), "must be below 1")):  # fmt: skip
        assert message in one_error_line(jal_serve("--out", str(tmp_path / "new"), *flags))
    assert "not a jal serve project" in one_error_line(jal_serve("--out", str(a_run)))
    assert not (tmp_path / "new").exists()
    # The changed data under the same name: the md5 tells.
    other = tmp_path / "other.npz"
    with np.load(images) as arrays:
        np.savez(other, **{**arrays, "x_train": arrays["x_train"][::-1]})
    capsys.readouterr()
    assert main(["serve", "--out", str(project), "--port", "0", "--data", str(other)]) == 2
    assert "the data differ from the project's (data: other files, or other contents" in capsys.readouterr().err


# ---- real servers -------------------------------------------------------------------------------------------


def start_server(out: Path, *flags: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`jal serve` on a free port, once it serves: the process and the URL it printed (with its token, if any)."""
    process = subprocess.Popen([sys.executable, "-m", "jal", "serve", "--out", str(out), "--port", "0", *flags],
                               stdout=subprocess.PIPE, stderr=log.open("a"), text=True, cwd=ROOT)  # fmt: skip
    ready, _, _ = select.select([process.stdout], [], [], 180)
    line = process.stdout.readline() if ready else ""
    if " at http://" not in line:
        process.kill()
        raise AssertionError(f"jal serve did not start: {line!r}\n{log.read_text()}")
    return process, line.split(" at ")[1].strip()


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def api_client(url: str) -> httpx.Client:
    base, _, token = url.partition("/?token=")
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_label(tmp_path, images):
    out, log = tmp_path / "project", tmp_path / "server.log"
    flags = ["--data", str(images), *SMALL_FLAGS, "--initial", "200"]
    process, url = start_server(out, *flags, log=log)
    acknowledged, sent = {}, []
    try:
        api = api_client(url)
        indices = [s["index"] for s in api.get("/api/proposals").json()["samples"]]

        def labeller() -> None:
            for index in indices:
                sent.append(index)
                try:
                    answer = api.post("/api/labels", json={"index": index, "label": index % CLASSES})
                except httpx.HTTPError:
                    return  # the server died under this request
                assert answer.status_code == 200, answer.text
                acknowledged[index] = index % CLASSES

        thread = threading.Thread(target=labeller)
        thread.start()
        while len(acknowledged) < 60:
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        thread.join(60)
        process.wait()
    finally:
        stop_server(process)
    assert 60 <= len(acknowledged) < len(indices)
    process, url = start_server(out, *flags, log=log)
    try:
        api = api_client(url)
        history = api.get("/api/history?limit=100000").json()["labels"]
        found = {e["index"]: e["label"] for e in history}
        assert len(found) == len(history)  # none twice
        assert acknowledged.items() <= found.items()
        assert set(found) <= set(sent[: len(acknowledged) + 1])  # at most the one in flight besides
        # The project goes on: the rest labelled, a round trained.
        label_all(api)
        assert api.post("/api/rounds").status_code == 202
        assert wait_for_round(api, 1)["labelled"] == 200
    finally:
        stop_server(process)
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_off_loopback_a_token_is_made_and_required(tmp_path, images):
    process, url = start_server(tmp_path / "project", "--data", str(images), *SMALL_FLAGS, "--host", "0.0.0.0",
                                log=tmp_path / "server.log")  # fmt: skip
    try:
        assert "?token=" in url and len(url.rsplit("=", 1)[1]) >= 24
        base = url.split("/?")[0].replace("0.0.0.0", "127.0.0.1")
        assert httpx.get(f"{base}/api/state").status_code == 401
        assert api_client(url.replace("0.0.0.0", "127.0.0.1")).get("/api/state").status_code == 200
    finally:
        stop_server(process)
