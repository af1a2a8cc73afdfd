"""/state's limits and its requests to other instances, on a real HTTP server with real
RocksDB stores and a registry view, without a broker: scans bounded by
``http_state_max_scan`` (with a resume point that pages through exactly), prefix listings that
seek, ``limit`` capped, ``scope=all`` fan-out capped and other instances' answers checked,
proxied lookups capped in size and never redirected, concurrent requests capped, the token
sent to other instances, and /state switched off."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from streamproc import Topology, codecs, windows
from streamproc.config import load_settings
from streamproc.graph.compile import compile_topology
from streamproc.kafka.partitioner import partition_for
from streamproc.metrics import Metrics
from streamproc.ops.auth import AuthPolicy
from streamproc.ops.http import HttpContext, HttpServer, build_app
from streamproc.ops.instances import Entry, RegistryView
from streamproc.ops.prometheus import InstanceMetrics
from streamproc.ops.query import QueryState, state_routes
from streamproc.ops.status import StatusBoard, starting_snapshot
from streamproc.runtime.task import TaskState
from streamproc.state.store import KeyValueStore
from streamproc.state.windowed import WindowState, window_key
from streamproc.types import TaskId
from tests.local_http import Answer, LocalServer, json_answer, local_server
from tests.ops_client import wait_until

TOKEN = "s3cret-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PLAN = {0: 2, 1: 3}  # counts: 2 tasks (both here); w: 3 tasks (0 here, 1 and 2 elsewhere)
FILLERS = [f"b{i:03d}" for i in range(30)]


def _topology() -> Topology:
    t = Topology("limits")
    s = t.source("in", key=codecs.string(), value=codecs.json(), name="in")
    s.group_by_key().count(store="counts").to("out")
    (s.group_by(lambda v: v["k"], key=codecs.string(), name="by-k")
     .window(windows.tumbling(1000)).count(store="w").to("w-out"))
    return t


def key_in(partition: int, partitions: int, prefix: str = "k") -> str:
    """The first key ``{prefix}{i}`` that Kafka's partitioner puts in ``partition``."""
    return next(f"{prefix}{i}" for i in range(1000)
                if partition_for(f"{prefix}{i}".encode(), partitions) == partition)


@dataclass
class Instance:
    base: str
    qs: QueryState
    target: str  # a window key held here, sorting after every filler key

    def get(self, path: str, **params: Any) -> tuple[int, Any, httpx.Headers]:
        r = httpx.get(self.base + path, params=params, headers=AUTH, timeout=10)
        return r.status_code, r.json() if r.content else None, r.headers

    def owners(self, **urls: tuple[str, list[tuple[int, int]]]) -> None:
        """The registry's view: instance -> (URL, tasks)."""
        entries = {name: Entry(name, url, frozenset(TaskId(*t) for t in tasks), frozenset(),
                               0, 0, 1000 + i)
                   for i, (name, (url, tasks)) in enumerate(sorted(urls.items()))}
        self.qs.registry = SimpleNamespace(view=RegistryView.of(entries, True))  # type: ignore


def _stores(tmp: Path, cat: dict[str, Any]) -> tuple[dict[str, dict[int, Any]], str]:
    counts = {p: KeyValueStore("counts", p, tmp / "counts" / str(p), cat["counts"].value_codec)
              for p in (0, 1)}
    # 60 keys in partition 0 (a0000..a0059) and 5 z-keys after 1000 other keys in partition 1.
    counts[0].open()
    counts[0].commit([(f"a{i:04d}".encode(), b"1") for i in range(60)], 1)
    counts[1].open()
    counts[1].commit([(f"m{i:04d}".encode(), b"2") for i in range(1000)]
                     + [(f"z{i}".encode(), b"3") for i in range(5)], 1)
    w = KeyValueStore("w", 0, tmp / "w" / "0", cat["w"].value_codec)
    w.open()
    target = key_in(0, PLAN[1])  # "k..." sorts after every "b..." filler
    enc = cat["w"].value_codec.encode
    w.commit([(window_key(s, s + 1000, k.encode()), enc(WindowState(n, n, s, s)))
              for s in range(0, 10_000, 1000) for n, k in enumerate([*FILLERS, target], 1)], 1)
    return {"counts": counts, "w": {0: w}}, target


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Instance]:
    settings = load_settings(http_state_max_scan="100", http_state_max_rows="50",
                             http_state_max_fanout="1", http_state_max_concurrent="1",
                             http_proxy_max_response_bytes="65536",
                             http_proxy_timeout_ms="3000", http_auth_token=TOKEN)
    compiled = compile_topology(_topology())
    app = SimpleNamespace(app_id="limits", compiled=compiled, settings=settings,
                          tasks_per_subtopology=PLAN, metrics=Metrics())
    qs = QueryState(app)  # type: ignore[arg-type]
    stores, target = _stores(tmp_path, qs.catalog)
    tasks = {TaskId(0, p): SimpleNamespace(state=TaskState.RUNNING, running=True,
                                           stores={"counts": stores["counts"][p]})
             for p in (0, 1)}
    tasks[TaskId(1, 0)] = SimpleNamespace(state=TaskState.RUNNING, running=True,
                                          stores={"w": stores["w"][0]})
    qs.tick(0.0, tasks)  # type: ignore[arg-type]
    qs.instance = "me"
    board = StatusBoard(starting_snapshot("limits", "exactly_once", 0), stuck_after_s=10.0)
    ctx = HttpContext(board=board, metrics=InstanceMetrics(board), settings=settings, query=qs,
                      topology={}, auth=AuthPolicy(SecretStr(TOKEN)),
                      on_shutdown=(qs.peers.aclose,))
    server = HttpServer(build_app(ctx, [state_routes]), "127.0.0.1", 0)
    port = server.start()
    inst = Instance(f"http://127.0.0.1:{port}", qs, target)
    inst.owners(me=(inst.base, [(0, 0), (0, 1), (1, 0)]))
    try:
        yield inst
    finally:
        server.stop()
        for per in stores.values():
            for s in per.values():
                s.close()


def test_a_window_lookup_reads_at_most_max_scan_entries_and_resumes(
        instance: Instance) -> None:
    pages, query = [], {}
    while True:
        code, body, _ = instance.get(f"/state/w/{instance.target}", **query)
        assert code == 200
        pages.append(([w["start"] for w in body["windows"]], body["scan_limited"],
                      body["truncated"], body["resume_from"]))
        if body["resume_from"] is None:
            break
        query = {"from": str(body["resume_from"])}
    # 31 entries per window start; 100 entries read per request: three starts and a bit.
    assert pages == [([0, 1000, 2000], True, True, 3000),
                     ([3000, 4000, 5000], True, True, 6000),
                     ([6000, 7000, 8000], True, True, 9000),
                     ([9000], False, False, None)]
    # A narrow time range seeks: one start's entries only, nothing left to resume.
    code, body, _ = instance.get(f"/state/w/{instance.target}", **{"from": "7000",
                                                                   "to": "7999"})
    assert ([w["start"] for w in body["windows"]], body["scan_limited"]) == ([7000], False)
    # limit counts matches: two of them, then where to go on.
    code, body, _ = instance.get(f"/state/w/{instance.target}", limit="2")
    assert ([w["start"] for w in body["windows"]], body["truncated"], body["resume_from"]) \
        == ([0, 1000], True, 2000)


def test_listings_seek_to_a_prefix_and_share_the_scan_budget(instance: Instance) -> None:
    # Partition 1 holds 1000 keys before the z-keys: the prefix seeks past them.
    code, body, _ = instance.get("/state/counts", prefix="z")
    assert (code, [i["key"] for i in body["items"]], body["scan_limited"],
            body["truncated"]) == (200, ["z0", "z1", "z2", "z3", "z4"], False, False)
    # Two partitions share 100 entries: 50 each, and limit=50 needs 51 to know there is more.
    code, body, _ = instance.get("/state/counts", limit="50")
    assert [i["key"] for i in body["items"]] == [f"a{i:04d}" for i in range(50)]
    assert (body["truncated"], body["scan_limited"], body["next"]) == (True, True, "a0050")
    # Every key before "next" was in the page; from there the next page goes on.
    code, body, _ = instance.get("/state/counts", limit="50", from_key="a0050")
    assert [i["key"] for i in body["items"]][:10] == [f"a{i:04d}" for i in range(50, 60)]
    code, body, _ = instance.get("/state/counts", limit="51")
    assert (code, body["status"]) == (400, "bad_request")
    assert "between 1 and 50 (http_state_max_rows)" in body["error"]
    for bad in ("-1", "1e3", "٣", "9" * 30):
        assert instance.get("/state/counts", limit=bad)[0] == 400


def _listing(partition: int, rows: list[dict[str, Any]], **extra: Any) -> Answer:
    return json_answer(orjson.dumps({"partitions": [partition], "restoring": [],
                                     "items": rows, **extra}))


def test_fan_out_is_capped_and_answers_are_checked(instance: Instance) -> None:
    row = {"key": "x", "start": 500, "end": 1500, "value": 1, "count": 1, "fired": False}
    with local_server(lambda _: _listing(1, [{**row, "partition": 1}])) as a, \
            local_server(lambda _: _listing(2, [{**row, "partition": 2}])) as b:
        instance.owners(me=(instance.base, [(1, 0)]), pa=(a.url, [(1, 1)]),
                        pb=(b.url, [(1, 2)]))
        code, body, _ = instance.get("/state/w", scope="all", to="999")
        assert code == 200
        assert ([(i["key"], i["partition"]) for i in body["items"]],
                body["instances"], body["complete"], body["missing"]) == (
            # In (start, end, key) order: the local windows start at 0, pa's at 500.
            [(k, 0) for k in [*FILLERS, instance.target]] + [("x", 1)], ["me", "pa"], False,
            [2])
        assert body["errors"] == [{"instance": "pb", "url": b.url, "error":
                                   "not asked: more than 1 other instances "
                                   "(http_state_max_fanout)"}]
        assert (len(a.seen), len(b.seen)) == (1, 0)
        assert a.seen[0].path.startswith("/state/w?")
        assert "scope=local" in a.seen[0].path
        assert a.seen[0].headers["authorization"] == f"Bearer {TOKEN}"
        assert a.seen[0].headers["x-streamproc-forwarded-by"] == "me"

    # An answer claiming partitions that do not exist, or rows of partitions it does not
    # serve, is not merged.
    for bad in (_listing(7, []), _listing(1, [{**row, "partition": 2}]),
                _listing(1, [{"key": "x", "partition": 1}]),  # a window row without times
                json_answer(b"[]"), (200, {"content-length": "3"}, [b"{x}"])):
        with local_server(lambda _, bad=bad: bad) as a:  # type: ignore[misc]
            instance.owners(me=(instance.base, [(1, 0)]), pa=(a.url, [(1, 1)]))
            code, body, _ = instance.get("/state/w", scope="all", to="999")
            assert (code, body["instances"], body["complete"]) == (200, ["me"], False)
            assert body["errors"][0]["status"] == "owner_bad_answer"


def _elsewhere(instance: Instance, server: LocalServer) -> str:
    """A key of partition 1 of ``w``, which ``server`` holds."""
    instance.owners(me=(instance.base, [(1, 0)]), other=(server.url, [(1, 1)]))
    return key_in(1, PLAN[1])


def test_proxied_lookups_are_capped_and_never_redirected(instance: Instance) -> None:
    with local_server(lambda _: json_answer(b'{"windows": []}')) as target, \
            local_server(lambda p: (307, {"location": target.url + p,
                                          "content-length": "0"}, [])) as redirecting:
        key = _elsewhere(instance, redirecting)
        code, body, headers = instance.get(f"/state/w/{key}")
        assert (code, body["status"], body["owner"], headers["retry-after"]) == (
            502, "owner_bad_answer", "other", "1")
        assert (len(redirecting.seen), target.seen) == (1, [])
        # ?redirect=1: the Location is built from the entry's parsed host and port.
        r = httpx.get(f"{instance.base}/state/w/{key}", params={"redirect": "1", "to": "5"},
                      headers=AUTH)
        assert (r.status_code, r.headers["location"]) == (
            307, f"{redirecting.url}/state/w/{key}?to=5")
    with local_server(lambda _: json_answer(b'{"v": "' + b"x" * 70_000 + b'"}')) as big:
        key = _elsewhere(instance, big)
        code, body, _ = instance.get(f"/state/w/{key}")
        assert (code, body["status"]) == (502, "owner_answer_too_large")
    with local_server(lambda _: json_answer(b'{"windows": [], "served_by": "other"}')) as ok:
        key = _elsewhere(instance, ok)
        code, body, headers = instance.get(f"/state/w/{key}")
        assert (code, body, headers["x-streamproc-served-by"]) == (
            200, {"windows": [], "served_by": "other"}, "other")
        assert ok.seen[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_concurrent_requests_are_capped(instance: Instance) -> None:
    release = threading.Event()

    def slow(_: str) -> Answer:
        release.wait(10)
        return json_answer(b'{"windows": []}')

    with local_server(slow) as peer:
        key = _elsewhere(instance, peer)
        first: list[int] = []
        t = threading.Thread(target=lambda: first.append(instance.get(f"/state/w/{key}")[0]))
        t.start()
        try:
            wait_until("the first request in flight", lambda: instance.qs.inflight,
                       lambda n: n == 1, timeout_s=10, every_s=0.01)
            code, body, headers = instance.get("/state")
            assert (code, body["status"], headers["retry-after"]) == (503, "busy", "1")
            assert "http_state_max_concurrent" in body["error"]
        finally:
            release.set()
            t.join(10)
    assert first == [200]
    assert instance.get("/state")[0] == 200


def test_state_can_be_switched_off(tmp_path: Path) -> None:
    board = StatusBoard(starting_snapshot("x", "exactly_once", 0), stuck_after_s=10.0)
    ctx = HttpContext(board=board, metrics=InstanceMetrics(board),
                      settings=load_settings(http_state_enabled="false"), topology={})
    server = HttpServer(build_app(ctx, [state_routes]), "127.0.0.1", 0)
    port = server.start()
    try:
        for path in ("/state", "/state/counts", "/state/counts/k"):
            r = httpx.get(f"http://127.0.0.1:{port}{path}")
            assert (r.status_code, r.json()["status"]) == (404, "disabled")
    finally:
        server.stop()
