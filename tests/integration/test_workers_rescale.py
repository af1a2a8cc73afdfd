"""Rescaling workers on the real broker while the input flows: ``streamproc run`` with one
worker, then the same state dir with ``--workers 3``, then with one again (issue #19, part 4).

Each step is a clean stop (SIGTERM: final checkpoint) and a start. With
``leave_group_on_shutdown`` the stopping instances leave the group, so the new set takes
every partition at once; the session timeout here (60 s) is far longer than any step may take,
so a member that stayed behind would fail the test. The three workers get 2 of the 6 stateful
tasks each (the range assignor), and the output is exact throughout."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamproc.kafka import io
from streamproc.kafka.ports import free_port
from tests.harness import AppProcess, create_topics, feed, unique, wait_progress
from tests.integration.wordcount_check import assert_exactly_once, make_lines

pytestmark = [pytest.mark.kafka, pytest.mark.crash]

SESSION_TIMEOUT_MS = 60_000
STEP_TIMEOUT_S = 40.0  # well under the session timeout: only a real leave lets a step end


def _workers(url: str) -> list[dict[str, Any]]:
    try:
        answer = httpx.get(f"{url}/status", timeout=5)
    except httpx.HTTPError:
        return []
    return answer.json().get("workers", []) if answer.status_code == 200 else []


def _held(url: str) -> list[tuple[int, ...]] | None:
    """Per worker, the stateful tasks (sub-topology 1) it runs; None until all three hold
    tasks of both sub-topologies and every stateful task is running somewhere."""
    rows = _workers(url)
    if len(rows) != 3:
        return None
    out = []
    for row in rows:
        tasks = (row.get("status") or {}).get("tasks") or []
        if not any(t["subtopology"] == 0 for t in tasks):
            return None
        out.append(tuple(sorted(t["partition"] for t in tasks
                                if t["subtopology"] == 1 and t["state"] == "running")))
    return out if sorted(p for ps in out for p in ps) == list(range(6)) else None


def _all_tasks(port: int) -> bool:
    try:
        tasks = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json()["tasks"]
    except (httpx.HTTPError, KeyError, ValueError):
        return False
    return len([t for t in tasks if t["state"] == "running"]) == 12


def _wait(check: Any, what: str, app: AppProcess) -> tuple[Any, float]:
    started = time.monotonic()
    while not (got := check()):
        assert app.alive, app.log_text()[-3000:]
        assert time.monotonic() - started < STEP_TIMEOUT_S, \
            f"{what} within {STEP_TIMEOUT_S} s:\n" + app.log_text()[-3000:]
        time.sleep(0.2)
    return got, time.monotonic() - started


def test_one_to_three_to_one_workers_while_the_input_flows(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("rescale"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 6), (sink, 6))
    lines = make_lines(6000, seed=23)
    state = tmp_path / "state"
    settings = {"session_timeout_ms": SESSION_TIMEOUT_MS, "leave_group_on_shutdown": "true",
                "consume_batch_size": 200}
    env = {"T_APP": app_id, "T_IN": src, "T_OUT": sink}

    def start(n: int, port: int) -> AppProcess:
        return AppProcess("tests.apps:wordcount", kafka, state, tmp_path / f"run-{n}.log", env,
                          workers=n, http_port=port, **settings).start()

    # The input arrives all along, 100 lines/s, across the steps.
    feeder = feed(kafka, src, [(None, ln.encode()) for ln in lines], 60.0)
    one = start(1, port := free_port())
    _wait(lambda: _all_tasks(port), "one worker running all 12 tasks", one)
    wait_progress(one, kafka, app_id, timeout_s=STEP_TIMEOUT_S)
    assert one.terminate(timeout_s=60) == 0, one.log_text()[-3000:]

    three = start(3, front := free_port())
    url = f"http://127.0.0.1:{front}"
    shares, _ = _wait(lambda: _held(url), "three workers sharing the 12 tasks", three)
    assert sorted(len(s) for s in shares) == [2, 2, 2], shares
    wait_progress(three, kafka, app_id, timeout_s=STEP_TIMEOUT_S)
    assert three.terminate(timeout_s=90) == 0, three.log_text()[-3000:]
    assert three.events("workers.stopped")[-1]["exit_codes"] == [0, 0, 0]

    one_again = start(1, port2 := free_port())
    try:
        _wait(lambda: _all_tasks(port2), "one worker taking all 12 tasks back", one_again)
        feeder.join()
        assert io.wait_processed(kafka, app_id, [src, f"{app_id}-words-repartition"],
                                 timeout_s=120), one_again.log_text()[-3000:]
    finally:
        code = one_again.terminate(timeout_s=60)
    assert code == 0, one_again.log_text()[-3000:]
    assert_exactly_once(kafka, sink, lines)
    assert io.read_all(kafka, f"{app_id}-dlq") == []
