"""The engine's own per-record cost, without Kafka: µs of CPU per input record in the compiled
operator pipelines of the benchmark workloads (source decode -> operators -> sink encode ->
produce call), with real RocksDB stores.

    python bench/hotpath.py [--records 200000] [--reps 5]

The drain benchmark (run.py) is what users see, but its wall-clock figures move by +-25%
between runs on a shared 2-core machine with the broker beside it. This one is a single
process on one core measuring the main thread's CPU time, so it shows what an engine change buys
(run it before and after). Records are produced through the engine's collector into a real
librdkafka queue (no broker): the produce cost is real, only the network is missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Message

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "contenders"))

import workloads
from streamproc_app import build

from streamproc.graph.compile import compile_topology
from streamproc.runtime.collector import Collector
from streamproc.runtime.operators import build_pipeline
from streamproc.state.store import KeyValueStore
from streamproc.time.watermarks import TaskTime

try:  # before #15 the engine had no limits: the same benchmark runs on both (before/after)
    from streamproc.runtime.limits import OutputTime, TimeBounds
except ImportError:
    OutputTime = TimeBounds = None  # type: ignore[assignment,misc]


class Context:
    """The TaskContext the operators run against. Output goes through the engine's real
    Collector into a real librdkafka producer whose broker does not exist: the records are only
    queued locally (the produce call's real cost), never sent."""

    def __init__(self, stores: dict[str, KeyValueStore]) -> None:
        self.partition = 0
        self.stores = stores
        self.collector = Collector(lambda: {"bootstrap.servers": "127.0.0.1:9",
                                            "queue.buffering.max.messages": 2_000_000,
                                            "queue.buffering.max.kbytes": 2_097_151,
                                            "message.timeout.ms": 600_000,
                                            "log_level": 0},
                                   transactional=False, op_timeout_s=1.0)
        self.send = self.collector.send
        if hasattr(self.collector, "producer"):  # the interface changed with this benchmark
            self.producer = self.collector.producer
            self.produced = self.collector.count_produced

        self.time = TaskTime(ooo_ms=0, idle_timeout_ms=None, has_local=True,
                             upstream_tasks={}, now_ms=0)
        self.timed: list[Any] = []
        # Bad-input limits (runtime/limits.py), as an instance has them: the same checks run.
        if TimeBounds is not None:
            self.time_bounds = TimeBounds(0, 86_400_000)
            self.max_record_bytes = 1_000_000

    def output_time(self, topic: str) -> Any:
        return OutputTime()

    def guarded(self, store: str) -> frozenset[bytes]:
        return frozenset()

    def store(self, name: str) -> KeyValueStore:
        return self.stores[name]

    def on_error(self, origin: Any, exc: BaseException, where: str) -> None:
        raise exc

    def now_ms(self) -> int:
        return 0

    def register_timed(self, op: Any) -> None:
        self.timed.append(op)

    def count(self, metric: str, n: int = 1, **labels: str) -> None:
        pass

    def close(self) -> None:
        self.collector._producer.purge(in_queue=True, in_flight=True)


def messages(topic: str, records: list[tuple[bytes | None, bytes]]) -> list[Message]:
    return [Message(topic=topic, partition=0, offset=i, key=k, value=v, timestamp=(1, i),
                    headers=None) for i, (k, v) in enumerate(records)]


def measure(workload: str, n: int, reps: int, tmp: Path) -> float:
    """Median µs of CPU per input record."""
    compiled = compile_topology(build(workload, "hot", "in", "out"))
    kind = "lines" if workload == "W4" else "events"
    data = list(workloads.generate(workloads.Spec(kind, n, 10_000)))
    samples = []
    for rep in range(reps):
        stage_in = {"in": messages("in", data)}  # type: ignore[arg-type]
        spent = 0.0
        for i, st in enumerate(compiled.subtopologies):
            stores = {}
            for spec in st.stores:
                s = KeyValueStore(spec.name, 0, tmp / f"{workload}-{rep}-{i}-{spec.name}",
                                  spec.value_codec)
                s.open()
                stores[spec.name] = s
            ctx = Context(stores)
            captured: list[tuple[Any, Any]] = []
            if i + 1 < len(compiled.subtopologies):
                # Capture what goes to the repartition topic: the next stage's input.
                def produce(topic: str, value: Any, key: Any, *, timestamp: int,
                            headers: Any, _c: list[tuple[Any, Any]] = captured) -> None:
                    _c.append((key, value))
                ctx.producer = lambda produce=produce: (produce, lambda: None)  # type: ignore[method-assign]
                ctx.send = lambda t, k, v, ts, h, _c=captured: _c.append((k, v))  # type: ignore[method-assign]
            entries = build_pipeline(st, ctx)
            for topic, msgs in stage_in.items():
                entry = entries[topic]
                t0 = time.thread_time()
                for b in range(0, len(msgs), 5000):
                    entry(msgs[b:b + 5000])
                    for op in ctx.timed:  # what a task does after each batch
                        op.advance(ctx.time.watermark, 0)
                for s in stores.values():  # one checkpoint's worth of state work
                    s.commit(s.prepare(), None)
                spent += time.thread_time() - t0
            for s in stores.values():
                s.close()
            ctx.close()
            if captured:
                nxt = compiled.subtopologies[i + 1].source_topics[0]
                stage_in = {nxt: messages(nxt, captured)}
        samples.append(spent / n * 1e6)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workloads", default="W1,W2,W4")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for wl in args.workloads.split(","):
            us = measure(wl, args.records if wl != "W4" else args.records // 5, args.reps,
                         Path(tmp))
            unit = "line" if wl == "W4" else "record"
            print(f"{wl}: {us:.2f} µs CPU per input {unit} "
                  f"(= {1e6 / us:,.0f} {unit}s/s of pipeline work)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
