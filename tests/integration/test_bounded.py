"""Bounded runs (``--until end`` / ``--until T``) and replays into a new application id
(``--from-datetime``), on the real broker.

- hourly_counts over its sample *without* flush records, ``streamproc run ... --until end`` (the
  CLI, as a user types it): exit code 0, every window closed (the batch computation with
  ``finish``), which is the streaming result of the same views once flush records have closed
  every window; committed offsets == the end offsets.
- A replay of it into a new app id and output topic from the middle of the data: every window
  starting at or after that time equals the original's; all of its output is the batch
  computation over what it read.
- wordcount (through a repartition topic) ``--until T``: exactly the records before T, committed
  offsets == offsets_for_times(T); more records produced; ``--until end``: the counts continue
  exactly; two instances of one bounded run both exit 0 with the exact counts.
- Windows behind a repartition topic, left open by a streaming run: a bounded run with no new
  input closes each of them exactly once (the downstream task must wait for the upstream tasks'
  end of input although their input was all committed before it started).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproc import Topology, codecs, windows
from streamproc.config import load_settings
from streamproc.graph.compile import compile_topology
from streamproc.kafka import io
from streamproc.service import application
from tests.harness import ROOT, TEST_SETTINGS, create_topics, running, unique
from tests.topologies import expected
from topologies import hourly_counts, wordcount
from topologies._examples import BASE_MS, HOUR, flush_keys, partition_of, with_flush

pytestmark = pytest.mark.kafka

PARTITIONS = 2


def run_bounded(topology: Topology, kafka: str, state_dir: Path, *, limit_s: float = 120,
                **settings: Any) -> int:
    """One instance of a bounded run in this process; its exit code. ``limit_s`` only bounds
    a hang: the runs take seconds alone, but the suite runs in parallel on two cores."""
    app = application(topology, load_settings(**{**TEST_SETTINGS, "state_dir": state_dir,
                                                 **settings}), bootstrap=kafka)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(app.run()), daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        app.stop()
        thread.join(30)
        pytest.fail(f"the bounded run did not end within {limit_s} s")
    return result[0]


def run_cli(kafka: str, state_dir: Path, log_path: Path, spec: str, *args: str) -> int:
    env = {**os.environ, "STREAMPROC_BROKERS": kafka, "STREAMPROC_STATE_DIR": str(state_dir),
           "STREAMPROC_COMMIT_INTERVAL_MS": "200", "STREAMPROC_LOG_FORMAT": "json",
           "PYTHONPATH": str(ROOT)}
    with open(log_path, "ab") as log:
        proc = subprocess.run([sys.executable, "-m", "streamproc", "run", spec, *args],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=90)
    return proc.returncode


def per_key(kafka: str, topic: str) -> dict[str, list[tuple[Any, int]]]:
    out: dict[str, list[tuple[Any, int]]] = {}
    for r in io.read_all(kafka, topic):
        out.setdefault((r.key or b"").decode(), []).append((orjson.loads(r.value or b""),
                                                             r.timestamp))
    return out


def end_offsets(kafka: str, topic: str) -> dict[int, int]:
    return dict(Counter(r.partition for r in io.read_all(kafka, topic)))


# -- hourly counts: windows closed by the end of input; replay ---------------------------------
@pytest.fixture(scope="module")
def hourly(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sample produced (no flush records) and one bounded run of hourly_counts over it."""
    u = unique("hb")
    names = {"app_id": f"{u}-hourly", "source": f"{u}-views", "sink": f"{u}-counts"}
    create_topics(kafka, (names["source"], PARTITIONS), (names["sink"], PARTITIONS))
    events = hourly_counts.sample()
    node = compile_topology(hourly_counts.build(**names)).source_node(names["source"])
    io.produce_timed(kafka, names["source"], (
        (node.key_codec.encode(k), node.value_codec.encode(v), ts, partition_of(k, PARTITIONS))
        for k, v, ts in events))
    tmp = tmp_path_factory.mktemp("hourly")
    params = [a for k, v in names.items() for a in ("--param", f"{k}={v}")]
    code = run_cli(kafka, tmp / "state", tmp / "app.log", "topologies.hourly_counts:build",
                   *params, "--until", "end")
    return {"names": names, "events": events, "code": code, "tmp": tmp, "params": params}


def test_until_end_closes_every_window(kafka: str, hourly: dict[str, Any]) -> None:
    names, events = hourly["names"], hourly["events"]
    assert hourly["code"] == 0, (hourly["tmp"] / "app.log").read_text()[-3000:]
    want, late = expected.hourly_counts(events, lambda k: partition_of(k, PARTITIONS),
                                        finish=True)
    # The streaming result: the same views, then flush records that close every window.
    streaming, streaming_late = expected.hourly_counts(
        with_flush(events, hourly_counts.flush, PARTITIONS),
        lambda k: partition_of(k, PARTITIONS), finish=False)
    flushes = set(flush_keys(PARTITIONS))
    assert want["hourly-page-views"] == {k: v for k, v in
                                         streaming["hourly-page-views"].items()
                                         if k not in flushes}
    assert late == streaming_late
    got = per_key(kafka, names["sink"])
    assert got == want["hourly-page-views"]
    # The last hour of each page closes only at the end of input: a streaming run without
    # the flush records would not have written it yet.
    last_end = max(w["end"] for seq in got.values() for w, _ in seq)
    assert last_end == BASE_MS + 4 * HOUR
    # The late topic the engine creates stamps records with their append time (and the late
    # record headers do not carry the original one): compared without timestamps.
    got_late = [(r.key.decode(), orjson.loads(r.value or b""),
                 int(r.headers["streamproc.window.end"]), int(r.headers["streamproc.watermark"]))
                for r in io.read_all(kafka, f"{names['app_id']}-late")]
    assert sorted(got_late, key=repr) == sorted(((k, v, end, wm) for k, v, _, end, wm in late),
                                                key=repr)
    assert late
    assert io.committed_offsets(kafka, names["app_id"], names["source"]) == \
        end_offsets(kafka, names["source"])


def test_replay_into_new_app_id_from_a_point_in_time(kafka: str,
                                                      hourly: dict[str, Any]) -> None:
    names, events = hourly["names"], hourly["events"]
    assert hourly["code"] == 0
    since = BASE_MS + 2 * HOUR
    replay = {"app_id": f"{names['app_id']}-replay", "source": names["source"],
              "sink": f"{names['sink']}-replay"}
    create_topics(kafka, (replay["sink"], PARTITIONS))
    params = [a for k, v in replay.items() for a in ("--param", f"{k}={v}")]
    iso = datetime.fromtimestamp(since / 1000, UTC).isoformat()
    code = run_cli(kafka, hourly["tmp"] / "replay-state", hourly["tmp"] / "replay.log",
                   "topologies.hourly_counts:build", *params, "--from-datetime", iso,
                   "--until", "end")
    assert code == 0, (hourly["tmp"] / "replay.log").read_text()[-3000:]

    # What the replay read: per partition, from the first view at or after `since`.
    read: list[tuple[str, dict[str, Any], int]] = []
    for p in range(PARTITIONS):
        part = [e for e in events if partition_of(e[0], PARTITIONS) == p]
        start = next(i for i, e in enumerate(part) if e[2] >= since)
        read += part[start:]
    want, _ = expected.hourly_counts(read, lambda k: partition_of(k, PARTITIONS), finish=True)
    got = per_key(kafka, replay["sink"])
    assert got == want["hourly-page-views"]

    def since_then(out: dict[str, list[tuple[Any, int]]]) -> dict[str, list[tuple[Any, int]]]:
        return {k: [(w, ts) for w, ts in seq if w["start"] >= since] for k, seq in out.items()}

    # Event time: the same input gives the same windows, whoever computes them and when.
    original = per_key(kafka, names["sink"])
    assert since_then(got) == since_then(original)
    assert sum(map(len, since_then(got).values())) > 0
    assert io.committed_offsets(kafka, replay["app_id"], names["source"]) == \
        end_offsets(kafka, names["source"])


# -- wordcount through a repartition topic ---------------------------------------------------
def _lines(start: int, n: int) -> list[tuple[int, str, int]]:
    """(partition, line, timestamp): line i at BASE + i s, alternating partitions."""
    return [(i % PARTITIONS, f"w{i % 5} x{i % 3} w{i % 7}", BASE_MS + i * 1000)
            for i in range(start, start + n)]


def _produce(kafka: str, topic: str, lines: list[tuple[int, str, int]]) -> None:
    io.produce_timed(kafka, topic, ((None, line.encode(), ts, p) for p, line, ts in lines))


def _running_counts(lines: list[tuple[int, str, int]]) -> dict[str, list[int]]:
    totals = Counter(w for _, line, _ in lines for w in line.split())
    return {w: list(range(1, n + 1)) for w, n in totals.items()}


def _counts(kafka: str, topic: str) -> dict[str, list[int]]:
    return {k: [v for v, _ in seq] for k, seq in per_key(kafka, topic).items()}


def test_until_time_then_more_input_and_until_end(kafka: str, tmp_path: Path) -> None:
    u = unique("wb")
    app_id, source, sink = f"{u}-wc", f"{u}-lines", f"{u}-counts"
    create_topics(kafka, (source, PARTITIONS), (sink, PARTITIONS))
    first = _lines(0, 200)
    _produce(kafka, source, first)
    until = BASE_MS + 120 * 1000  # lines 0..119 are before it: 60 per partition
    iso = datetime.fromtimestamp(until / 1000, UTC).isoformat().replace("+00:00", "Z")
    assert run_bounded(wordcount.build(app_id, source, sink), kafka, tmp_path, until=iso) == 0
    assert _counts(kafka, sink) == _running_counts(first[:120])
    assert io.committed_offsets(kafka, app_id, source) == {0: 60, 1: 60}

    more = _lines(200, 100)
    _produce(kafka, source, more)
    assert run_bounded(wordcount.build(app_id, source, sink), kafka, tmp_path,
                       until="end") == 0
    # Continued exactly: every word's counts run 1..n once, over all 300 lines.
    assert _counts(kafka, sink) == _running_counts(first + more)
    assert io.committed_offsets(kafka, app_id, source) == {0: 150, 1: 150}


def test_two_instances_of_one_bounded_run(kafka: str, tmp_path: Path) -> None:
    u = unique("wb2")
    app_id, source, sink = f"{u}-wc", f"{u}-lines", f"{u}-counts"
    create_topics(kafka, (source, 4), (sink, 4))
    lines = [(i % 4, line, ts) for i, (_, line, ts) in enumerate(_lines(0, 20_000))]
    _produce(kafka, source, lines)
    codes: list[int] = []
    threads = [threading.Thread(target=lambda i=i: codes.append(run_bounded(
        wordcount.build(app_id, source, sink), kafka, tmp_path / f"i{i}", until="end",
        # Frequent heartbeats: the first member learns of the second's join (a rebalance)
        # before it has finished everything alone.
        consumer_config={"heartbeat.interval.ms": "100"})))
        for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(160)
    assert codes == [0, 0]
    assert _counts(kafka, sink) == _running_counts(lines)
    assert io.committed_offsets(kafka, app_id, source) == {0: 5000, 1: 5000, 2: 5000, 3: 5000}


# -- windows behind a repartition topic --------------------------------------------------------
def _windowed(app_id: str, source: str, sink: str) -> Topology:
    t = Topology(app_id)
    (t.source(source, key=codecs.string(), value=codecs.json(), timestamp=_event_time)
     .group_by(_group, key=codecs.string(), name="groups")
     .window(windows.tumbling(100, grace_ms=20)).count(store="windows", late="side_output")
     .to(sink, value=codecs.json()))
    return t


def _event_time(v: dict[str, Any]) -> int:
    return int(v["ts"])


def _group(v: dict[str, Any]) -> str:
    return str(v["g"])


def test_streaming_then_bounded_closes_windows_behind_a_repartition(kafka: str,
                                                                    tmp_path: Path) -> None:
    u = unique("ww")
    app_id, source, sink = f"{u}-win", f"{u}-events", f"{u}-windows"
    create_topics(kafka, (source, 3), (sink, 2))
    events = [(f"k{i % 7}", {"g": f"g{i % 5}", "ts": 1_000 + i * 2}) for i in range(600)]
    io.produce(kafka, source, [(k.encode(), orjson.dumps(v)) for k, v in events])
    want = Counter((v["g"], v["ts"] // 100 * 100) for _, v in events)

    with running(_windowed(app_id, source, sink), kafka, tmp_path):
        assert io.wait_processed(kafka, app_id, [source, f"{app_id}-groups-repartition"])
    streamed = len(io.read_all(kafka, sink))
    assert 0 < streamed < len(want)  # the last windows are still open

    assert run_bounded(_windowed(app_id, source, sink), kafka, tmp_path, until="end") == 0
    got: Counter[tuple[str, int]] = Counter()
    for r in io.read_all(kafka, sink):
        w = orjson.loads(r.value or b"")
        key = ((r.key or b"").decode(), w["start"])
        assert key not in got, f"window {key} emitted twice"
        assert w["end"] == w["start"] + 100
        got[key] = w["value"]
    assert got == want
    assert io.read_all(kafka, f"{app_id}-late") == []
