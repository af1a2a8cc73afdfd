"""``streamproc run --workers 2`` on the real broker: two instance processes under one
supervisor share the partitions; one is killed with SIGKILL and comes back in its own slot
(same instance id, same state dir); the HTTP front reports both; the output stays exact."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamproc.kafka import io
from streamproc.kafka.ports import free_port
from tests.harness import AppProcess, create_topics, feed, unique, wait_event
from tests.integration.wordcount_check import (
    assert_exactly_once,
    expected_counts,
    make_lines,
    store_contents,
)

pytestmark = [pytest.mark.kafka, pytest.mark.crash]


def _status(url: str) -> list[dict[str, Any]]:
    try:
        answer = httpx.get(f"{url}/status", timeout=5)
    except httpx.HTTPError:
        return []
    return answer.json()["workers"] if answer.status_code == 200 else []


def _wait(check: Any, timeout_s: float, what: str, app: AppProcess) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        assert app.alive, app.log_text()[-3000:]
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s:\n" \
            + app.log_text()[-3000:]
        time.sleep(0.2)
    return got


def _tasks_of(row: dict[str, Any]) -> int:
    status = row.get("status") or {}
    return len(status.get("tasks") or [])


def test_two_workers_share_the_work_and_a_killed_one_comes_back(kafka: str,
                                                                tmp_path: Path) -> None:
    app_id, src, sink = unique("workers"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 4), (sink, 4))
    lines = make_lines(3000, seed=19)
    port = free_port()
    state = tmp_path / "state"
    app = AppProcess("tests.apps:wordcount", kafka, state, tmp_path / "app.log",
                     {"T_APP": app_id, "T_IN": src, "T_OUT": sink},
                     workers=2, http_port=port, consume_batch_size=200)
    url = f"http://127.0.0.1:{port}"
    app.start()
    try:
        feeder = feed(kafka, src, [(None, ln.encode()) for ln in lines[:1500]], 4.0)
        # Both workers run and hold tasks (4 input + 4 repartition partitions between them).
        rows = _wait(lambda: (r := _status(url)) and len(r) == 2
                     and all(_tasks_of(x) for x in r) and r, 90, "both workers with tasks", app)
        assert [r["worker"] for r in rows] == [0, 1]
        feeder.join()
        victim = rows[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        (restart,) = wait_event(app, "worker.restarting", 30)
        assert (restart["worker"], restart["exit_code"], restart["restarts"]) == \
            (1, -signal.SIGKILL, 1)
        _wait(lambda: (r := _status(url)) and r[1]["state"] == "running"
              and r[1]["pid"] != victim and _tasks_of(r[1]), 90, "worker 1 back", app)
        feeder = feed(kafka, src, [(None, ln.encode()) for ln in lines[1500:]], 3.0)
        feeder.join()
        assert io.wait_processed(kafka, app_id, [src, f"{app_id}-words-repartition"],
                                 timeout_s=120), app.log_text()[-3000:]
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        # The range assignor (partition_assignor auto, runtime/plan.py) gives each worker its
        # share of the stateful tasks (sub-topology 1), not just of the partitions.
        rows = _status(url)
        stateful = [sorted(t["partition"] for t in r["status"]["tasks"] if t["subtopology"] == 1)
                    for r in rows]
        assert sorted(stateful) == [[0, 1], [2, 3]], stateful
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert 'streamproc_worker_restarts_total{worker="0"} 0.0' in metrics
        assert 'streamproc_worker_restarts_total{worker="1"} 1.0' in metrics
        assert 'streamproc_workers 2.0' in metrics
        # Each worker's own families, labelled with its slot: both counted records.
        consumed: dict[str, float] = {}
        for family in text_string_to_metric_families(metrics):
            for sample in family.samples:
                if sample.name == "streamproc_records_consumed_total":
                    w = sample.labels["worker"]
                    consumed[w] = consumed.get(w, 0.0) + sample.value
        assert sorted(consumed) == ["0", "1"] and min(consumed.values()) > 0, consumed
    finally:
        code = app.terminate(timeout_s=90)
    assert code == 0, app.log_text()[-3000:]
    # Three worker processes (two, then worker 1 again); a slot keeps its instance id: every
    # start from a slot's state dir (in-place restarts within a worker too) has the same one.
    assert [e["worker"] for e in app.events("worker.started")] == [0, 1, 1]
    ids: dict[str, set[str]] = {}
    for e in app.events("instance.started"):
        ids.setdefault(Path(e["state_dir"]).parent.name, set()).add(e["instance"])
    assert sorted(ids) == ["worker-0", "worker-1"]
    assert all(len(v) == 1 for v in ids.values()) and ids["worker-0"] != ids["worker-1"]
    for slot, (instance,) in ids.items():
        assert (state / slot / app_id / "instance-id").read_text() == instance
    assert len([e for e in app.events("instance.started")
                if Path(e["state_dir"]).parent.name == "worker-1"]) >= 2
    assert_exactly_once(kafka, sink, lines)
    assert io.read_all(kafka, f"{app_id}-dlq") == []
    # Between them the two workers' stores hold every count (each its own partitions).
    counts: dict[str, int] = {}
    for i in range(2):
        # A partition that moved at the first join leaves an older copy behind: the larger
        # count is the owner's.
        for k, v in store_contents(state / f"worker-{i}", app_id, "counts", 4).items():
            counts[k] = max(v, counts.get(k, 0))
    assert counts == dict(expected_counts(lines))
    assert app.events("workers.stopped")[-1]["exit_codes"] == [0, 0]


def test_a_worker_error_a_restart_cannot_fix_stops_the_application(kafka: str,
                                                                   tmp_path: Path) -> None:
    app_id = unique("workers-missing")
    app = AppProcess("tests.apps:wordcount", kafka, tmp_path / "state", tmp_path / "app.log",
                     {"T_APP": app_id, "T_IN": unique("absent"), "T_OUT": unique("out")},
                     workers=2)
    app.start()
    code = app.wait(120)
    assert code == 2, app.log_text()[-3000:]
    failing = app.events("workers.failing")
    assert failing and {e["exit_code"] for e in failing} == {2}
    # The other worker is stopped (SIGTERM: mid-start it may not have its handler yet).
    codes = app.events("workers.stopped")[-1]["exit_codes"]
    assert 2 in codes and set(codes) <= {2, 0, -signal.SIGTERM}, codes
    assert app.events("worker.restarting") == []
