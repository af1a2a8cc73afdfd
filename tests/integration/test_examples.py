"""The five example topologies end to end on the real broker, with the README's commands:
``python3 -m topologies.<name> --produce`` (topics, the sample records with their timestamps,
one flush record per partition a day later) and ``python3 -m streamproc run
topologies.<name>`` until the group has committed all of its input, then SIGTERM. The output
topics must hold exactly what the batch computations in tests/topologies/ give for the same
records, partitions and flush records.

The topologies' own topic names and application ids are used, as the README does. On a fresh
broker (the session's) nothing else uses them; on a shared cluster (``STREAMPROC_BROKERS``) the
test first deletes what an earlier run left: the topics and the consumer group.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamproc.graph.compile import compile_topology
from streamproc.kafka import io
from streamproc.kafka.admin import TopicAdmin
from tests.topologies import expected
from tests.topologies.helpers import by_rule
from topologies._examples import PARTITIONS, partition_of, with_flush

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["hourly_counts", "sensor_averages", "sessions", "fraud_alerts", "traffic_peaks"]


def _env(kafka: str, state_dir: Path) -> dict[str, str]:
    return {**os.environ, "STREAMPROC_BROKERS": kafka, "STREAMPROC_STATE_DIR": str(state_dir),
            "STREAMPROC_COMMIT_INTERVAL_MS": "200", "STREAMPROC_LOG_LEVEL": "info",
            "STREAMPROC_LOG_FORMAT": "json"}


def _fresh(kafka: str, compiled: Any) -> None:
    """Delete what an earlier run on this cluster left behind."""
    topics = [*compiled.user_source_topics, *compiled.sink_topics, *compiled.late_topics,
              compiled.dead_letter_topic, *(t for _, t in compiled.changelog_topics.values())]
    admin = TopicAdmin(kafka)
    left = [t for t, n in admin.partitions(topics).items() if n is not None]
    if not left:
        return
    client = AdminClient({"bootstrap.servers": kafka})  # must outlive the futures
    for fut in client.delete_consumer_groups([compiled.application_id],
                                             request_timeout=30).values():
        with contextlib.suppress(KafkaException):  # no such group
            fut.result(timeout=60)
    admin.delete(left)
    deadline = time.monotonic() + 60
    while any(n is not None for n in admin.partitions(left).values()):
        assert time.monotonic() < deadline, f"topics {left} were not deleted"
        time.sleep(0.5)


def _per_key(kafka: str, topic: str) -> dict[str, list[tuple[Any, int]]]:
    out: dict[str, list[tuple[Any, int]]] = {}
    for r in io.read_all(kafka, topic):
        out.setdefault((r.key or b"").decode(), []).append((orjson.loads(r.value or b""),
                                                             r.timestamp))
    return out


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_end_to_end(kafka: str, tmp_path: Path, name: str) -> None:
    module = importlib.import_module(f"topologies.{name}")
    compiled = compile_topology(module.build())
    _fresh(kafka, compiled)
    env = _env(kafka, tmp_path / "state")
    produced = subprocess.run([sys.executable, "-m", f"topologies.{name}", "--produce"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert produced.returncode == 0, produced.stderr
    log_path = tmp_path / "app.log"
    with open(log_path, "wb") as log:
        app = subprocess.Popen([sys.executable, "-m", "streamproc", "run", f"topologies.{name}"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        done = io.wait_processed(kafka, compiled.application_id, compiled.user_source_topics,
                                 timeout_s=60)
        assert done, log_path.read_text()[-3000:]
    finally:
        app.send_signal(signal.SIGTERM)
        code = app.wait(60)
    assert code == 0, log_path.read_text()[-3000:]

    events = with_flush(module.sample(), module.flush, PARTITIONS)
    want, late = getattr(expected, name)(events, lambda k: partition_of(k, PARTITIONS),
                                         finish=False)
    for topic in compiled.sink_topics:
        got = _per_key(kafka, topic)
        if name == "fraud_alerts":  # only the order within each rule is defined
            assert by_rule(got) == by_rule(want[topic])
        else:
            assert got == want[topic], topic
        assert sum(map(len, want[topic].values())) > 0
    if name == "hourly_counts":
        got_late = [(r.key.decode(), orjson.loads(r.value or b""), r.timestamp,
                     int(r.headers["streamproc.window.end"]),
                     int(r.headers["streamproc.watermark"]))
                    for r in io.read_all(kafka, "hourly-counts-late")]
        assert sorted(got_late, key=repr) == sorted(late, key=repr)
        assert late
    assert io.read_all(kafka, compiled.dead_letter_topic) == []
