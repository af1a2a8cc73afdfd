"""The HTTP front of ``--workers`` (streamproc/ops/front.py) over two real worker HTTP servers
on loopback: probes, merged /metrics, /status, and the bearer token passed on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from streamproc.config import load_settings
from streamproc.ops.front import Front, WorkerView, merge_metrics
from streamproc.ops.http import HttpServer

TOKEN = "front-test-token-0123456789"
METRICS = """# HELP streamproc_records_consumed_total Input records processed.
# TYPE streamproc_records_consumed_total counter
streamproc_records_consumed_total{{topic="in",partition="{p}"}} {n}.0
# HELP streamproc_checkpoint_duration_seconds Checkpoint time.
# TYPE streamproc_checkpoint_duration_seconds histogram
streamproc_checkpoint_duration_seconds_bucket{{le="1.0"}} {n}.0
streamproc_checkpoint_duration_seconds_bucket{{le="+Inf"}} {n}.0
streamproc_checkpoint_duration_seconds_count {n}.0
streamproc_checkpoint_duration_seconds_sum 0.5
"""


class FakeWorker:
    """A worker's HTTP surface: answers as told, and records the Authorization it got."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.health = 200
        self.ready = 200
        self.authorization: list[str | None] = []

        def seen(request: Request) -> None:
            self.authorization.append(request.headers.get("authorization"))

        async def healthz(request: Request) -> Response:
            seen(request)
            return JSONResponse({"status": "ok"}, self.health)

        async def readyz(request: Request) -> Response:
            seen(request)
            return JSONResponse({"status": "ready"}, self.ready)

        async def metrics(request: Request) -> Response:
            seen(request)
            return PlainTextResponse(METRICS.format(p=index, n=10 * (index + 1)))

        async def status(request: Request) -> Response:
            seen(request)
            return JSONResponse({"instance": f"i{index}", "tasks": index + 1})

        app = Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                                Route("/metrics", metrics), Route("/status", status)])
        self.server = HttpServer(app, "127.0.0.1", 0)
        self.port = self.server.start()


@pytest.fixture
def workers() -> Iterator[list[FakeWorker]]:
    ws = [FakeWorker(0), FakeWorker(1)]
    yield ws
    for w in ws:
        w.server.stop()


def _front(workers: list[FakeWorker], states: list[str], **settings: Any
           ) -> tuple[Front, str]:
    def views() -> list[WorkerView]:
        return [WorkerView(index=w.index, port=w.port, state=st, restarts=w.index,
                           pid=1000 + w.index if st == "running" else None,
                           running_for_s=5.0, last_exit=None)
                for w, st in zip(workers, states, strict=True)]

    front = Front(load_settings(workers=2, http_port=0, **settings), views)
    return front, f"http://127.0.0.1:{front.start()}"


def test_probes_answer_for_every_worker(workers: list[FakeWorker]) -> None:
    states = ["running", "running"]
    front, url = _front(workers, states)
    try:
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200
        workers[1].health = 503
        answer = httpx.get(f"{url}/healthz")
        assert answer.status_code == 503
        assert answer.json()["workers"] == [
            {"worker": 0, "state": "running", "healthz": 200},
            {"worker": 1, "state": "running", "healthz": 503}]
        workers[1].health = 200
        states[1] = "backoff"  # being restarted: alive, not ready
        assert httpx.get(f"{url}/healthz").status_code == 200
        answer = httpx.get(f"{url}/readyz")
        assert answer.status_code == 503
        assert answer.json()["workers"][1] == {"worker": 1, "state": "backoff", "readyz": None}
        states[1] = "failed"
        assert httpx.get(f"{url}/healthz").status_code == 503
    finally:
        front.stop()


def test_metrics_are_merged_with_a_worker_label(workers: list[FakeWorker]) -> None:
    front, url = _front(workers, ["running", "running"])
    try:
        text = httpx.get(f"{url}/metrics").text
    finally:
        front.stop()
    assert text.count("# TYPE streamproc_records_consumed_total counter") == 1
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("streamproc_records_consumed_total",
                    (("partition", "0"), ("topic", "in"), ("worker", "0")))] == 10.0
    assert samples[("streamproc_records_consumed_total",
                    (("partition", "1"), ("topic", "in"), ("worker", "1")))] == 20.0
    assert samples[("streamproc_checkpoint_duration_seconds_count", (("worker", "1"),))] == 20
    assert samples[("streamproc_workers", ())] == 2
    assert samples[("streamproc_worker_up", (("worker", "0"),))] == 1
    assert samples[("streamproc_worker_restarts_total", (("worker", "1"),))] == 1


def test_status_lists_each_worker_with_its_own_status(workers: list[FakeWorker]) -> None:
    front, url = _front(workers, ["running", "backoff"])
    try:
        body = httpx.get(f"{url}/status").json()
    finally:
        front.stop()
    assert body == {"workers": [
        {"worker": 0, "state": "running", "pid": 1000, "port": workers[0].port,
         "restarts": 0, "last_exit": None, "status": {"instance": "i0", "tasks": 1}},
        {"worker": 1, "state": "backoff", "pid": None, "port": workers[1].port,
         "restarts": 1, "last_exit": None, "status": None, "error": "backoff"}]}


def test_the_token_guards_the_front_and_is_passed_on(workers: list[FakeWorker]) -> None:
    front, url = _front(workers, ["running", "running"], http_auth_token=TOKEN)
    try:
        assert httpx.get(f"{url}/status").status_code == 401
        wrong = httpx.get(f"{url}/status", headers={"authorization": "Bearer " + "x" * 20})
        assert wrong.status_code == 401
        ok = httpx.get(f"{url}/status", headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes open by default
    finally:
        front.stop()
    assert workers[0].authorization[-1] == f"Bearer {TOKEN}"
    assert set(workers[1].authorization) == {f"Bearer {TOKEN}"}


def test_merge_keeps_the_first_type_when_workers_disagree() -> None:
    a = "# TYPE m gauge\nm 1.0\n"
    b = "# TYPE m_total counter\nm_total 2.0\n"
    (family,) = merge_metrics({0: a, 1: b})
    assert family.type == "gauge"
    assert [(s.name, s.labels, s.value) for s in family.samples] == [("m", {"worker": "0"}, 1.0)]


def test_a_worker_answer_that_does_not_parse_is_left_out_whole() -> None:
    good = "# TYPE m gauge\nm 1.0\n"
    cut = "# TYPE m gauge\nm 2.0\n# TYPE n gauge\nn{a=\"x"
    (family,) = merge_metrics({0: cut, 1: good})
    assert [(s.name, s.labels, s.value) for s in family.samples] == [("m", {"worker": "1"}, 1.0)]
