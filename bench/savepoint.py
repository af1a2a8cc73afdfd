"""Savepoint cost: how long taking one and starting from one take, against reading the same
changelog with a bare confluent-kafka consumer in the same run (the floor: a savepoint cannot
be taken faster than its state can be read from Kafka).

    python bench/savepoint.py [--keys 200000] [--partitions 4]

Uses $STREAMPROC_BROKERS, else the local development broker (started if needed). Builds the
state with a bounded run of a keyed count over ``--keys`` distinct keys, then measures:

- ``floor``: one read_committed consumer draining the changelog (no decoding, no writing);
- ``create``: ``streamproc.savepoints.create.create`` (changelog into scratch RocksDB, sorted
  record files with SHA-256, committed offsets, manifest);
- ``seed``: ``apply.load`` + ``apply.apply`` into a new application id (verify checksums,
  check values with the new codec, one transaction writing every key to the new changelog);
- ``restore``: the new application's first bounded run (no new input): its tasks restore the
  seeded changelogs into RocksDB, then it exits.

Figures are wall seconds and keys/s, one run each (the machine is shared: read the ratios).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc import Topology, codecs
from streamproc.config import load_settings
from streamproc.graph.compile import compile_topology
from streamproc.kafka import io
from streamproc.kafka.admin import TopicAdmin, TopicSpec
from streamproc.kafka.clients import producer_config
from streamproc.runtime.plan import CHANGELOG_CONFIG
from streamproc.savepoints import apply
from streamproc.savepoints.create import create
from streamproc.service import application


def topology(app: str, source: str, sink: str) -> Topology:
    t = Topology(app)
    (t.source(source, key=codecs.string(), value=codecs.string())
     .group_by_key().count(store="counts").to(sink, value=codecs.json()))
    return t


def bounded(t: Topology, kafka: str, state: Path, **settings: object) -> float:
    app = application(t, load_settings(state_dir=state, until="end", static_membership=False,
                                       log_level="warning", **settings), bootstrap=kafka)
    started = time.perf_counter()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(app.run()), daemon=True)
    thread.start()
    thread.join(600)
    if result != [0]:
        raise SystemExit(f"the bounded run of {t.application_id} failed: {result}")
    return time.perf_counter() - started


def floor(kafka: str, topic: str, partitions: int) -> tuple[float, int]:
    c = Consumer({"bootstrap.servers": kafka, "group.id": f"bench-{uuid.uuid4().hex}",
                  "isolation.level": "read_committed", "enable.partition.eof": True,
                  "enable.auto.commit": False})
    started = time.perf_counter()
    c.assign([KafkaTopicPartition(topic, p, 0) for p in range(partitions)])
    n = sum(1 for _ in io.drain(c, range(partitions), topic, timeout_s=300))
    secs = time.perf_counter() - started
    c.close()
    return secs, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    kafka = os.environ.get("STREAMPROC_BROKERS")
    if not kafka:
        from streamproc.kafka import broker

        kafka = (broker.status() or broker.start()).bootstrap
    u = f"bench-sp-{uuid.uuid4().hex[:6]}"
    source, sink = f"{u}-in", f"{u}-out"
    TopicAdmin(kafka).create([TopicSpec(source, args.partitions), TopicSpec(sink, 1)])
    io.produce(kafka, source, ((f"key-{i:08d}".encode(), b"x") for i in range(args.keys)))
    work = Path(tempfile.mkdtemp(prefix="bench-sp-"))
    try:
        build = bounded(topology(f"{u}-a", source, sink), kafka, work / "a")
        changelog = f"{u}-a-counts-changelog"
        floor_s, n = floor(kafka, changelog, args.partitions)

        compiled = compile_topology(topology(f"{u}-a", source, sink))
        started = time.perf_counter()
        sp = create(kafka, compiled, work / "sp", topology_name="bench", wait_stopped_s=30)
        create_s = time.perf_counter() - started
        keys = sp.manifest.stores["counts"].keys
        size = sum(f.bytes for f in sp.manifest.stores["counts"].files.values())

        new = topology(f"{u}-b", source, sink)
        new_compiled = compile_topology(new)
        TopicAdmin(kafka).create([TopicSpec(f"{u}-b-counts-changelog", args.partitions,
                                            CHANGELOG_CONFIG)])
        settings = load_settings(state_dir=work / "b")
        started = time.perf_counter()
        loaded, mapping = apply.load(work / "sp", new_compiled, {0: args.partitions}, [])
        apply.apply(loaded, mapping, new_compiled,
                    producer_conf=producer_config(settings, kafka, None, f"{u}-b-savepoint"),
                    consumer_conf={"bootstrap.servers": kafka}, app_dir=work / "b" / f"{u}-b")
        seed_s = time.perf_counter() - started
        restore_s = bounded(new, kafka, work / "b", from_savepoint=work / "sp")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    assert keys == n == args.keys, (keys, n, args.keys)
    print(f"keyed count over {args.keys} keys, {args.partitions} partitions "
          f"(state built in {build:.1f} s); savepoint {size / 1e6:.1f} MB")
    print(f"{'step':<10}{'seconds':>10}{'keys/s':>12}{'vs floor':>10}")
    for name, secs in (("floor", floor_s), ("create", create_s), ("seed", seed_s),
                       ("restore", restore_s)):
        print(f"{name:<10}{secs:>10.2f}{keys / secs:>12,.0f}{secs / floor_s:>9.1f}x")


if __name__ == "__main__":
    main()
