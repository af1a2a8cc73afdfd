"""The per-instance HTTP endpoint on the real broker: a real ``streamproc run`` process with
``--http-port 0`` (the port comes from its log), exact counters and lags, the topology, a
restore seen through /readyz and /metrics; and /healthz while the loop is really stuck."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from streamproc import Topology, codecs
from streamproc.graph.compile import compile_topology
from streamproc.kafka import io
from tests.harness import AppProcess, create_topics, running, unique
from tests.integration.wordcount_check import make_lines
from tests.ops_client import base_url, by_label, get_json, port_from_log, scrape, wait_until
from topologies.wordcount import build

pytestmark = pytest.mark.kafka


def test_endpoints_of_a_running_instance_and_of_one_that_restored(kafka: str,
                                                                  tmp_path: Path) -> None:
    app_id, src, sink = unique("wc-http"), unique("lines"), unique("counts")
    repartition, changelog = f"{app_id}-words-repartition", f"{app_id}-counts-changelog"
    create_topics(kafka, (src, 3), (sink, 3))
    log_path = tmp_path / "app.log"
    env = {"T_APP": app_id, "T_IN": src, "T_OUT": sink}
    # log_format auto: the log file is not a TTY, so every line must be JSON.
    proc = AppProcess("tests.apps:wordcount", kafka, tmp_path / "a", log_path, env,
                      http_port=0, log_format="auto").start()
    try:
        port = port_from_log(log_path)
        base = f"http://127.0.0.1:{port}"
        wait_until("/readyz 200", lambda: get_json(base + "/readyz"), lambda r: r[0] == 200)
        code, health = get_json(base + "/healthz")
        assert (code, health["status"], health["state"]) == (200, "ok", "running")

        # /topology: the compiled graph's own description plus the lists operators look for.
        compiled = compile_topology(build(app_id, src, sink))
        code, topo = get_json(base + "/topology")
        assert code == 200
        assert (topo["source_topics"], topo["sink_topics"], topo["stores"],
                topo["internal_topics"]) == ([src], [sink], ["counts"],
                                             sorted([changelog, repartition]))
        assert {k: v for k, v in topo.items() if k not in (
            "source_topics", "sink_topics", "stores", "internal_topics")} == \
            json.loads(json.dumps(compiled.describe()))

        lines = make_lines(600, seed=7)
        words = sum(len(line.split()) for line in lines)
        io.produce(kafka, src, ((str(i).encode(), line.encode()) for i, line in enumerate(lines)))
        assert io.wait_processed(kafka, app_id, [src, repartition], timeout_s=60)
        fed = io.committed_offsets(kafka, app_id, src)  # a plain topic: offset == records
        assert sum(fed.values()) == len(lines) and all(fed.values())

        def settled(s: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> bool:
            lags = by_label(s, "streamproc_consumer_lag_records", "partition")
            return (sum(by_label(s, "streamproc_records_consumed_total", "partition",
                                 topic=src).values()) == len(lines)
                    and len(lags) == 3 and set(lags.values()) == {0.0}
                    and sum(by_label(s, "streamproc_records_produced_total", "partition",
                                     topic=sink).values()) == words)

        samples = wait_until("metrics of every fed record", lambda: scrape(base), settled)
        consumed = by_label(samples, "streamproc_records_consumed_total", "partition",
                            topic=src)
        assert consumed == {str(p): float(n) for p, n in fed.items()}
        for topic in (src, repartition):
            assert by_label(samples, "streamproc_consumer_lag_records", "partition",
                            topic=topic) == {"0": 0.0, "1": 0.0, "2": 0.0}
        assert sum(by_label(samples, "streamproc_records_produced_total", "partition",
                            topic=sink).values()) == words
        assert samples[("streamproc_ready", ())] == 1.0
        assert samples[("streamproc_checkpoints_total", ())] >= 1
        assert samples[("streamproc_restore_records_total", ())] == 0.0

        code, status = get_json(base + "/status")
        assert code == 200
        assert sorted((p["topic"], p["partition"], p["state"]) for p in status["partitions"]) \
            == sorted((t, p, "running") for t in (src, repartition) for p in range(3))
        assert status["processed"] >= len(lines) + words
    finally:
        assert proc.terminate() == 0

    events = [json.loads(line) for line in log_path.read_text().splitlines()
              if not line.startswith("--- start")]
    listening = [e for e in events if e["event"] == "http.listening"]
    assert [(e["host"], e["port"]) for e in listening] == [("127.0.0.1", port)]
    summaries = [e for e in events if e["event"] == "checkpoint.summary"]
    assert summaries and summaries[-1]["total"] == sum(s["checkpoints"] for s in summaries)

    # A second instance on an empty state dir restores the whole changelog before it is ready.
    changelog_records = len(io.read_all(kafka, changelog))
    assert changelog_records >= len({w for line in lines for w in line.split()})
    proc = AppProcess("tests.apps:wordcount", kafka, tmp_path / "b", log_path, env,
                      http_port=0).start()
    try:
        base = f"http://127.0.0.1:{port_from_log(log_path, after=1)}"
        wait_until("/readyz 200 after the restore", lambda: get_json(base + "/readyz"),
                   lambda r: r[0] == 200)
        samples = wait_until(
            "restore metrics", lambda: scrape(base),
            lambda s: s[("streamproc_restore_records_total", ())] == changelog_records)
        assert samples[("streamproc_restoring_stores", ())] == 0.0
        assert samples[("streamproc_tasks", (("state", "running"),))] == 6.0
        assert by_label(samples, "streamproc_records_consumed_total", "partition") == {}
        status = get_json(base + "/status")[1]
        assert (status["restored_records"], status["restoring"]) == (changelog_records, [])
    finally:
        assert proc.terminate() == 0


def test_healthz_is_503_while_the_loop_is_stuck_and_recovers(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("stuck"), unique("in"), unique("out")
    create_topics(kafka, (src, 1), (sink, 1))
    release = threading.Event()

    def maybe_block(v: str) -> str:
        if v == "block":
            release.wait(60)  # user code that hangs: the loop cannot come back to poll
        return v

    t = Topology(app_id)
    t.source(src, value=codecs.string()).map(maybe_block, name="maybe-block").to(
        sink, value=codecs.string())
    with running(t, kafka, tmp_path, http_port=0, health_stuck_after_ms=1000) as app:
        base = base_url(app)
        wait_until("/readyz 200", lambda: get_json(base + "/readyz"), lambda r: r[0] == 200)
        assert get_json(base + "/healthz")[0] == 200
        io.produce(kafka, src, [(None, b"block")])
        _, body = wait_until("/healthz 503", lambda: get_json(base + "/healthz"),
                                lambda r: r[0] == 503)
        assert body["status"] == "stuck"
        assert body["reason"].startswith("the loop has not polled Kafka for ")
        assert body["stuck_after_seconds"] == 1.0
        # The endpoint keeps answering while the loop is stuck: it never waits for it.
        assert scrape(base)[("streamproc_last_poll_age_seconds", ())] > 1.0
        release.set()
        wait_until("/healthz 200 again", lambda: get_json(base + "/healthz"),
                   lambda r: r[0] == 200)
        io.produce(kafka, src, [(None, b"after")])
        assert io.wait_processed(kafka, app_id, [src], timeout_s=30)
    assert [r.value for r in io.read_all(kafka, sink)] == [b"block", b"after"]
