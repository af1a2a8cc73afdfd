"""wordcount end to end on the real broker, under each processing guarantee."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streamproc.kafka import io
from streamproc.kafka.admin import TopicAdmin, TopicSpec
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
        assert app.restorer is not None and app.restorer.totals.records == 0
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
        assert app.restorer is not None
        assert app.restorer.totals.records == changelog_records
    assert_exactly_once(kafka, sink, first + second)
    assert store_contents(tmp_path / "b", app_id, "counts", 2) == \
        dict(expected_counts(first + second))


def test_consumed_repartition_records_are_deleted_and_old_timestamps_are_safe(
        kafka: str, tmp_path: Path) -> None:
    """Repartition records keep their (event) timestamps, so their topic has no time-based
    retention: records dated 1970 must survive until processed, then be purged once the group
    has committed past them. Dead letters are retained by when they were written."""
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as KafkaTopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource

    app_id, src, sink = unique("purge"), unique("lines"), unique("counts")
    # The input and output are dated 1970 too: without retention -1 the broker may delete them
    # (every batch that old rolls a segment) before the test has read them back.
    TopicAdmin(kafka).create([TopicSpec(t, 2, {"retention.ms": "-1"}) for t in (src, sink)])
    lines = make_lines(600, seed=5)
    io.produce_timed(kafka, src, ((None, ln.encode(), 1000 + i, None)
                                  for i, ln in enumerate(lines)))
    topology = build(app_id, src, sink)
    repartition = f"{app_id}-words-repartition"
    with running(topology, kafka, tmp_path, repartition_purge_interval_ms=500) as app:
        assert io.wait_processed(kafka, app_id, list(app.compiled.topic_subtopology), 90)
        io.produce(kafka, src, [(None, b"one more line")])  # a checkpoint after the wait
        assert io.wait_processed(kafka, app_id, list(app.compiled.topic_subtopology), 90)
        committed = io.committed_offsets(kafka, app_id, repartition)
        c = Consumer({"bootstrap.servers": kafka, "group.id": unique("probe")})
        try:
            deadline = time.monotonic() + 30
            while True:
                lows = [c.get_watermark_offsets(KafkaTopicPartition(repartition, p), 10)[0]
                        for p in range(2)]
                if lows == [committed[0], committed[1]] or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        finally:
            c.close()
        # Exactly what the group committed is gone (under exactly-once the last offset of a
        # partition is a transaction marker, so the log end is one past the committed offset).
        assert all(o > 0 for o in committed.values())
        assert lows == [committed[0], committed[1]]
    assert_exactly_once(kafka, sink, [*lines, "one more line"])
    admin = AdminClient({"bootstrap.servers": kafka})
    resources = [ConfigResource("topic", repartition), ConfigResource("topic", f"{app_id}-dlq")]
    configs = {r.name: f.result() for r, f in admin.describe_configs(resources).items()}
    assert configs[repartition]["retention.ms"].value == "-1"
    assert configs[f"{app_id}-dlq"]["message.timestamp.type"].value == "LogAppendTime"
