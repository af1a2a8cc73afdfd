"""kill -9 the real process, repeatedly, at random moments and at named points; restart it each
time; a read_committed consumer must see every input word's effect exactly once."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from streamproc.kafka import io
from tests.harness import AppProcess, create_topics, feed, unique
from tests.integration.wordcount_check import (
    assert_exactly_once,
    expected_counts,
    make_lines,
    store_contents,
)

pytestmark = [pytest.mark.kafka, pytest.mark.crash]

SCALE = int(os.environ.get("STREAMPROC_SOAK_SCALE", "10"))  # soak tests only


def _feed(bootstrap: str, topic: str, lines: list[str], seconds: float) -> threading.Thread:
    """Produce ``lines`` (no key) spread over ``seconds`` so that kills land mid-processing."""
    return feed(bootstrap, topic, [(None, ln.encode()) for ln in lines], seconds)


def _finish_and_verify(app: AppProcess, kafka: str, app_id: str, src: str, sink: str,
                       lines: list[str], state_dir: Path, partitions: int) -> None:
    app.start()
    topics = [src, f"{app_id}-words-repartition"]
    assert io.wait_processed(kafka, app_id, topics, timeout_s=120), app.log_text()[-3000:]
    assert app.terminate() == 0
    assert_exactly_once(kafka, sink, lines)
    assert io.read_all(kafka, f"{app_id}-dlq") == []
    assert store_contents(state_dir, app_id, "counts", partitions) == dict(expected_counts(lines))


def _kill9_at_random_moments(kafka: str, tmp_path: Path, *, lines: int, feed_s: float,
                             min_kills: int, seed: int, kill_seed: int) -> int:
    app_id, src, sink = unique("crash"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 3), (sink, 3))
    text = make_lines(lines, seed=seed)
    app = AppProcess("tests.apps:wordcount", kafka, tmp_path / "state", tmp_path / "app.log",
                     {"T_APP": app_id, "T_IN": src, "T_OUT": sink},
                     consume_batch_size=200)
    rng = random.Random(kill_seed)
    feeder = _feed(kafka, src, text, seconds=feed_s)
    kills = 0
    while feeder.is_alive() or kills < min_kills:
        app.start()
        time.sleep(rng.uniform(2.0, 4.5))
        assert app.alive, app.log_text()[-3000:]
        app.kill9()
        kills += 1
    feeder.join()
    _finish_and_verify(app, kafka, app_id, src, sink, text, tmp_path / "state", 3)
    return kills


def test_kill9_at_random_moments(kafka: str, tmp_path: Path) -> None:
    kills = _kill9_at_random_moments(kafka, tmp_path, lines=3000, feed_s=20, min_kills=6,
                                     seed=11, kill_seed=1234)
    assert kills >= 6


@pytest.mark.soak
def test_kill9_at_random_moments_soak(kafka: str, tmp_path: Path) -> None:
    """The same at SCALE times the input, feeding time and kills (``pytest --soak``)."""
    kills = _kill9_at_random_moments(kafka, tmp_path, lines=3000 * SCALE, feed_s=20 * SCALE,
                                     min_kills=6 * SCALE, seed=12, kill_seed=4321)
    assert kills >= 6 * SCALE


@pytest.mark.parametrize("point", ["before_commit", "after_commit", "after_process"])
def test_kill9_at_named_points(kafka: str, tmp_path: Path, point: str) -> None:
    """``before_commit``: offsets sent, transaction not committed -> everything aborted.
    ``after_commit``: Kafka committed, RocksDB not yet written -> restore from the changelog.
    ``after_process``: mid-interval, output produced but uncommitted -> aborted."""
    app_id, src, sink = unique("crash"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 2), (sink, 2))
    lines = make_lines(1500, seed=21)
    app = AppProcess("tests.apps:wordcount", kafka, tmp_path / "state", tmp_path / "app.log",
                     {"T_APP": app_id, "T_IN": src, "T_OUT": sink}, consume_batch_size=100)
    feeder = _feed(kafka, src, lines, seconds=8)
    crashes = 0
    for nth in (2, 3, 2, 4):
        app.start(STREAMPROC_TEST_CRASH_AT=point, STREAMPROC_TEST_CRASH_AFTER=str(nth))
        code = app.wait(90)
        assert code == -9, f"expected a SIGKILL at {point}, got {code}\n{app.log_text()[-3000:]}"
        crashes += 1
    feeder.join()
    _finish_and_verify(app, kafka, app_id, src, sink, lines, tmp_path / "state", 2)
    assert crashes == 4


def test_kill9_in_the_middle_of_a_restore(kafka: str, tmp_path: Path) -> None:
    """The state dir is lost; the rebuild from the changelog is killed half-way (after some
    WriteBatches landed) and restarted: it resumes from the offset stored with those batches
    and the results stay exact."""
    import shutil

    app_id, src, sink = unique("crash"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 2), (sink, 2))
    # 600 words seen exactly once before the restore: each lives in ONE changelog record, so a
    # restore that skipped or lost any record would restart that word's count at 1.
    singles = [f"once{i:04d}" for i in range(600)]
    first = singles + make_lines(600, seed=61)  # singles first: the crash lands among them
    second = make_lines(200, seed=62) + singles
    state = tmp_path / "state"
    app = AppProcess("tests.apps:wordcount", kafka, state, tmp_path / "app.log",
                     {"T_APP": app_id, "T_IN": src, "T_OUT": sink},
                     consume_batch_size=50, restore_batch_size=20)
    app.start()
    _feed(kafka, src, first, seconds=6).join()  # many checkpoints rewrite the same 60 keys
    assert io.wait_processed(kafka, app_id, [src, f"{app_id}-words-repartition"], 120)
    assert app.terminate() == 0
    changelog = len(io.read_all(kafka, f"{app_id}-counts-changelog"))
    assert changelog > 600  # dozens of restore batches of 20 per partition

    shutil.rmtree(state)
    app.start(STREAMPROC_TEST_CRASH_AT="mid_restore", STREAMPROC_TEST_CRASH_AFTER="3")
    assert app.wait(90) == -9, app.log_text()[-3000:]
    mark = len(app.log_text())
    io.produce(kafka, src, ((None, ln.encode()) for ln in second))
    _finish_and_verify(app, kafka, app_id, src, sink, first + second, state, 2)
    # The second restore continued from where the killed one had got to, for some store.
    import json as _json
    starts = [_json.loads(ln)["from_offset"] for ln in app.log_text()[mark:].splitlines()
              if ln.startswith("{") and '"restore.started"' in ln]
    assert any(s > 0 for s in starts), starts
