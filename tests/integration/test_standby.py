"""Standby replicas on the real broker: two instances of wordcount with
``num_standby_replicas=1`` each keep a warm copy of the other's stateful tasks; one is killed
with SIGKILL and the survivor takes its tasks over restoring nothing (its standbys had every
committed change); the killed one comes back, restores only what the survivor wrote meanwhile,
and the survivor's standbys of the returning tasks start from the offsets its stores reached.
The output stays exact throughout."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamproc.kafka import io
from streamproc.kafka.ports import free_port
from tests.harness import AppProcess, create_topics, feed, unique
from tests.integration.wordcount_check import assert_exactly_once, make_lines

pytestmark = [pytest.mark.kafka, pytest.mark.crash]


def _samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return []
    return [(s.labels, s.value) for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name]


def _stateful_tasks(port: int) -> list[int]:
    tasks = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json()["tasks"]
    return sorted(t["partition"] for t in tasks if t["subtopology"] == 1)


def _warm(port: int) -> bool:
    """Two standbys (the other instance's two stateful tasks), none behind."""
    count = _samples(port, "streamproc_standby_tasks")
    lag = _samples(port, "streamproc_standby_lag_records")
    return count == [({}, 2.0)] and len(lag) == 2 and all(v == 0 for _, v in lag)


def _restores(app: AppProcess, after: int, partitions: list[int]) -> list[dict[str, Any]]:
    """The stateful tasks' (sub-topology 1) completed restores past ``after``."""
    return [e for e in app.events("restore.completed", after)
            if e["task"] in {f"1_{p}" for p in partitions}]


def _wait(check: Any, timeout_s: float, what: str, *apps: AppProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        for app in apps:
            assert app.alive, app.log_text()[-3000:]
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s:\n" + "\n".join(
            app.log_text()[-2000:] for app in apps)
        time.sleep(0.2)


def test_a_standby_takes_over_without_restoring(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("standby"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 4), (sink, 4))
    lines = make_lines(3000, seed=23)
    env = {"T_APP": app_id, "T_IN": src, "T_OUT": sink}
    ports = {"a": free_port(), "b": free_port()}
    apps = {n: AppProcess("tests.apps:wordcount", kafka, tmp_path / n, tmp_path / f"{n}.log",
                          env, instance_id=n, http_port=ports[n], num_standby_replicas=1,
                          consume_batch_size=200) for n in ("a", "b")}
    a, b = apps["a"], apps["b"]
    topics = [src, f"{app_id}-words-repartition"]
    a.start()
    b.start()
    try:
        feed(kafka, src, [(None, ln.encode()) for ln in lines[:1500]], 3.0).join()
        assert io.wait_processed(kafka, app_id, topics, timeout_s=120), b.log_text()[-3000:]
        _wait(lambda: _warm(ports["a"]) and _warm(ports["b"]), 90, "warm standbys", a, b)
        held = _stateful_tasks(ports["a"])
        assert len(held) == 2 and _stateful_tasks(ports["b"]) == sorted({0, 1, 2, 3} - set(held))
        mark = len(b.log_text())
        a.kill9()
        feeder = feed(kafka, src, [(None, ln.encode()) for ln in lines[1500:2500]], 3.0)
        # B takes A's stateful tasks over: its standbys had every committed change, so the
        # restore starts where they were and finds nothing left.
        _wait(lambda: len(_restores(b, mark, held)) >= 2, 90, "B restoring A's tasks", b)
        restores = _restores(b, mark, held)
        assert sorted(e["partition"] for e in restores) == held
        assert all(e["from_offset"] > 0 and e["records"] == 0 for e in restores), restores
        released = b.events("standby.released", mark)
        assert sorted((e["task"], e["reason"]) for e in released) == [
            (f"1_{p}", "assigned here") for p in held]
        feeder.join()
        assert io.wait_processed(kafka, app_id, topics, timeout_s=120), b.log_text()[-3000:]
        # A comes back in place: it takes its tasks back and restores only what B wrote.
        mark_a, mark_b = len(a.log_text()), len(b.log_text())
        a.start()
        _wait(lambda: len(_restores(a, mark_a, held)) >= 2, 90, "A restoring its tasks", a, b)
        back = _restores(a, mark_a, held)
        # From the offset its stores had (a standby of them may even have caught up while
        # A rejoined), never from the changelog's start.
        assert all(e["from_offset"] > 0 and e["records"] < e["to_offset"] for e in back), back
        feed(kafka, src, [(None, ln.encode()) for ln in lines[2500:]], 2.0).join()
        assert io.wait_processed(kafka, app_id, topics, timeout_s=120), a.log_text()[-3000:]
        _wait(lambda: _warm(ports["a"]) and _warm(ports["b"]), 90, "warm standbys again", a, b)
        # B's standbys of the tasks that went back start from where its own stores got to.
        again = [e for e in b.events("standby.started", mark_b) if e["task"] in
                 {f"1_{p}" for p in held}]
        assert sorted(e["task"] for e in again) == [f"1_{p}" for p in held]
        assert all(min(e["changelogs"].values()) > 0 for e in again), again
    finally:
        codes = [app.terminate(timeout_s=90) if app.alive else 0 for app in (a, b)]
    assert codes == [0, 0], a.log_text()[-2000:] + b.log_text()[-2000:]
    assert_exactly_once(kafka, sink, lines)
    assert io.read_all(kafka, f"{app_id}-dlq") == []
