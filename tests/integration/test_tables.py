"""Tables and stream-table joins on the real broker, as ``streamproc run`` processes.

The customers topic is the table's changelog: no changelog topic is created; a restore reads
the topic up to the committed offset; a kill -9 at any point (named crash points and random
moments) leaves every payment enriched exactly once; a starting task reads its table before
its stream, so a backlog of payments is joined with the rows written before it.
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streamproc.kafka import io
from streamproc.kafka.admin import TopicAdmin
from tests.harness import AppProcess, crash_while_fed, create_topics, feed, unique, wait_event
from tests.integration.wordcount_check import store_contents

pytestmark = [pytest.mark.kafka]

PARTITIONS = 3


def _setup(kafka: str, tmp_path: Path) -> tuple[AppProcess, dict[str, str]]:
    # The table's topic sorts after the stream's: the consumer would fetch the payments first
    # if the starting task did not hold them until the table had caught up.
    names = {"app": unique("enrich"), "table": unique("zz-customers"), "in": unique("payments"),
             "out": unique("enriched"), "changes": unique("changes")}
    create_topics(kafka, *((names[k], PARTITIONS) for k in ("table", "in", "out", "changes")))
    app = AppProcess("tests.apps:enrichment", kafka, tmp_path / "state", tmp_path / "app.log",
                     {"T_APP": names["app"], "T_TABLE": names["table"], "T_IN": names["in"],
                      "T_OUT": names["out"], "T_CHANGES": names["changes"]},
                     consume_batch_size=100)
    return app, names


def _customers(n: int, seed: int) -> tuple[list[tuple[bytes, bytes | None]], dict[str, str]]:
    """Rows for customers c000..c{n-1} (some updated twice, every tenth deleted) and five
    undecodable records; returns the records and the final tier per customer."""
    rng = random.Random(seed)
    records: list[tuple[bytes, bytes | None]] = []
    final: dict[str, str] = {}
    for i in range(n):
        name = f"c{i:03d}"
        for _ in range(rng.choice((1, 2))):
            tier = rng.choice(("gold", "silver", "basic"))
            records.append((name.encode(), json.dumps({"tier": tier}).encode()))
            final[name] = tier
        if i % 10 == 0:
            records.append((name.encode(), None))
            del final[name]
    for i in range(5):
        records.append((f"bad{i}".encode(), b"{not json"))
    return records, final


def _payments(n: int, customers: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    return [(f"c{rng.randrange(customers + 20):03d}".encode(),
             json.dumps({"id": i, "amount": rng.randrange(1, 500)}).encode()) for i in range(n)]


def _check_enriched(kafka: str, topic: str, payments: list[tuple[bytes, bytes]],
                    tiers: dict[str, str | None]) -> None:
    """Every payment exactly once, with its customer's tier (None: no row)."""
    out = io.read_all(kafka, topic)
    ids = Counter(json.loads(r.value or b"")["id"] for r in out)
    repeated = {i: n for i, n in ids.items() if n != 1}
    assert not repeated, f"payments seen more than once: {list(repeated.items())[:10]}"
    assert len(ids) == len(payments), f"{len(payments) - len(ids)} payments lost"
    wrong = []
    for r in out:
        v = json.loads(r.value or b"")
        key = (r.key or b"").decode()
        if v["tier"] != tiers.get(key):
            wrong.append((key, v, tiers.get(key)))
    assert not wrong, f"{len(wrong)} payments with the wrong tier, e.g. {wrong[:5]}"


def _changes(kafka: str, topic: str) -> list[tuple[str, Any]]:
    return [((r.key or b"").decode(), None if r.value is None else json.loads(r.value))
            for r in io.read_all(kafka, topic)]


@pytest.mark.crash
def test_enrichment_is_exactly_once_across_kill9_at_every_point(kafka: str,
                                                                tmp_path: Path) -> None:
    app, n = _setup(kafka, tmp_path)
    rows, tiers = _customers(150, seed=3)
    io.produce(kafka, n["table"], rows)  # before the first start: read before any payment
    payments = _payments(2400, 150, seed=4)
    feeder = feed(kafka, n["in"], list(payments), seconds=10)
    # Kafka committed but RocksDB not written (restore from the topic to the committed
    # offset), offsets sent but not committed (aborted), and mid-interval.
    crash_while_fed(app, feeder, [("after_commit", 2), ("before_commit", 3),
                                  ("after_commit", 4), ("after_process", 5)], seed=5)
    app.start()
    assert io.wait_processed(kafka, n["app"], [n["table"], n["in"]], timeout_s=120), \
        app.log_text()[-3000:]
    assert app.terminate() == 0

    _check_enriched(kafka, n["out"], payments, dict(tiers))
    # The table's changes, each exactly once, in order per customer.
    expected: dict[str, list[Any]] = {}
    for k, v in rows:
        if k.startswith(b"c"):
            expected.setdefault(k.decode(), []).append(None if v is None else json.loads(v))
    got: dict[str, list[Any]] = {}
    for k, v in _changes(kafka, n["changes"]):
        got.setdefault(k, []).append(v)
    assert got == expected
    # The undecodable rows were dead-lettered once each, in spite of every restore reading them.
    dead = io.read_all(kafka, f"{n['app']}-dlq")
    assert sorted(r.key for r in dead) == [f"bad{i}".encode() for i in range(5)]
    assert store_contents(tmp_path / "state", n["app"], "customers", PARTITIONS) == \
        {k: {"tier": t} for k, t in tiers.items()}
    # The customers topic is the changelog: none was created for the store.
    topics = TopicAdmin(kafka).partitions([f"{n['app']}-customers-changelog"])
    assert topics == {f"{n['app']}-customers-changelog": None}
    restores = app.events("restore.started")
    assert restores and all(e["changelog"] == n["table"] and e["to_offset"] >= e["from_offset"]
                            for e in restores)


def test_table_updates_reach_later_records_and_a_lost_state_dir_restores_from_the_topic(
        kafka: str, tmp_path: Path) -> None:
    app, n = _setup(kafka, tmp_path)
    io.produce(kafka, n["table"], [(b"ann", b'{"tier":"gold"}'), (b"bob", b'{"tier":"basic"}')])
    # A backlog at the first start, fetched with the table: the table is read first.
    first = [(k, json.dumps({"id": i}).encode())
             for i, k in enumerate([b"ann", b"bob", b"cid"] * 300)]
    io.produce(kafka, n["in"], first)
    app.start()
    assert io.wait_processed(kafka, n["app"], [n["table"], n["in"]], timeout_s=60), \
        app.log_text()[-3000:]
    io.produce(kafka, n["table"], [(b"ann", b'{"tier":"platinum"}'), (b"bob", None),
                                   (b"cid", b'{"tier":"silver"}')])
    assert io.wait_processed(kafka, n["app"], [n["table"]], timeout_s=60)
    second = [(b"ann", b'{"id":1004}'), (b"bob", b'{"id":1005}'), (b"cid", b'{"id":1006}')]
    io.produce(kafka, n["in"], second)
    assert io.wait_processed(kafka, n["app"], [n["in"]], timeout_s=60)
    assert app.terminate() == 0
    offsets = io.committed_offsets(kafka, n["app"], n["table"])
    committed = sum(max(o, 0) for o in offsets.values())
    assert committed == 5

    shutil.rmtree(tmp_path / "state")
    mark = len(app.log_text())
    app.start()
    done = wait_event(app, "restore.completed", 60, after=mark)
    assert sum(e["records"] for e in done) == 5  # every row record of the topic, none past it
    third = [(b"ann", b'{"id":1007}'), (b"bob", b'{"id":1008}')]
    io.produce(kafka, n["in"], third)
    assert io.wait_processed(kafka, n["app"], [n["in"]], timeout_s=60)
    assert app.terminate() == 0

    got = sorted((json.loads(r.value or b"")["id"], json.loads(r.value or b"")["tier"])
                 for r in io.read_all(kafka, n["out"]))
    tier = {0: "gold", 1: "basic", 2: None}
    assert got == [(i, tier[i % 3]) for i in range(900)] + [
        (1004, "platinum"), (1005, None), (1006, "silver"), (1007, "platinum"), (1008, None)]
    assert app.events("table.bootstrap_started")
    started = app.events("restore.started", after=mark)
    assert {e["from_offset"] for e in started} == {0}
    assert sum(e["to_offset"] for e in started) == 5


def test_a_join_of_topics_with_different_partition_counts_stops_at_start(
        kafka: str, tmp_path: Path) -> None:
    app, n = _setup(kafka, tmp_path)
    other = unique("payments2")
    create_topics(kafka, (other, 2))
    app.env["T_IN"] = other
    app.start()
    assert app.wait(60) != 0
    text = app.log_text()
    assert f"table {n['table']} is joined with topics of another partition count " \
           f"({n['table']} has 3, {other} has 2)" in text, text[-2000:]


@pytest.mark.crash
def test_a_global_table_of_another_partition_count_enriches_exactly_once_across_kill9(
        kafka: str, tmp_path: Path) -> None:
    app_id, table, src, out = (unique("global"), unique("merchants"), unique("payments"),
                               unique("categorized"))
    create_topics(kafka, (table, 2), (src, 3), (out, 3))
    categories = {f"m{i:02d}": random.Random(i).choice(("food", "fuel", "books"))
                  for i in range(40)}
    io.produce(kafka, table, [(m.encode(), json.dumps({"category": c}).encode())
                              for m, c in categories.items()] + [(b"m99", b"{oops")])
    rng = random.Random(8)
    payments = [(f"c{rng.randrange(50)}".encode(),
                 json.dumps({"id": i, "merchant": f"m{rng.randrange(45):02d}"}).encode())
                for i in range(1500)]
    app = AppProcess("tests.apps:merchant_categories", kafka, tmp_path / "state",
                     tmp_path / "app.log", {"T_APP": app_id, "T_TABLE": table, "T_IN": src,
                                            "T_OUT": out}, consume_batch_size=100)
    feeder = feed(kafka, src, payments, seconds=6)
    crash_while_fed(app, feeder, [("after_commit", 2), ("before_commit", 3)], seed=9)
    app.start()
    assert io.wait_processed(kafka, app_id, [src], timeout_s=120), app.log_text()[-3000:]
    assert app.terminate() == 0

    got = [json.loads(r.value or b"") for r in io.read_all(kafka, out)]
    assert Counter(v["id"] for v in got) == Counter(range(1500))  # each exactly once
    wrong = [v for v in got if v["category"] != categories.get(v["merchant"])]
    assert not wrong, wrong[:5]
    # Read whole by the instance, outside the group: no offsets committed for it.
    assert all(o < 0 for o in io.committed_offsets(kafka, app_id, table).values())
    assert app.events("global_table.restore.completed")
    dead = io.read_all(kafka, f"{app_id}-dlq")
    assert {r.key for r in dead} == {b"m99"}  # at least once: once per reload of the table
