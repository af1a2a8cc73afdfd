"""wordcount end to end on the real broker, under each processing guarantee."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamproc.kafka import io
from tests.harness import create_topics, running, unique
from tests.integration.wordcount_check import (
    assert_exactly_once,
    expected_counts,
    make_lines,
    store_contents,
)
from topologies.wordcount import build

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once", "at_most_once"])
def test_wordcount_exact_counts(kafka: str, tmp_path: Path, guarantee: str) -> None:
    app_id, src, sink = unique("wc"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 3), (sink, 3))
    lines = make_lines(1500, seed=1)
    io.produce(kafka, src, ((None, line.encode()) for line in lines))
    topology = build(app_id, src, sink)

    with running(topology, kafka, tmp_path, processing_guarantee=guarantee) as app:
        topics = list(app.compiled.topic_subtopology)
        assert io.wait_processed(kafka, app_id, topics, timeout_s=90)

    # Without failures every guarantee is exact.
    assert_exactly_once(kafka, sink, lines)
    assert io.read_all(kafka, f"{app_id}-dlq") == []
    # Invariant 2: RocksDB == the changelog applied up to its stored offset == final counts.
    assert store_contents(tmp_path, app_id, "counts", 3) == dict(expected_counts(lines))
    changelog: dict[str, int] = {}
    for rec in io.read_all(kafka, f"{app_id}-counts-changelog"):
        changelog[(rec.key or b"").decode()] = int(rec.value or b"0")
    assert changelog == dict(expected_counts(lines))


def test_state_survives_restart_and_output_continues(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("wc"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 2), (sink, 2))
    first, second = make_lines(400, seed=2), make_lines(300, seed=3)
    topology = build(app_id, src, sink)
    io.produce(kafka, src, ((None, line.encode()) for line in first))
    with running(topology, kafka, tmp_path) as app:
        assert io.wait_processed(kafka, app_id, list(app.compiled.topic_subtopology), 90)
    io.produce(kafka, src, ((None, line.encode()) for line in second))
    with running(build(app_id, src, sink), kafka, tmp_path) as app:
        assert io.wait_processed(kafka, app_id, list(app.compiled.topic_subtopology), 90)
        # The local stores were current: nothing to replay from the changelog.
        assert app._restorer is not None and app._restorer.totals.records == 0
    assert_exactly_once(kafka, sink, first + second)


def test_state_dir_deleted_is_rebuilt_from_changelog(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("wc"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 2), (sink, 2))
    first, second = make_lines(500, seed=4), make_lines(500, seed=5)
    io.produce(kafka, src, ((None, line.encode()) for line in first))
    with running(build(app_id, src, sink), kafka, tmp_path / "a") as app:
        assert io.wait_processed(kafka, app_id, list(app.compiled.topic_subtopology), 90)
    # A brand-new state dir: the instance must rebuild every store from the changelog, all of it.
    changelog_records = len(io.read_all(kafka, f"{app_id}-counts-changelog"))
    assert changelog_records >= len(expected_counts(first))
    io.produce(kafka, src, ((None, line.encode()) for line in second))
    with running(build(app_id, src, sink), kafka, tmp_path / "b") as app:
        assert io.wait_processed(kafka, app_id, list(app.compiled.topic_subtopology), 90)
        assert app._restorer is not None
        assert app._restorer.totals.records == changelog_records
    assert_exactly_once(kafka, sink, first + second)
    assert store_contents(tmp_path / "b", app_id, "counts", 2) == \
        dict(expected_counts(first + second))
