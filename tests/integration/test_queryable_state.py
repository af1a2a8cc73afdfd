"""Queryable state on the real broker: two instances of one application (in threads, each with
its own state dir and HTTP port) hold the four tasks of each sub-topology between them; every
key is asked of both, one answering from its store and the other proxying to it; redirects,
listings over every instance, a windowed store by key and time range, the error answers; and
after one instance stops, the other answers for every key."""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from confluent_kafka import Producer

from streamproc import Topology, codecs, windows
from streamproc.kafka import io
from streamproc.kafka.partitioner import partition_for
from streamproc.ops.instances import (
    MAC_HEADER,
    encode_entry,
    entry_mac,
    instances_topic,
    registry_key,
)
from streamproc.ops.query import FORWARDED
from streamproc.runtime.app import Application
from streamproc.types import TaskId
from tests.harness import create_topics, running, unique
from tests.local_http import json_answer, local_server
from tests.ops_client import base_url, by_label, get_json, scrape, wait_until

pytestmark = pytest.mark.kafka

PARTITIONS = 4
KEYS = [f"k{i}" for i in range(24)]
GRACE_MS = 3_600_000  # no window closes during the test: every one stays in the store
# Event times from here (a Kafka timestamp of 0 would mean "now" to the producer).
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def build(app_id: str, src: str, counts_out: str, windows_out: str) -> Topology:
    """Counts per Kafka key straight from the source (sub-topology 0), and per-second tumbling
    counts of the same key behind a repartition topic (sub-topology 1)."""
    t = Topology(app_id)
    s = t.source(src, key=codecs.string(), value=codecs.json(), timestamp=event_time)
    s.group_by_key().count(store="counts").to(counts_out, value=codecs.json())
    (s.group_by(key_of, key=codecs.string(), name="by-key")
     .window(windows.tumbling(1000, grace_ms=GRACE_MS)).count(store="per-second")
     .to(windows_out, value=codecs.json()))
    return t


def event_time(v: dict[str, Any]) -> int:
    return int(v["ts"])


def key_of(v: dict[str, Any]) -> str:
    return str(v["k"])


def records() -> list[tuple[str, int]]:
    """Key ``k{i}`` gets ``i % 5 + 1`` records, 700 ms apart from ``T0 + i`` ms."""
    return [(k, T0 + i + 700 * j) for i, k in enumerate(KEYS) for j in range(i % 5 + 1)]


def expected_windows() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, Counter[int]] = {k: Counter() for k in KEYS}
    for k, ts in records():
        out[k][ts - ts % 1000] += 1
    return {k: [{"start": s, "end": s + 1000, "value": n, "count": n, "fired": False}
                for s, n in sorted(c.items())] for k, c in out.items()}


def raw_get(url: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], Any]:
    """One GET that does not follow redirects."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}" if parts.query else parts.path,
                     headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, \
            json.loads(body) if body else None
    finally:
        conn.close()


def owner_of(apps: dict[str, Application], sub: int, partition: int) -> str | None:
    for instance, app in apps.items():
        task = app.tasks.get(TaskId(sub, partition))
        if task is not None and task.running:
            return instance
    return None


@pytest.fixture
def setup(kafka: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    app_id, src = unique("qs"), unique("qs-in")
    counts_out, windows_out = unique("qs-counts"), unique("qs-windows")
    create_topics(kafka, (src, PARTITIONS), (counts_out, PARTITIONS),
                  (windows_out, PARTITIONS))
    # io.produce partitions by murmur2 (Kafka's default), as key lookups on a store fed
    # straight from a source require.
    io.produce(kafka, src, [(k.encode(), json.dumps({"k": k, "ts": ts}).encode())
                            for k, ts in records()])
    yield {"app_id": app_id, "src": src, "topology": build(app_id, src, counts_out,
                                                           windows_out)}


def test_two_instances_answer_every_key(kafka: str, tmp_path: Path,
                                        setup: dict[str, Any]) -> None:
    app_id, topology = setup["app_id"], setup["topology"]
    counts = Counter(k for k, _ in records())
    per_second = expected_windows()
    settings = {"http_port": 0, "static_membership": False}
    with ExitStack() as stack:
        a = stack.enter_context(running(topology, kafka, tmp_path / "a", **settings))
        b_stack = stack.enter_context(ExitStack())
        b = b_stack.enter_context(running(topology, kafka, tmp_path / "b", **settings))
        urls = {"a": base_url(a), "b": base_url(b)}
        ids = {name: wait_until("/state", lambda u=u: get_json(u + "/state"),  # type: ignore
                                lambda r: r[0] == 200)[1]["instance"]
               for name, u in urls.items()}
        apps = {ids["a"]: a, ids["b"]: b}
        assert io.wait_processed(kafka, app_id, [setup["src"], f"{app_id}-by-key-repartition"],
                                 timeout_s=60)

        def settled(_: object = None) -> bool:
            # The cooperative rebalance has ended (each instance runs half of the eight
            # tasks), and both registries name every task's owner.
            if any(len(x.tasks) != PARTITIONS or not all(t.running for t in x.tasks.values())
                   for x in apps.values()):
                return False
            owners = {(s, p): owner_of(apps, s, p) for s in (0, 1) for p in range(PARTITIONS)}
            if None in owners.values():
                return False
            for u in urls.values():
                listed = {i["instance"]: set(i["tasks"]) for i in get_json(u + "/state")[1][
                    "instances"]}
                if any(f"{s}_{p}" not in listed.get(o, set()) for (s, p), o in owners.items()):
                    return False
            return True

        wait_until("both instances own tasks and know each other", lambda: settled(),
                   lambda ok: ok, timeout_s=60)

        # /state: the catalogue, with the partitions this instance serves.
        code, overview = get_json(urls["a"] + "/state")
        assert code == 200
        stores = {s["name"]: s for s in overview["stores"]}
        assert {n: (s["kind"], s["key_codec"], s["partitions"], s["queryable"])
                for n, s in stores.items()} == {
            "counts": ("key-value", "string", 4, True),
            "per-second": ("window", "string", 4, True),
            "by-key.source.time": ("time", "raw", 4, False)}  # the windows' watermark
        assert stores["counts"]["served"] == sorted(
            p for p in range(PARTITIONS) if owner_of(apps, 0, p) == ids["a"])

        # Every key on both instances: the exact count, answered by the key's owner (one
        # instance reads its store, the other proxies to it).
        def all_counts(base: str) -> list[tuple[int, Any, Any, Any]]:
            out = []
            for k in KEYS:
                code, body = get_json(f"{base}/state/counts/{k}")
                out.append((code, body.get("key"), body.get("value"), body.get("served_by")))
            return out

        def expected_counts() -> list[tuple[int, Any, Any, Any]]:
            return [(200, k, counts[k], owner_of(apps, 0, partition_for(k.encode(), 4)))
                    for k in KEYS]

        for base in urls.values():
            wait_until("every committed count", lambda b=base: all_counts(b),  # type: ignore
                       lambda got: got == expected_counts(), timeout_s=30)
        # Each instance holds half of the tasks and the keys cover every partition, so each
        # instance answered some keys itself and proxied others.
        assert {partition_for(k.encode(), 4) for k in KEYS} == set(range(PARTITIONS))
        for base in urls.values():
            served = {get_json(f"{base}/state/{store}/{k}")[1]["served_by"]
                      for store in ("counts", "per-second") for k in KEYS}
            assert served == set(ids.values())

        # ?redirect=1: a 307 to the owner (for its keys, the instance answers itself).
        for k in KEYS[:8]:
            owner = owner_of(apps, 0, partition_for(k.encode(), 4))
            for name, base in urls.items():
                code, headers, body = raw_get(f"{base}/state/counts/{k}?redirect=1")
                if owner == ids[name]:
                    assert (code, body["value"]) == (200, counts[k])
                else:
                    other = urls["b" if name == "a" else "a"]
                    assert code == 307
                    assert headers["location"] == f"{other}/state/counts/{k}"
                    # A request that was already forwarded once is never forwarded again.
                    code, headers, body = raw_get(f"{base}/state/counts/{k}",
                                                  {FORWARDED: "someone"})
                    assert (code, body["status"], headers["retry-after"]) == (
                        503, "owner_unknown", "1")

        # Windows by key and time range, on both instances.
        for k in ("k0", "k4", "k13", "k19"):
            for base in urls.values():
                code, body = get_json(f"{base}/state/per-second/{k}")
                assert (code, body["windows"]) == (200, per_second[k])
                code, body = get_json(
                    f"{base}/state/per-second/{k}?from={T0 + 1000}&to={T0 + 2000}")
                assert body["windows"] == [w for w in per_second[k]
                                           if T0 + 1000 <= w["start"] <= T0 + 2000]
                code, body = get_json(
                    f"{base}/state/per-second/{k}?from=2023-11-14T22:13:21Z&to={T0 + 1999}")
                assert body["windows"] == [w for w in per_second[k] if w["start"] == T0 + 1000]

        # Listing over every instance: each key once, in key order, with exact values.
        everything = sorted(KEYS)
        code, body = get_json(urls["b"] + "/state/counts?scope=all&limit=1000")
        assert code == 200
        assert [(i["key"], i["value"]) for i in body["items"]] == \
            [(k, counts[k]) for k in everything]
        assert (body["partitions"], body["complete"], body["truncated"], body["next"]) == \
            ([0, 1, 2, 3], True, False, None)
        # Pages of 7 through the whole store.
        seen: list[str] = []
        query = "scope=all&limit=7"
        while True:
            code, page = get_json(f"{urls['a']}/state/counts?{query}")
            assert code == 200
            seen += [i["key"] for i in page["items"]]
            if not page["truncated"]:
                break
            assert len(page["items"]) == 7
            query = f"scope=all&limit=7&from_key={quote(page['next'])}"
        assert seen == everything
        code, body = get_json(urls["a"] + "/state/counts?scope=all&prefix=k1&to_key=k15")
        assert [i["key"] for i in body["items"]] == ["k1", "k10", "k11", "k12", "k13", "k14"]
        # Local scope: only this instance's partitions.
        code, body = get_json(urls["a"] + "/state/counts?limit=1000")
        mine = set(stores["counts"]["served"])
        assert {i["key"] for i in body["items"]} == {
            k for k in KEYS if partition_for(k.encode(), 4) in mine}
        # Windows listed over every instance, by time.
        code, body = get_json(
            f"{urls['a']}/state/per-second?scope=all&from={T0 + 2000}&limit=1000")
        assert [(w["start"], w["key"], w["value"]) for w in body["items"]] == sorted(
            (w["start"], k, w["value"]) for k in KEYS for w in per_second[k]
            if w["start"] >= T0 + 2000)

        # What cannot be answered.
        code, body = get_json(urls["a"] + "/state/nope/k1")
        assert (code, body["status"], body["stores"]) == (
            404, "unknown_store", ["by-key.source.time", "counts", "per-second"])
        code, body = get_json(urls["a"] + "/state/counts/absent-key")
        assert (code, body["status"], body["key"]) == (404, "not_found", "absent-key")
        code, body = get_json(urls["a"] + "/state/counts/-?key_json=%5B1%2C2%5D")
        assert (code, body["status"]) == (400, "bad_request")
        assert "string" in body["error"]
        for bad in ("limit=0", "limit=10001", "limit=x", "scope=some", "from=yesterday"):
            code, body = get_json(f"{urls['a']}/state/counts?{bad}")
            assert (code, body["status"]) == (400, "bad_request"), bad
        code, body = get_json(urls["a"] + "/state/by-key.source.time/watermark")
        assert (code, body["status"]) == (400, "bad_request")

        # One instance stops (tombstone, rebalance): the other answers for every key alone.
        b_stack.close()
        survivors = {ids["a"]: a}

        def alone() -> list[tuple[int, Any, Any, Any]]:
            return [(200, k, counts[k], ids["a"]) for k in KEYS
                    if owner_of(survivors, 0, partition_for(k.encode(), 4)) == ids["a"]]

        wait_until("the survivor answers for every key", lambda: all_counts(urls["a"]),
                   lambda got: got == alone() and len(got) == len(KEYS), timeout_s=60)
        # The stopped instance's tombstone removes it from the registry.
        wait_until("the tombstone", lambda: [
            i["instance"] for i in get_json(urls["a"] + "/state")[1]["instances"]],
            lambda got: got == [ids["a"]], timeout_s=10)


SECRET = "registry-secret-0123456789"


def test_forged_registry_entries_are_ignored(kafka: str, tmp_path: Path,
                                             setup: dict[str, Any]) -> None:
    """Records written into ``{app}-instances`` by a bare producer, as anyone with write
    access to the topic could: none of the forged ones is taken (the instance never asks
    their URL), each is counted by reason; a correctly signed one is taken, which shows that
    a taken entry would have been asked."""
    app_id, topology = setup["app_id"], setup["topology"]
    topic = instances_topic(app_id)
    key = registry_key(SECRET)
    listing = json.dumps({"partitions": [], "restoring": [], "items": []}).encode()
    with running(topology, kafka, tmp_path / "a", http_port=0, static_membership=False,
                 http_registry_signing_key=SECRET) as a, \
            local_server(lambda _: json_answer(listing)) as trap:
        base = base_url(a)
        me = wait_until("/state", lambda: get_json(base + "/state"),
                        lambda r: r[0] == 200 and bool(r[1]["instances"]))[1]["instance"]

        def entry(name: str, url: str = trap.url, tasks: tuple[TaskId, ...] = (TaskId(0, 0),)
                  ) -> bytes:
            return encode_entry(name, url, tasks, [], 0, int(time.time() * 1000))

        def signed(name: str, value: bytes | None, secret_key: bytes = key
                   ) -> list[tuple[str, bytes]]:
            return [(MAC_HEADER, entry_mac(secret_key, topic, name.encode(), value))]

        forged = [
            ("forged-unsigned", entry("forged-unsigned"), None),
            ("forged-badsig", entry("forged-badsig"),
             signed("forged-badsig", entry("forged-badsig"), registry_key("x" * 20))),
            ("forged-metadata", v := entry("forged-metadata", "http://169.254.169.254:80"),
             signed("forged-metadata", v)),
            ("forged-fragment", v2 := entry("forged-fragment", trap.url + "/#"),
             signed("forged-fragment", v2)),
            ("forged-task", v3 := entry("forged-task", tasks=(TaskId(0, 99),)),
             signed("forged-task", v3)),
            (me, None, None),  # an unsigned tombstone for the live instance
        ]
        producer = Producer({"bootstrap.servers": kafka})
        for name, value, headers in forged:
            producer.produce(topic, value, name.encode(), headers=headers)
        assert producer.flush(10) == 0

        def rejected() -> dict[str, float]:
            return by_label(scrape(base), "streamproc_registry_records_rejected_total",
                            "reason")

        assert wait_until("the forged records counted", rejected,
                          lambda r: sum(r.values()) >= 6) == {
            "unsigned": 2.0, "bad_signature": 1.0, "bad_url": 2.0, "unknown_task": 1.0}
        code, state = get_json(base + "/state")
        assert [i["instance"] for i in state["instances"]] == [me]
        code, body = get_json(base + "/state/counts?scope=all")
        assert (code, body["instances"], body["errors"]) == (200, [me], [])
        assert trap.seen == []  # nobody asked the forged URLs

        # The control: an entry signed with the application's key is taken and asked. Its
        # claim on 0_0 is the newest only until the live instance's next heartbeat re-claims
        # every task (CI: that came between two requests), so the entry is written again
        # until one fan-out finds it owning 0_0.
        def fan_out() -> tuple[int, Any]:
            producer.produce(topic, entry("legit"), b"legit",
                             headers=signed("legit", entry("legit")))
            assert producer.flush(10) == 0
            wait_until("the signed entry", lambda: [
                i["instance"] for i in get_json(base + "/state")[1]["instances"]],
                lambda got: got == sorted([me, "legit"]))
            return get_json(base + "/state/counts?scope=all")
        code, body = wait_until("a fan-out to the signed entry", fan_out,
                                lambda r: r[1]["instances"] == [me, "legit"])
        assert code == 200
        assert {s.path.split("?")[0] for s in trap.seen} == {"/state/counts"}
        assert {s.headers["x-streamproc-forwarded-by"] for s in trap.seen} == {me}
