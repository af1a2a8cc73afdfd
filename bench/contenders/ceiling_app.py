"""The ceiling: a bare confluent-kafka consume -> logic -> produce loop, no framework.

The same decode/logic/encode as the other contenders (``workloads.py``, orjson), the same
producer settings as streamproc, and the same commit protocol:

- eos: one transactional producer; every ``--commit-interval`` seconds the consumed positions
  go into the transaction (``send_offsets_to_transaction``) and it commits; then a new one
  begins. The shape of confluent-kafka-python's ``examples/eos-transactions.py``.
- alo: every interval, ``flush()`` the producer, then commit the positions synchronously.

W2/W4 keep their counts in a plain dict: no RocksDB, no changelog, no repartition topic (one
process owns every partition, so a global dict is correct). W3 keeps its open windows in a dict
per input partition, closed by that partition's event time like the frameworks' windows. That
is what makes it a ceiling, not a peer: it is not fault tolerant.

    python bench/contenders/ceiling_app.py --workload W1 --guarantee eos --brokers HOST:PORT \
        --input T --output T --group G --commit-interval 1.0 --state-dir D --stats FILE
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workloads import (
    W3_GRACE_MS,
    W3_WINDOW_MS,
    FirstSeen,
    w1_keep,
    w1_transform,
    w3_add,
    w3_init,
    w4_words,
)

Emit = Callable[[bytes | None, bytes], None]
NEVER = 2**63 - 1  # no window open: nothing to close until one opens
# The input record's timestamp, carried to its outputs as the frameworks do (W5 measures
# latency from it).
current_ts = [0]


def make_step(workload: str, emit: Emit) -> Callable[[bytes | None, bytes], None]:
    """The per-record logic for one workload, emitting (key, value) bytes."""
    loads, dumps = orjson.loads, orjson.dumps
    if workload == "W1":
        def w1(key: bytes | None, value: bytes) -> None:
            ev = loads(value)
            if w1_keep(ev):
                emit(key, dumps(w1_transform(ev)))
        return w1
    counts: dict[bytes | None, int] = {}
    if workload == "W2":
        def w2(key: bytes | None, value: bytes) -> None:
            loads(value)  # the same decode cost as the others (they decode into a value)
            n = counts.get(key, 0) + 1
            counts[key] = n
            emit(key, dumps(n))
        return w2
    if workload == "W4":
        def w4(key: bytes | None, value: bytes) -> None:
            for word in w4_words(loads(value)):
                k = word.encode()
                n = counts.get(k, 0) + 1
                counts[k] = n
                emit(k, dumps(n))
        return w4
    raise SystemExit(f"unknown workload {workload}")


def make_windows(produce: Callable[[bytes | None, bytes, int], None]
                 ) -> Callable[[int, bytes | None, bytes, int], None]:
    """W3: per (partition, record) with its event time. A partition's windows close, and are
    emitted once, when its highest event time seen reaches end + grace; a record for a window
    already closed is dropped as late (there are none in W3's input)."""
    loads, dumps = orjson.loads, orjson.dumps
    size, grace = W3_WINDOW_MS, W3_GRACE_MS
    # partition -> window start -> key -> aggregate; a partition has about two windows open.
    open_: dict[int, dict[int, dict[bytes | None, dict[str, Any]]]] = {}
    high: dict[int, int] = {}    # partition -> highest event time seen
    closes: dict[int, int] = {}  # partition -> event time at which its oldest window closes

    def window(part: int, key: bytes | None, value: bytes, ts: int) -> None:
        start = ts - ts % size
        windows = open_.get(part)
        if windows is None:
            windows = open_[part] = {}
            high[part] = ts
        elif start + size + grace <= high[part]:
            return  # late
        accs = windows.get(start)
        if accs is None:
            accs = windows[start] = {}
            closes[part] = min(closes.get(part, NEVER), start + size + grace)
        acc = accs.get(key)
        accs[key] = w3_add(w3_init() if acc is None else acc, loads(value))
        if ts > high[part]:
            high[part] = ts
            if ts >= closes[part]:
                for s in sorted(w for w in windows if w + size + grace <= ts):
                    for k, a in windows.pop(s).items():
                        produce(k, dumps({"start": s, "end": s + size, "value": a}), s + size)
                closes[part] = min(windows) + size + grace if windows else NEVER
    return window


def main() -> int:
    ap = argparse.ArgumentParser()
    for flag in ("--workload", "--guarantee", "--brokers", "--input", "--output", "--group",
                 "--state-dir", "--stats"):
        ap.add_argument(flag, required=flag != "--state-dir")
    ap.add_argument("--commit-interval", type=float, default=1.0)
    args = ap.parse_args()
    eos = args.guarantee == "eos"

    consumer = Consumer({
        "bootstrap.servers": args.brokers, "group.id": args.group,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "isolation.level": "read_committed",
        "queued.max.messages.kbytes": 65536,
    })
    pconf: dict[str, Any] = {
        "bootstrap.servers": args.brokers, "linger.ms": 5, "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
        "compression.type": "lz4", "partitioner": "murmur2_random", "enable.idempotence": True,
    }
    if eos:
        pconf["transactional.id"] = f"{args.group}-ceiling"
    producer = Producer(pconf)
    if eos:
        producer.init_transactions()
        producer.begin_transaction()

    out, produce, poll, ts = args.output, producer.produce, producer.poll, current_ts

    def emit(key: bytes | None, value: bytes) -> None:
        try:
            produce(out, value, key, timestamp=ts[0])
        except BufferError:
            poll(0.05)
            produce(out, value, key, timestamp=ts[0])

    def emit_at(key: bytes | None, value: bytes, timestamp: int) -> None:
        try:
            produce(out, value, key, timestamp=timestamp)
        except BufferError:
            poll(0.05)
            produce(out, value, key, timestamp=timestamp)

    # W3 needs each record's partition and timestamp and stamps its outputs with the window end;
    # the other workloads keep the (key, value) step, untouched by W3.
    window = make_windows(emit_at) if args.workload == "W3" else None
    step = make_step(args.workload, emit) if window is None else None
    first = FirstSeen(args.stats)
    stopping = False

    def on_signal(_s: int, _f: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def commit() -> None:
        assignment = consumer.assignment()
        if not assignment:
            return
        positions = [tp for tp in consumer.position(assignment) if tp.offset >= 0]
        if eos:
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata())
            producer.commit_transaction()
            producer.begin_transaction()
        else:
            if producer.flush(30):
                raise KafkaException("undelivered records at commit")
            if positions:
                consumer.commit(offsets=positions, asynchronous=False)

    consumer.subscribe([args.input])
    next_commit = time.monotonic() + args.commit_interval
    while not stopping:
        # Take what is queued; if nothing, wait for one message, then take what came with it
        # (a blocking batch consume would wait out its timeout unless the batch fills up).
        batch = consumer.consume(5000, 0)
        if not batch:
            first_msg = consumer.poll(0.1)
            batch = [first_msg, *consumer.consume(4999, 0)] if first_msg is not None else []
        if batch and not first.seen:
            first.mark()
        if step is not None:
            for m in batch:
                if m.error() is None:
                    ts[0] = m.timestamp()[1]
                    step(m.key(), m.value())
        elif window is not None:
            for m in batch:
                if m.error() is None:
                    window(m.partition(), m.key(), m.value(), m.timestamp()[1])
        poll(0)
        if time.monotonic() >= next_commit:
            commit()
            next_commit = time.monotonic() + args.commit_interval
    commit()
    consumer.close()
    producer.flush(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
