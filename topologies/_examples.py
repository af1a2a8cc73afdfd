"""Shared by the example topologies (not a topology itself): sample-data helpers and the
``python3 -m topologies.<name> --produce | --show`` entry point.

``--produce`` creates the topology's input and output topics if they are missing (2 partitions,
``retention.ms=-1``: the sample data is dated March 2024, and time-based retention would delete
it, and the window results stamped with it, at the broker's next retention check), then writes
the module's ``sample()`` records with their timestamps as CreateTime, each to partition
CRC32(key) mod partitions (librdkafka's default partitioner, also the test driver's), and one
"flush" record per partition a day after the data so that every window closes. ``--show``
prints what the topology wrote (read_committed), one JSON object per line.

Brokers: ``STREAMPROC_BROKERS``, else the running local broker (``python3 -m streamproc kafka
start``).
"""

from __future__ import annotations

import argparse
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The examples' Avro schemas, found wherever the process runs from.
SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"

Event = tuple[str, dict[str, Any], int]  # (key, value, timestamp in epoch ms)

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
BASE_MS = 1_709_251_200_000  # 2024-03-01T00:00:00Z: every sample starts here
PARTITIONS = 2


def partition_of(key: str, partitions: int) -> int:
    """The partition a key's records go to: CRC32 of its UTF-8 bytes (librdkafka's default)."""
    return zlib.crc32(key.encode()) % partitions


def flush_keys(partitions: int) -> list[str]:
    """One key per partition: ``__flush-<i>`` for the smallest ``i`` that lands in it."""
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < partitions:
        key = f"__flush-{i}"
        keys.setdefault(partition_of(key, partitions), key)
        i += 1
    return [keys[p] for p in range(partitions)]


def with_flush(records: Sequence[Event], flush: Callable[[str, int], Event],
               partitions: int = PARTITIONS) -> list[Event]:
    """``records`` followed by one flush record per partition, a day after the latest
    timestamp: it moves every partition's watermark past every window of the data. Its own
    windows (keyed ``__flush-<i>``) stay open."""
    at = max(ts for _, _, ts in records) + DAY
    return [*records, *(flush(key, at) for key in flush_keys(partitions))]


def main(argv: Sequence[str] | None, *, topology: Any,
         sample: Callable[[], list[Event] | dict[str, list[Event]]],
         flush: Callable[[str, int], Event], avro_topology: Any = None) -> int:
    from streamproc import logs
    from streamproc.cli import resolve_brokers
    from streamproc.config import load_settings
    from streamproc.graph.binding import bind_codecs
    from streamproc.graph.compile import compile_topology

    parser = argparse.ArgumentParser(
        prog=f"python3 -m topologies.{topology.application_id.replace('-', '_')}",
        description=f"Sample data for the {topology.application_id} example topology.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--produce", action="store_true",
                        help="create the topics if missing and produce the sample records")
    action.add_argument("--show", action="store_true",
                        help="print the records of the output topics")
    parser.add_argument("--partitions", type=int, default=PARTITIONS,
                        help="partitions of topics this creates (default 2)")
    args = parser.parse_args(argv)
    parser.add_argument("--avro", action="store_true",
                        help="the Avro variant (schema registry wire format; needs "
                        "STREAMPROC_SCHEMA_REGISTRY_URL)" if avro_topology is not None
                        else argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logs.configure("warning")
    if args.avro:
        if avro_topology is None:
            parser.error("this example has no Avro variant")
        topology = avro_topology
    compiled = compile_topology(topology)
    settings = load_settings()
    # Registry codecs need their topic and the registry: the same binding as the app's.
    bind_codecs(compiled, settings.registry())
    bootstrap = resolve_brokers(settings)
    if args.produce:
        return _produce(bootstrap, compiled, sample(), flush, args.partitions)
    return _show(bootstrap, compiled)


def _produce(bootstrap: str, compiled: Any, sample: list[Event] | dict[str, list[Event]],
             flush: Callable[[str, int], Event], partitions: int) -> int:
    """``sample``: the records of the topology's one source topic, or per topic."""
    from streamproc.kafka import io
    from streamproc.kafka.admin import TopicAdmin, TopicSpec

    admin = TopicAdmin(bootstrap)
    # The late-records topic too: the engine would create it with a 30-day retention.
    topics = [*compiled.user_source_topics, *compiled.sink_topics, *compiled.late_topics]
    existing = admin.partitions(topics)
    admin.create([TopicSpec(t, partitions, {"retention.ms": "-1"})
                  for t in topics if existing[t] is None])
    for topic in compiled.user_source_topics:
        records = sample[topic] if isinstance(sample, dict) else sample
        n = existing[topic] or partitions
        node = compiled.source_node(topic)
        io.produce_timed(bootstrap, topic, (
            (node.key_codec.encode(key), node.value_codec.encode(value), ts,
             partition_of(key, n)) for key, value, ts in with_flush(records, flush, n)))
        sys.stdout.write(f"{topic}: {len(records)} sample records and {n} flush records on "
                         f"{n} partitions ({bootstrap})\n")
    return 0


def _show(bootstrap: str, compiled: Any) -> int:
    """Print the output records, decoded with the codecs the topology writes them with."""
    import orjson

    from streamproc.kafka import io
    from streamproc.kafka.admin import TopicAdmin

    sinks = {s.topic: s for st in compiled.subtopologies for s in st.sinks}
    topics = [*compiled.sink_topics, *compiled.late_topics]
    existing = TopicAdmin(bootstrap).partitions(topics)
    missing = [t for t in topics if existing[t] is None]
    if missing:
        sys.stderr.write(f"no topic {', '.join(missing)} at {bootstrap}: run --produce first\n")
        return 1
    for topic in topics:
        sink = sinks.get(topic)
        for r in io.read_all(bootstrap, topic):
            try:
                value: Any = (sink.value_codec.decode(r.value) if sink is not None
                              else orjson.loads(r.value or b"null"))
            except Exception:
                value = (r.value or b"").decode(errors="replace")
            line = {"topic": topic, "partition": r.partition, "timestamp": r.timestamp,
                    "key": (r.key or b"").decode(errors="replace"), "value": value}
            sys.stdout.write(orjson.dumps(line, default=str).decode() + "\n")
    return 0
