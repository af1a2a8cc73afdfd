"""Bad input never crashes the app and is never lost: dead-letter (default), skip, or fail."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import orjson
import pytest

from streamproc.config import load_settings
from streamproc.kafka import io
from streamproc.service import application
from tests import apps
from tests.harness import TEST_SETTINGS, create_topics, running, unique

pytestmark = pytest.mark.kafka

# (value bytes, why it is bad or None if good)
INPUT: list[tuple[bytes, str | None]] = [
    (b"1", None),
    (b"{not json", "CodecError"),
    (b"13", "ValueError"),        # the user function raises
    (b'"seven"', "TypeError"),    # valid JSON, wrong type: the filter raises
    (b"5", None),
    (b"\xff\xfe", "CodecError"),  # not even UTF-8
    (b"21", None),
]


def _setup(kafka: str, monkeypatch: pytest.MonkeyPatch, policy: str) -> tuple[str, str, str]:
    app_id, src, sink = unique("bad"), unique("numbers"), unique("doubled")
    create_topics(kafka, (src, 1), (sink, 1))
    monkeypatch.setenv("T_APP", app_id)
    monkeypatch.setenv("T_IN", src)
    monkeypatch.setenv("T_OUT", sink)
    monkeypatch.setenv("T_POLICY", policy)
    for i, (value, _) in enumerate(INPUT):
        io.produce(kafka, src, [(f"k{i}".encode(), value)], partition=0,
                   headers=[("trace-id", f"t{i}".encode())])
    return app_id, src, sink


def test_dead_letter_keeps_bad_records_with_their_coordinates(
        kafka: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app_id, src, sink = _setup(kafka, monkeypatch, "dead_letter")
    with running(apps.strict_numbers(), kafka, tmp_path) as app:
        assert io.wait_processed(kafka, app_id, [src], 60)
        failed = app.metrics.total("records_failed_total", policy="dead_letter")
    assert [orjson.loads(r.value or b"") for r in io.read_all(kafka, sink)] == [2, 10, 42]
    # Batches run operator by operator, so dead letters are in stage order, not input order;
    # each carries its offset, which is what identifies it.
    dlq = sorted(io.read_all(kafka, f"{app_id}-dlq"),
                 key=lambda r: int(r.headers["streamproc.offset"]))
    bad = [(i, v, why) for i, (v, why) in enumerate(INPUT) if why]
    assert failed == len(bad)
    assert [(r.key, r.value) for r in dlq] == [(f"k{i}".encode(), v) for i, v, _ in bad]
    for rec, (i, _, why) in zip(dlq, bad, strict=True):
        h = rec.headers
        assert h["trace-id"] == f"t{i}".encode()  # the original headers are kept
        assert h["streamproc.topic"] == src.encode()
        assert h["streamproc.partition"] == b"0"
        assert h["streamproc.offset"] == str(i).encode()
        assert int(h["streamproc.timestamp"]) > 0
        assert h["streamproc.error.type"] == (why or "").encode()
        assert h["streamproc.error.message"]
        assert h["streamproc.operator"] == {"CodecError": b"source-1", "TypeError": b"filter-2",
                                            "ValueError": b"map-3"}[why or ""]
    # The dead letters are part of the committed transaction: offsets passed all 7 records.
    assert io.committed_offsets(kafka, app_id, src) == {0: len(INPUT)}


def test_skip_counts_and_drops(kafka: str, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    app_id, src, sink = _setup(kafka, monkeypatch, "skip")
    with running(apps.strict_numbers(), kafka, tmp_path) as app:
        assert io.wait_processed(kafka, app_id, [src], 60)
        skipped = app.metrics.total("records_failed_total", policy="skip")
    assert [orjson.loads(r.value or b"") for r in io.read_all(kafka, sink)] == [2, 10, 42]
    assert skipped == 4
    assert io.read_all(kafka, f"{app_id}-dlq") == []


def test_fail_stops_and_commits_nothing_past_the_bad_record(
        kafka: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app_id, src, sink = _setup(kafka, monkeypatch, "fail")
    app = application(apps.strict_numbers(),
                      load_settings(**{**TEST_SETTINGS, "state_dir": tmp_path}), bootstrap=kafka)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(app.run()), daemon=True)
    t.start()
    t.join(60)
    assert result == [1]
    committed = io.committed_offsets(kafka, app_id, src)[0]
    # Offset 1 is the first bad record: nothing at or past it may be committed.
    assert committed <= 1
    assert [orjson.loads(r.value or b"") for r in io.read_all(kafka, sink)] == \
        ([2] if committed == 1 else [])


def test_startup_fails_fast_with_one_clear_message(kafka: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.harness import ROOT

    env = {**os.environ, "STREAMPROC_BROKERS": kafka, "STREAMPROC_STATE_DIR": str(tmp_path),
           "T_APP": unique("nope"), "T_IN": "no-such-topic-x", "T_OUT": "no-such-sink-y",
           "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "streamproc.cli", "run", "tests.apps:wordcount"]
    missing = subprocess.run(run, env=env, cwd=ROOT, capture_output=True, timeout=60, text=True)
    assert missing.returncode == 2
    assert "source topic(s) no-such-topic-x" in missing.stderr
    assert "do not exist" in missing.stderr

    bad = subprocess.run([*run, "--commit-interval-ms", "abc"], env=env, cwd=ROOT,
                         capture_output=True, timeout=60, text=True)
    assert bad.returncode == 2
    assert "commit_interval_ms" in bad.stderr and "--commit-interval-ms" in bad.stderr

    env_bad = subprocess.run(run, env={**env, "STREAMPROC_PROCESSING_GUARANTEE": "maybe"},
                             cwd=ROOT, capture_output=True, timeout=60, text=True)
    assert env_bad.returncode == 2
    assert "processing_guarantee" in env_bad.stderr
    assert "STREAMPROC_PROCESSING_GUARANTEE" in env_bad.stderr


def test_co_partitioning_mismatch_is_refused(kafka: str, tmp_path: Path) -> None:
    from streamproc import Topology, TopologyError, codecs

    a, b, out = unique("a"), unique("b"), unique("out")
    create_topics(kafka, (a, 2), (b, 3), (out, 1))
    t = Topology(unique("copart"))
    (t.source(a, value=codecs.string())
     .merge(t.source(b, value=codecs.string()))
     .group_by_key().count(store="n")
     .to(out))
    app = application(t, load_settings(state_dir=tmp_path), bootstrap=kafka)
    with pytest.raises(TopologyError, match=r"co-partitioning mismatch.*" + a + "=2, " + b + "=3"):
        app.run()
