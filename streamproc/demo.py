"""``streamproc demo``: the wordcount topology end to end on a local broker.

Starts the local broker when no brokers are configured, creates the topics, feeds generated
lines, runs the topology until every line is committed, then prints the top counts and checks
them against a plain batch count of the whole input topic.
"""

from __future__ import annotations

import random
import sys
import threading
from collections import Counter

import structlog

from streamproc.config import Settings
from streamproc.connection import kafka_connection
from streamproc.kafka import io
from streamproc.kafka.admin import TopicAdmin, TopicSpec

log = structlog.get_logger(__name__)

WORDS = (
    "kafka", "stream", "state", "window", "event", "time", "watermark", "checkpoint", "offset",
    "partition", "changelog", "topic", "record", "key", "value", "exactly", "once", "replay",
    "barrier", "task",
)


def generate_lines(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def run_demo(settings: Settings, *, lines: int) -> int:
    from streamproc.kafka import broker
    from streamproc.loader import load_topology
    from streamproc.service import application

    topology = load_topology("topologies.wordcount")

    started_here = settings.brokers is None and broker.status() is None
    servers = settings.brokers or broker.start().bootstrap
    # Every client connects as the settings say (streamproc/connection.py).
    bootstrap = kafka_connection(settings, servers)
    admin = TopicAdmin(servers, client_config=bootstrap)
    admin.create([TopicSpec("text-lines", 4), TopicSpec("word-counts", 4)])
    io.produce(bootstrap, "text-lines", ((None, line.encode()) for line in generate_lines(lines)))

    app = application(topology, settings, bootstrap=servers)
    runner = threading.Thread(target=app.run, name="wordcount", daemon=True)
    runner.start()
    # Upstream first: the repartition topic only stops growing once text-lines is done.
    ok = io.wait_processed(bootstrap, topology.application_id, app.compiled.topic_subtopology,
                           timeout_s=300)
    app.stop()
    runner.join(60)
    if not ok:
        sys.stderr.write("demo: the topology did not catch up within 300 s\n")
        return 1

    expected: Counter[str] = Counter()
    for rec in io.read_all(bootstrap, "text-lines"):
        expected.update((rec.value or b"").decode().lower().split())
    latest: dict[str, int] = {}
    for rec in io.read_all(bootstrap, "word-counts"):
        latest[(rec.key or b"").decode()] = int(rec.value or b"0")
    out = sys.stdout
    out.write(f"\nwordcount on {servers}: {sum(expected.values())} words in "
              f"{len(expected)} distinct, top 10:\n")
    for word, count in sorted(latest.items(), key=lambda kv: (-kv[1], kv[0]))[:10]:
        out.write(f"  {word:<12} {count}\n")
    if started_here:
        out.write(f"(the local broker keeps running at {servers}; "
                  "`streamproc kafka stop` stops it)\n")
    if latest == dict(expected):
        out.write("verified: every count equals a batch count of all of text-lines\n")
        return 0
    out.write("MISMATCH between streaming counts and the batch count\n")
    return 1
