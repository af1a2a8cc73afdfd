"""``streamproc reset`` on the real broker: a dry run changes nothing; a reset to the earliest
offsets makes the next run produce the same counts again from 1; ``--to-datetime`` and
``--to-offsets`` set exactly the offsets asked for; the tool refuses while an instance runs.

Runs are bounded (``until=end``) so that they end by themselves. The tool runs as a user runs
it (``python3 -m streamproc reset``, output on stdout) where its output is checked, and as a
function (``streamproc.ops.reset.reset``) where only its effect is.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from streamproc.graph.compile import compile_topology
from streamproc.kafka import io
from streamproc.kafka.admin import TopicAdmin
from streamproc.ops.reset import ResetRefused, reset
from tests.harness import cli, create_topics, running, unique
from tests.integration.test_bounded import run_bounded
from topologies import wordcount
from topologies._examples import BASE_MS

pytestmark = pytest.mark.kafka

LINES = [f"w{i % 4} x{i % 3}" for i in range(120)]  # line i at BASE + i s, partition i % 2


def _setup(kafka: str) -> tuple[str, str, str]:
    u = unique("rs")
    app_id, source, sink = f"{u}-wc", f"{u}-lines", f"{u}-counts"
    create_topics(kafka, (source, 2), (sink, 2))
    io.produce_timed(kafka, source, ((None, line.encode(), BASE_MS + i * 1000, i % 2)
                                     for i, line in enumerate(LINES)))
    return app_id, source, sink


def _cli(kafka: str, state: Path, app_id: str, source: str, sink: str,
         *args: str) -> subprocess.CompletedProcess[str]:
    """``streamproc reset`` for the wordcount app with these names."""
    return cli(kafka, "reset", "--app", app_id, "--topology", "topologies.wordcount:build",
               "--param", f"app_id={app_id}", "--param", f"source={source}",
               "--param", f"sink={sink}", *args, timeout_s=60, STREAMPROC_STATE_DIR=str(state))


def _counts(kafka: str, sink: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in io.read_all(kafka, sink):
        out.setdefault((r.key or b"").decode(), []).append(orjson.loads(r.value or b""))
    return out


def test_dry_run_then_reset_to_earliest_recounts_from_one(kafka: str, tmp_path: Path) -> None:
    app_id, source, sink = _setup(kafka)
    topology = wordcount.build(app_id, source, sink)
    compiled = compile_topology(topology)
    internal = [f"{app_id}-words-repartition", f"{app_id}-counts-changelog"]
    assert sorted([*compiled.repartition_topics,
                   *(t for _, t in compiled.changelog_topics.values())]) == sorted(internal)
    assert run_bounded(topology, kafka, tmp_path, until="end") == 0
    totals = Counter(w for line in LINES for w in line.split())
    once = {w: list(range(1, n + 1)) for w, n in totals.items()}
    assert _counts(kafka, sink) == once
    repartition_committed = io.committed_offsets(kafka, app_id, internal[0])
    assert io.committed_offsets(kafka, app_id, source) == {0: 60, 1: 60}

    dry = _cli(kafka, tmp_path, app_id, source, sink, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = (
        f"Reset of application '{app_id}' (consumer group empty)\n"
        "Source offsets, to earliest:\n"
        f"  {source}[0]: 60 -> 0\n"
        f"  {source}[1]: 60 -> 0\n"
        "Committed offsets dropped (the group is deleted and recreated):\n"
        f"  {internal[0]}[0]: {repartition_committed[0]}\n"
        f"  {internal[0]}[1]: {repartition_committed[1]}\n"
        "Internal topics to delete:\n"
        f"  {internal[1]}\n"
        f"  {internal[0]}\n"
        f"Local state to delete: {tmp_path / app_id}\n")
    assert dry.stdout == plan + "Dry run: nothing was changed.\n"
    assert io.committed_offsets(kafka, app_id, source) == {0: 60, 1: 60}
    assert io.committed_offsets(kafka, app_id, internal[0]) == repartition_committed
    assert all(n == 2 for n in TopicAdmin(kafka).partitions(internal).values())
    assert (tmp_path / app_id / "counts").is_dir()

    done = _cli(kafka, tmp_path, app_id, source, sink, "--to-earliest")
    assert done.returncode == 0, done.stderr
    assert done.stdout == plan + "Done: the next run starts from these offsets with empty state.\n"
    assert io.committed_offsets(kafka, app_id, source) == {0: 0, 1: 0}
    assert TopicAdmin(kafka).partitions(internal) == {t: None for t in internal}
    assert not (tmp_path / app_id).exists()

    # The same input again, from empty state: the same counts again, from 1.
    assert run_bounded(topology, kafka, tmp_path, until="end") == 0
    assert _counts(kafka, sink) == {w: seq + seq for w, seq in once.items()}
    assert io.committed_offsets(kafka, app_id, source) == {0: 60, 1: 60}


def test_to_datetime_to_offsets_and_refusal_while_running(kafka: str, tmp_path: Path) -> None:
    app_id, source, sink = _setup(kafka)
    compiled = compile_topology(wordcount.build(app_id, source, sink))
    # Line i is at BASE + i s on partition i % 2: the first at or after BASE + 51 s are
    # lines 52 (partition 0, offset 26) and 51 (partition 1, offset 25).
    reset(kafka, compiled, tmp_path, dry_run=False, to_datetime=BASE_MS + 51_000)
    assert io.committed_offsets(kafka, app_id, source) == {0: 26, 1: 25}
    # After every record: the end.
    reset(kafka, compiled, tmp_path, dry_run=False, to_datetime=BASE_MS + 10_000_000)
    assert io.committed_offsets(kafka, app_id, source) == {0: 60, 1: 60}

    offsets = tmp_path / "offsets.json"
    offsets.write_bytes(orjson.dumps({source: {"0": 7, "1": 59}}))
    reset(kafka, compiled, tmp_path, dry_run=False, offsets_file=offsets)
    assert io.committed_offsets(kafka, app_id, source) == {0: 7, 1: 59}
    offsets.write_bytes(orjson.dumps({source: {"0": 7}}))
    with pytest.raises(ResetRefused, match=rf"missing \['{source}\[1\]'\]"):
        reset(kafka, compiled, tmp_path, dry_run=False, offsets_file=offsets)
    offsets.write_bytes(orjson.dumps({source: {"0": 7, "1": 61}}))
    with pytest.raises(ResetRefused, match=rf"{source}\[1\]=61 \(log 0..60\)"):
        reset(kafka, compiled, tmp_path, dry_run=False, offsets_file=offsets)
    assert io.committed_offsets(kafka, app_id, source) == {0: 7, 1: 59}

    admin = AdminClient({"bootstrap.servers": kafka})
    with running(wordcount.build(app_id, source, sink), kafka, tmp_path / "live",
                 static_membership=False):
        deadline = time.monotonic() + 30
        while admin.describe_consumer_groups([app_id])[app_id].result().state != \
                ConsumerGroupState.STABLE:
            assert time.monotonic() < deadline, "the instance did not join its group"
            time.sleep(0.1)
        refused = _cli(kafka, tmp_path, app_id, source, sink, "--to-earliest")
        assert refused.returncode == 2
        assert refused.stdout == ""
        assert f"cannot reset '{app_id}': its consumer group is stable with 1 " \
               "active member(s)" in refused.stderr
        internal = [*compiled.repartition_topics, f"{app_id}-counts-changelog"]
        assert all(n == 2 for n in TopicAdmin(kafka).partitions(internal).values())
