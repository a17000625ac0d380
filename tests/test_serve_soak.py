"""`jal serve` under load on loopback: 1,000 labels from 4 concurrent clients, none lost or given twice.

Prints the latency of a label (request to fsynced answer); the README quotes it.
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from tests.test_serve import SMALL_FLAGS, api_client, images, start_server, stop_server  # noqa: F401

CLIENTS, EACH, CONTESTED = 4, 250, 50


@pytest.mark.slow
def test_a_thousand_labels_from_four_clients(tmp_path, images, capsys):  # noqa: F811
    out, log = tmp_path / "project", tmp_path / "server.log"
    process, url = start_server(out, "--data", str(images), *SMALL_FLAGS, "--pool-size", "1400",
                                "--initial", str(CLIENTS * EACH + CONTESTED), log=log)  # fmt: skip
    try:
        proposed = [s["index"] for s in api_client(url).get("/api/proposals").json()["samples"]]
        shards = [proposed[c * EACH : (c + 1) * EACH] for c in range(CLIENTS)]
        contested = proposed[CLIENTS * EACH :]
        latencies, statuses, failures = [], {}, []
        start = threading.Barrier(CLIENTS)

        def client(shard: list[int]) -> None:
            try:
                with api_client(url) as api:
                    start.wait()
                    for index in shard:
                        begin = time.perf_counter()
                        answer = api.post("/api/labels", json={"index": index, "label": index % 10})
                        latencies.append(time.perf_counter() - begin)
                        assert answer.status_code == 200, answer.text
                    start.wait()
                    for index in contested:  # all four race for each of these: one wins
                        answer = api.post("/api/labels", json={"index": index, "label": index % 10})
                        statuses.setdefault(index, []).append(answer.status_code)
            except Exception as e:  # reported below: an assertion in a thread would pass unseen
                failures.append(repr(e))
                start.abort()

        threads = [threading.Thread(target=client, args=(shard,)) for shard in shards]
        begin = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - begin
        assert failures == []
        assert len(latencies) == CLIENTS * EACH
        assert all(sorted(s) == [200] + [409] * (CLIENTS - 1) for s in statuses.values()) and len(statuses) == CONTESTED

        history = api_client(url).get("/api/history?limit=100000").json()
        given = {e["index"]: e["label"] for e in history["labels"]}
        assert history["total"] == len(history["labels"]) == len(given) == len(proposed)
        assert given == {index: index % 10 for index in proposed}
    finally:
        stop_server(process)
    lines = (out / "labels.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == len(proposed)
    median, p95 = statistics.median(latencies), statistics.quantiles(latencies, n=20)[-1]
    with capsys.disabled():
        print(
            f"\nsoak: {CLIENTS * EACH} labels from {CLIENTS} clients, then {CONTESTED} contested by all, in "
            f"{seconds:.1f} s; a label's latency: median {median * 1e3:.1f} ms, 95th percentile {p95 * 1e3:.1f} ms"
        )
