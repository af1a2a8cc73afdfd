"""The state dir runs out of space while a real instance processes: it stops with one error
line naming the path and exit 1, commits nothing its output does not show, and once space is
freed a restart finishes with exact output and exact RocksDB content."""

from __future__ import annotations

import errno
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamproc.kafka import io
from tests.harness import AppProcess, create_topics, unique
from tests.integration.wordcount_check import (
    assert_exactly_once,
    expected_counts,
    make_lines,
    output_sequences,
    store_contents,
)

pytestmark = [pytest.mark.kafka, pytest.mark.crash]

CONTROL_HEADER = "streamproc.control"  # watermark control records in repartition topics


@pytest.fixture
def reaper() -> Iterator[list[AppProcess]]:
    """Instances a failed test leaves running are killed (before the tmpfs goes)."""
    apps: list[AppProcess] = []
    yield apps
    for app in apps:
        if app.alive:
            app.kill9()


def _fill(path: Path) -> None:
    """Write ``path`` until the file system refuses: not a byte left for anyone."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with open(path, "ab", buffering=0) as f:  # the last partial chunk's tail, byte by byte
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def _wait_checkpoints(app: AppProcess, kafka: str, group: str, topic: str,
                      after: dict[int, int], timeout_s: float = 60) -> dict[int, int]:
    """Wait until ``group``'s committed offset moved past ``after`` on every partition of
    ``topic``; returns the offsets then."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = io.committed_offsets(kafka, group, topic)
        if all(now.get(p, -1) > o for p, o in after.items()):
            return now
        assert app.alive and time.monotonic() < deadline, \
            f"{topic}: committed {now}, waiting past {after}\n{app.log_text()[-3000:]}"
        time.sleep(0.2)


def _log_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


def test_full_state_disk_stops_cleanly_and_a_restart_is_exact(
        kafka: str, small_disk: Path, reaper: list[AppProcess], tmp_path: Path) -> None:
    app_id, src, sink = unique("diskfull"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 2), (sink, 2))
    repartition = f"{app_id}-words-repartition"
    before, more, second = (make_lines(n, seed=s) for n, s in ((600, 31), (600, 32),
                                                                 (400, 33)))
    state = small_disk / "state"
    app = AppProcess("tests.apps:wordcount", kafka, state, tmp_path / "app.log",
                     {"T_APP": app_id, "T_IN": src, "T_OUT": sink}, consume_batch_size=100,
                     # Keep every repartition record: the check below reads them all back.
                     repartition_purge_interval_ms=3_600_000)
    reaper.append(app)
    app.start()
    # Both count stores get a checkpoint into RocksDB, so that the restart below must restore
    # from a stored offset past 0: the counting group's offsets move twice on both partitions
    # (a checkpoint's write-back ends before the next checkpoint begins).
    io.produce(kafka, src, ((None, ln.encode()) for ln in before[:300]))
    moved = _wait_checkpoints(app, kafka, app_id, repartition, after={0: 0, 1: 0})
    io.produce(kafka, src, ((None, ln.encode()) for ln in before[300:]))
    _wait_checkpoints(app, kafka, app_id, repartition, after=moved)
    filler = small_disk / "filler"
    _fill(filler)
    # Input goes on arriving; the writes that still fit in pages RocksDB already holds succeed,
    # the first that needs a new page fails. New words make every checkpoint write more keys.
    during: list[str] = []
    deadline = time.monotonic() + 60
    while app.alive and time.monotonic() < deadline:
        chunk = [f"{ln} new{len(during) + i:05d}" for i, ln in enumerate(more[:50])]
        more = more[50:] or make_lines(600, seed=len(during))
        io.produce(kafka, src, ((None, ln.encode()) for ln in chunk))
        during += chunk
        time.sleep(0.2)
    first = before + during

    # The instance's next RocksDB writes fail: it stops by itself, non-zero, within bounds.
    code = app.wait(30)
    assert code == 1, app.log_text()[-3000:]
    text = app.log_text()
    errors = [e for e in _log_lines(text) if e.get("level") in ("error", "critical")]
    assert [e["event"] for e in errors] == ["state.disk_full"], text[-3000:]
    event = errors[0]
    assert event["store"] == "counts" and event["partition"] in (0, 1), event
    assert event["path"] == str(state / app_id / "counts" / str(event["partition"])), event
    assert "No space left on device" in str(event["error"])
    assert "Traceback" not in text
    stopped = [e for e in _log_lines(text) if e.get("event") == "instance.stopped"]
    assert len(stopped) == 1 and stopped[0]["failed"] is True, stopped

    # Nothing committed past what the output shows. Counting (sub-topology 1): each word's
    # outputs are 1..n, n = its records in the repartition topic below the committed offsets.
    # Splitting (sub-topology 0): the repartition topic holds the words of exactly the lines
    # below the committed source offsets.
    done_src = io.committed_offsets(kafka, app_id, src)
    done_rep = io.committed_offsets(kafka, app_id, repartition)
    assert any(o > 0 for o in done_src.values()), done_src
    lines = io.read_all(kafka, src)
    words = [r for r in io.read_all(kafka, repartition) if CONTROL_HEADER not in r.headers]
    split: Counter[str] = Counter()
    for r in lines:
        if r.offset < done_src.get(r.partition, 0):
            split.update((r.value or b"").decode().lower().split())
    assert Counter((r.key or b"").decode() for r in words) == split
    counted = Counter((r.key or b"").decode() for r in words
                      if r.offset < done_rep.get(r.partition, 0))
    assert output_sequences(kafka, sink) == {w: list(range(1, n + 1)) for w, n in counted.items()}

    # Space again: the restart recovers the stores from their changelogs and finishes exactly.
    filler.unlink()
    mark = len(app.log_text())
    app.start()
    io.produce(kafka, src, ((None, ln.encode()) for ln in second))
    assert io.wait_processed(kafka, app_id, [src, repartition], timeout_s=120), \
        app.log_text()[-3000:]
    assert app.terminate() == 0, app.log_text()[-3000:]
    restart = _log_lines(app.log_text()[mark:])
    assert not [e for e in restart if e.get("level") in ("error", "critical")]
    # The store whose write-back failed restored from its stored offset the changes Kafka had
    # committed (the changelog holds them), not from scratch.
    restored = [e for e in restart if e.get("event") == "restore.completed"
                and e["store"] == "counts" and e["partition"] == event["partition"]]
    assert len(restored) == 1 and restored[0]["from_offset"] > 0, restored
    assert restored[0]["records"] > 0, restored
    assert_exactly_once(kafka, sink, first + second)
    assert io.read_all(kafka, f"{app_id}-dlq") == []
    assert store_contents(state, app_id, "counts", 2) == dict(expected_counts(first + second))


def test_a_restart_on_a_disk_still_full_stops_at_once(
        kafka: str, small_disk: Path, reaper: list[AppProcess], tmp_path: Path) -> None:
    """Started with no space at all (the state dir's lock file is its first write): the same
    single line and exit 1, no wait, no retry."""
    app_id, src, sink = unique("diskfull"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 1), (sink, 1))
    _fill(small_disk / "filler")
    app = AppProcess("tests.apps:wordcount", kafka, small_disk / "state", tmp_path / "app.log",
                     {"T_APP": app_id, "T_IN": src, "T_OUT": sink})
    reaper.append(app)
    app.start()
    assert app.wait(60) == 1, app.log_text()[-3000:]
    text = app.log_text()
    errors = [e for e in _log_lines(text) if e.get("level") in ("error", "critical")]
    assert [e["event"] for e in errors] == ["state.disk_full"], text[-3000:]
    assert str(errors[0]["path"]).startswith(str(small_disk / "state" / app_id)), errors
    assert "Traceback" not in text
    assert io.committed_offsets(kafka, app_id, src) == {0: -1001}  # nothing committed
