"""Windows under kill -9 and rebalances on the real broker: the final (emit-final) results
equal the batch computation exactly, no window is emitted twice, and nothing is late — the
watermark crossed the repartition as control records, min over the upstream tasks."""

from __future__ import annotations

import json
import random
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest

from streamproc.kafka import io
from tests.harness import AppProcess, create_topics, feed, unique, wait_event, wait_progress

pytestmark = [pytest.mark.kafka, pytest.mark.crash]

PARTITIONS = 3
GROUPS = 5


def _key_for(partition: int, n: int = PARTITIONS) -> str:
    """A key that librdkafka's default partitioner (CRC32) puts in ``partition``."""
    i = 0
    while zlib.crc32(f"flush{i}".encode()) % n != partition:
        i += 1
    return f"flush{i}"


def _events(n: int) -> list[tuple[bytes, bytes]]:
    """In event-time order per key; keys spread over the partitions."""
    return [(f"k{i % 7}".encode(),
             json.dumps({"g": f"g{i % GROUPS}", "ts": 1_000 + i * 2}).encode())
            for i in range(n)]


def _flush(ts: int) -> list[tuple[bytes, bytes]]:
    """One far-future record per input partition: every data window closes."""
    return [(_key_for(p).encode(), json.dumps({"g": "flush", "ts": ts}).encode())
            for p in range(PARTITIONS)]


def _expected(events: list[tuple[bytes, bytes]]) -> Counter[tuple[str, int]]:
    out: Counter[tuple[str, int]] = Counter()
    for _, v in events:
        e = json.loads(v)
        out[(e["g"], e["ts"] // 100 * 100)] += 1
    return out


def _verify(kafka: str, app_id: str, sink: str, events: list[tuple[bytes, bytes]]) -> None:
    got: Counter[tuple[str, int]] = Counter()
    for r in io.read_all(kafka, sink):
        w = json.loads(r.value or b"null")
        key = (r.key or b"").decode()
        assert r.timestamp == w["end"]
        assert (key, w["start"]) not in got, f"window {key} {w} emitted twice"
        assert w["end"] == w["start"] + 100
        got[(key, w["start"])] = w["value"]
    assert got == _expected(events)
    assert io.read_all(kafka, f"{app_id}-late") == []
    assert io.read_all(kafka, f"{app_id}-dlq") == []


def _wait_windows(kafka: str, sink: str, events: list[tuple[bytes, bytes]],
                  timeout_s: float = 60.0) -> None:
    """Wait until every expected window is in ``sink`` (read_committed): the last ones close
    only when the flush records' watermark has crossed the repartition topic, as control
    records of a later checkpoint, and reached the window task. On the timeout it just returns:
    ``_verify`` then says what is missing."""
    want = len(_expected(events))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = {((r.key or b"").decode(), json.loads(r.value or b"null")["start"])
               for r in io.read_all(kafka, sink)}
        if len(got) >= want:
            return
        time.sleep(0.3)


def test_windowed_results_are_exact_under_repeated_kill9(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("wcrash"), unique("events"), unique("windows")
    create_topics(kafka, (src, PARTITIONS), (sink, 2))
    events = _events(4000)
    app = AppProcess("tests.apps:windowed_counts", kafka, tmp_path / "state",
                     tmp_path / "app.log", {"T_APP": app_id, "T_IN": src, "T_OUT": sink},
                     consume_batch_size=150)
    rng = random.Random(99)
    feeder = feed(kafka, src, events, seconds=15, chunks=25)
    kills = 0
    while feeder.is_alive() or kills < 5:
        app.start()
        time.sleep(rng.uniform(2.0, 4.0))
        assert app.alive, app.log_text()[-3000:]
        app.kill9()
        kills += 1
    feeder.join()
    io.produce(kafka, src, _flush(10_000_000))
    app.start()
    topics = [src, f"{app_id}-groups-repartition"]
    assert io.wait_processed(kafka, app_id, topics, timeout_s=120), app.log_text()[-3000:]
    _wait_windows(kafka, sink, events)
    assert io.wait_processed(kafka, app_id, topics, timeout_s=60)
    assert app.terminate() == 0
    _verify(kafka, app_id, sink, events)


def test_windows_and_watermarks_move_with_their_partitions(kafka: str, tmp_path: Path) -> None:
    """A second instance joins mid-stream (tasks move, restored from changelogs, window state
    and watermarks included), then the first is killed -9 and the second takes everything."""
    app_id, src, sink = unique("wrebal"), unique("events"), unique("windows")
    create_topics(kafka, (src, PARTITIONS), (sink, 2))
    events = _events(3000)
    env = {"T_APP": app_id, "T_IN": src, "T_OUT": sink}
    one = AppProcess("tests.apps:windowed_counts", kafka, tmp_path / "s1", tmp_path / "1.log",
                     env, consume_batch_size=150)
    two = AppProcess("tests.apps:windowed_counts", kafka, tmp_path / "s2", tmp_path / "2.log",
                     env, consume_batch_size=150)
    feeder = feed(kafka, src, events, seconds=12, chunks=25)
    one.start()
    wait_progress(one, kafka, app_id)  # one is processing the stream alone
    two.start()
    # Two has taken over tasks (restored from their changelogs) and is processing them too
    # (unless the input has all been fed and processed by then).
    wait_event(two, "task.running", 60)
    wait_progress(two, kafka, app_id, unless=lambda: not feeder.is_alive())
    assert one.alive and two.alive, one.log_text()[-2000:] + two.log_text()[-2000:]
    one.kill9()
    feeder.join()
    io.produce(kafka, src, _flush(10_000_000))
    topics = [src, f"{app_id}-groups-repartition"]
    assert io.wait_processed(kafka, app_id, topics, timeout_s=120), two.log_text()[-3000:]
    _wait_windows(kafka, sink, events)
    assert io.wait_processed(kafka, app_id, topics, timeout_s=60)
    assert two.terminate() == 0
    assert '"rebalance.assigned"' in two.log_text()
    _verify(kafka, app_id, sink, events)
