"""The HTTP endpoint on a real socket, fed synthetic snapshots (no broker): status codes,
bodies, Prometheus names and values, the route seam, and the settings that configure it."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamproc.config import load_settings
from streamproc.errors import ConfigError
from streamproc.ops import http
from streamproc.ops.http import HttpContext, HttpServer, build_app, register_routes
from streamproc.ops.prometheus import InstanceMetrics
from streamproc.ops.status import (
    CheckpointStatus,
    RestoreStatus,
    StatusBoard,
    StoreStatus,
    starting_snapshot,
)
from tests.unit.test_ops_status import Clock, running_snapshot

TOPOLOGY = {"application_id": "wc", "source_topics": ["in"], "sink_topics": ["out"]}


@dataclass
class Served:
    base: str
    board: StatusBoard
    clock: Clock
    metrics: InstanceMetrics


@pytest.fixture
def served() -> Iterator[Served]:
    clock = Clock()
    board = StatusBoard(starting_snapshot("wc", "exactly_once", 0), stuck_after_s=10.0,
                        clock=clock)
    metrics = InstanceMetrics(board)
    ctx = HttpContext(board=board, metrics=metrics, settings=None, topology=TOPOLOGY)

    async def state(request: Request) -> Response:
        return PlainTextResponse(f"store {request.path_params['store']}")

    server = HttpServer(build_app(ctx, [lambda _ctx: [Route("/state/{store}", state)]]),
                        "127.0.0.1", 0)
    port = server.start()
    try:
        yield Served(f"http://127.0.0.1:{port}", board, clock, metrics)
    finally:
        server.stop()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["content-type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


def get_json(url: str) -> tuple[int, Any]:
    code, ctype, body = get(url)
    assert ctype == "application/json"
    return code, json.loads(body)


def test_healthz_follows_the_loops_heartbeat(served: Served) -> None:
    assert get_json(served.base + "/healthz") == (200, {
        "status": "ok", "state": "starting", "last_poll_age_seconds": 0.0,
        "stuck_after_seconds": 10.0})
    served.clock.now += 10.5
    code, body = get_json(served.base + "/healthz")
    assert code == 503
    assert body["status"] == "stuck"
    assert body["reason"] == "the loop has not polled Kafka for 10.5 s (limit 10 s)"
    served.board.beat(served.clock.now)
    assert get_json(served.base + "/healthz")[0] == 200


def test_readyz_waits_for_running_and_restored(served: Served) -> None:
    code, body = get_json(served.base + "/readyz")
    assert (code, body["status"], body["reason"]) == (503, "not_ready",
                                                       "the instance is starting")
    served.board.publish(running_snapshot(restoring=(
        RestoreStatus("0_1", "counts", "wc-counts-changelog", 1, 10, 100, 90),)))
    code, body = get_json(served.base + "/readyz")
    assert (code, body["restoring"]) == (503, ["0_1"])
    served.board.publish(running_snapshot())
    assert get_json(served.base + "/readyz") == (200, {
        "status": "ready", "state": "running", "tasks": 2, "restoring": []})


def test_metrics_are_prometheus_text_with_conventional_names(served: Served) -> None:
    served.board.publish(running_snapshot(
        counters={
            ("records_consumed_total", (("partition", "0"), ("topic", "in"))): 5.0,
            ("records_consumed_total", (("partition", "1"), ("topic", "in"))): 4.0,
            ("records_failed_total", (("error_type", "CodecError"), ("policy", "dead_letter"),
                                      ("topic", "in"))): 2.0,
            ("late_records_total", (("operator", "w"), ("policy", "drop"))): 3.0,
            ("checkpoint_duration_seconds_total", ()): 9.0,
            ("rebalances_total", ()): 1.0,
        },
        produced_by_partition={("out", 0): (7, 70)},
        restored_records=120, restored_bytes=4096,
        restoring=(RestoreStatus("0_1", "counts", "wc-counts-changelog", 1, 10, 100, 90),),
        stores=(StoreStatus("counts", 0, 2048, 512, 33),),
        checkpoint=CheckpointStatus(4, 0, 0.02, 11, 300, 1_700_000_000_000)))
    served.metrics.observe_checkpoint(0.02, 11, 300)
    code, ctype, body = get(served.base + "/metrics")
    assert code == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    expected = {
        ("streamproc_records_consumed_total", (("partition", "0"), ("topic", "in"))): 5.0,
        ("streamproc_records_consumed_total", (("partition", "1"), ("topic", "in"))): 4.0,
        ("streamproc_records_failed_total", (("error_type", "CodecError"),
                                             ("policy", "dead_letter"), ("topic", "in"))): 2.0,
        ("streamproc_late_records_total", (("operator", "w"), ("policy", "drop"))): 3.0,
        ("streamproc_rebalances_total", ()): 1.0,
        ("streamproc_consumer_lag_records", (("partition", "0"), ("topic", "in"))): 0.0,
        ("streamproc_consumer_lag_records", (("partition", "1"), ("topic", "in"))): 5.0,
        ("streamproc_consumer_committed_offset", (("partition", "1"), ("topic", "in"))): 3.0,
        ("streamproc_consumer_position_offset", (("partition", "1"), ("topic", "in"))): 4.0,
        ("streamproc_consumer_high_watermark_offset",
         (("partition", "1"), ("topic", "in"))): 9.0,
        ("streamproc_records_produced_total", (("partition", "0"), ("topic", "out"))): 7.0,
        ("streamproc_produced_bytes_total", (("partition", "0"), ("topic", "out"))): 70.0,
        ("streamproc_watermark_seconds", (("task", "0_1"),)): 1.5,
        ("streamproc_watermark_lag_seconds", (("task", "0_1"),)): 0.5,
        ("streamproc_restore_records_total", ()): 120.0,
        ("streamproc_restore_bytes_total", ()): 4096.0,
        ("streamproc_restore_remaining_records", (("store", "counts"), ("task", "0_1"))): 90.0,
        ("streamproc_restoring_stores", ()): 1.0,
        ("streamproc_state_sst_bytes", (("partition", "0"), ("store", "counts"))): 2048.0,
        ("streamproc_state_memtable_bytes", (("partition", "0"), ("store", "counts"))): 512.0,
        ("streamproc_state_keys", (("partition", "0"), ("store", "counts"))): 33.0,
        ("streamproc_checkpoint_duration_seconds_count", ()): 1.0,
        ("streamproc_checkpoint_duration_seconds_sum", ()): 0.02,
        ("streamproc_checkpoint_duration_seconds_bucket", (("le", "0.025"),)): 1.0,
        ("streamproc_checkpoint_duration_seconds_bucket", (("le", "0.01"),)): 0.0,
        ("streamproc_checkpoint_size_bytes_sum", ()): 300.0,
        ("streamproc_checkpoint_last_changelog_records", ()): 11.0,
        ("streamproc_checkpoint_last_timestamp_seconds", ()): 1_700_000_000.0,
        ("streamproc_tasks", (("state", "running"),)): 2.0,
        ("streamproc_ready", ()): 0.0,  # a store is still restoring
        ("streamproc_instance_info", (("app_id", "wc"), ("guarantee", "exactly_once"),
                                      ("instance_id", "i1"))): 1.0,
    }
    assert {k: samples.get(k) for k in expected} == expected
    # The engine's duration counter is replaced by the histogram; every name is prefixed.
    assert not any(name.startswith("streamproc_checkpoint_duration_seconds_total")
                   for name, _ in samples)
    assert all(name.startswith("streamproc_") for name, _ in samples)


def test_topology_status_and_dashboard(served: Served) -> None:
    assert get_json(served.base + "/topology") == (200, TOPOLOGY)
    served.board.publish(running_snapshot())
    code, body = get_json(served.base + "/status")
    assert code == 200
    assert (body["app_id"], body["ready"], body["healthy"]) == ("wc", True, True)
    assert [(p["topic"], p["partition"], p["lag"]) for p in body["partitions"]] == [
        ("in", 0, 0), ("in", 1, 5)]
    code, ctype, page = get(served.base + "/")
    assert (code, ctype) == (200, "text/html; charset=utf-8")
    assert b'<script src="dashboard.js"></script>' in page
    code, ctype, js = get(served.base + "/dashboard.js")
    assert (code, ctype) == (200, "text/javascript; charset=utf-8")
    assert b'get("status")' in js
    assert get(served.base + "/dashboard.css")[0] == 200
    assert get(served.base + "/nope")[0] == 404


def test_more_routes_plug_in_through_providers(served: Served) -> None:
    assert get(served.base + "/state/counts")[2] == b"store counts"

    def provider(_ctx: HttpContext) -> list[Route]:
        return []

    try:
        assert register_routes(provider) is provider
        register_routes(provider)
        assert http._PROVIDERS.count(provider) == 1
    finally:
        http._PROVIDERS.remove(provider)


def test_a_taken_port_fails_fast_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        board = StatusBoard(starting_snapshot("wc", "exactly_once", 0), stuck_after_s=10.0)
        ctx = HttpContext(board=board, metrics=InstanceMetrics(board), settings=None, topology={})
        with pytest.raises(ConfigError) as err:
            HttpServer(build_app(ctx, []), "127.0.0.1", port).start()
    assert err.value.setting == "http_port (env STREAMPROC_HTTP_PORT, flag --http-port)"
    assert f"cannot listen on 127.0.0.1:{port}" in err.value.problem


def test_http_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.http_port, s.http_host, s.health_stuck_after_ms) == (None, "127.0.0.1", 60_000)
    monkeypatch.setenv("STREAMPROC_HTTP_PORT", "0")
    assert load_settings().http_port == 0
    assert load_settings(http_port="8080").http_port == 8080
    for bad in ("-1", "65536", "http"):
        with pytest.raises(ConfigError) as err:
            load_settings(http_port=bad)
        assert err.value.setting.startswith("http_port (env STREAMPROC_HTTP_PORT")
    with pytest.raises(ConfigError) as err:
        load_settings(health_stuck_after_ms="500")
    assert err.value.setting.startswith("health_stuck_after_ms")
    with pytest.raises(ConfigError) as err:
        load_settings(http_host="")
    assert err.value.setting.startswith("http_host")
