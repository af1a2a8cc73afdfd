"""A second instance joins mid-stream, leaves, rejoins and is killed: state follows its
partitions through the changelog and the results stay exact."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from streamproc.kafka import io
from tests.harness import AppProcess, create_topics, unique, wait_progress
from tests.integration.test_crash import _feed
from tests.integration.wordcount_check import assert_exactly_once, make_lines

pytestmark = [pytest.mark.kafka, pytest.mark.crash]


def _wait_for(app: AppProcess, pattern: str, timeout_s: float, after: int = 0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = app.log_text()[after:]
        if re.search(pattern, text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not seen in {timeout_s}s:\n{app.log_text()[-3000:]}")


def _wait_event(app: AppProcess, event: str, timeout_s: float, after: int = 0,
                **match: object) -> list[dict[str, object]]:
    """Wait for a JSON log event whose fields satisfy ``match`` (callables are predicates)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [e for e in app.events(event, after) if all(
            (v(e.get(k)) if callable(v) else e.get(k) == v) for k, v in match.items())]
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{event} {match} not seen in {timeout_s}s:\n{app.log_text()[-3000:]}")


def _processed(app: AppProcess) -> int:
    """Records the instance's last run processed, from its instance.stopped line."""
    line = [ln for ln in app.log_text().splitlines() if '"instance.stopped"' in ln][-1]
    return int(json.loads(line)["processed"])


def test_instance_joins_leaves_and_dies(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("rebal"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 4), (sink, 4))
    lines = make_lines(4000, seed=31)
    env = {"T_APP": app_id, "T_IN": src, "T_OUT": sink}
    a = AppProcess("tests.apps:wordcount", kafka, tmp_path / "a", tmp_path / "a.log", env,
                   consume_batch_size=200)
    b = AppProcess("tests.apps:wordcount", kafka, tmp_path / "b", tmp_path / "b.log", env,
                   consume_batch_size=200)
    a.start()
    feeder = _feed(kafka, src, lines, seconds=25)
    _wait_for(a, r'"event": "task.running"', 60)
    wait_progress(a, kafka, app_id)  # A is processing the stream

    # B joins: cooperative rebalance moves some tasks to it; they restore from the changelog.
    b.start()
    _wait_for(b, r'"event": "task.running"', 60)
    _wait_for(a, r'"event": "rebalance.revoked"', 30)
    wait_progress(b, kafka, app_id)  # B has processed and committed input of its own
    # B leaves cleanly: final checkpoint, then its tasks come back to A.
    mark = len(a.log_text())
    assert b.terminate() == 0
    assert _processed(b) > 0
    _wait_for(a, r'"event": "rebalance.assigned"', 60, after=mark)

    # B rejoins with its old state dir, then dies without a word.
    rejoin = len(b.log_text()) - 1
    b.start()
    _wait_for(b, r'"event": "task.running"', 60, after=rejoin)
    # Killed while processing (unless the input has all been fed and processed by then).
    wait_progress(b, kafka, app_id, after=rejoin, unless=lambda: not feeder.is_alive())
    b.kill9()

    feeder.join()
    assert io.wait_processed(kafka, app_id, [src, f"{app_id}-words-repartition"], 180), \
        a.log_text()[-3000:]
    assert a.terminate() == 0
    assert_exactly_once(kafka, sink, lines)


def test_state_moves_with_its_partitions(kafka: str, tmp_path: Path) -> None:
    """Every task is stateful here, so whatever moves carries state via the changelog."""
    app_id, src, sink = unique("move"), unique("words"), unique("counts")
    create_topics(kafka, (src, 4), (sink, 4))
    words = [w for line in make_lines(1500, seed=41) for w in line.split()]
    env = {"T_APP": app_id, "T_IN": src, "T_OUT": sink}
    a = AppProcess("tests.apps:keyed_counts", kafka, tmp_path / "a", tmp_path / "a.log", env,
                   consume_batch_size=100)
    b = AppProcess("tests.apps:keyed_counts", kafka, tmp_path / "b", tmp_path / "b.log", env,
                   consume_batch_size=100)
    half = len(words) // 2
    io.produce(kafka, src, ((w.encode(), b"x") for w in words[:half]))
    a.start()
    assert io.wait_processed(kafka, app_id, [src], 90)
    # B joins: the tasks it gets were A's; it must restore their counts from the changelog.
    b.start()
    restored = _wait_event(b, "restore.completed", 60, records=lambda n: n > 0)
    assert restored[0]["from_offset"] == 0 and restored[0]["to_offset"] > 0
    io.produce(kafka, src, ((w.encode(), b"x") for w in words[half:]))
    assert io.wait_processed(kafka, app_id, [src], 90)
    mark = len(a.log_text())
    assert b.terminate() == 0
    assert _processed(b) > 0
    # Back on A: A's local stores are behind by what B did, and catch up from the changelog.
    back = _wait_event(a, "restore.completed", 60, after=mark, records=lambda n: n > 0)
    # A restores only the delta B wrote, from the offset its own store had reached.
    assert back[0]["from_offset"] > 0
    assert a.terminate() == 0
    expected: dict[str, list[int]] = {}
    for w in words:
        expected.setdefault(w, []).append(len(expected.get(w, [])) + 1)
    got: dict[str, list[int]] = {}
    for rec in sorted(io.read_all(kafka, sink), key=lambda r: (r.partition, r.offset)):
        got.setdefault((rec.key or b"").decode(), []).append(int(rec.value or b"0"))
    assert got == expected
