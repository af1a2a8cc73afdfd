"""A paced producer: W2 events at a fixed rate, each stamped with its send time (CreateTime).

    python bench/loadgen.py --brokers B --topic T --rate 20000 --seconds 30 [--keys 10000]

Runs in its own process so that the latency reader in the harness does not share an
interpreter (and a GIL) with it. Payloads are precomputed: generating them on the fly would
cap the rate (and skew the timestamps).
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import cycle, islice
from pathlib import Path

from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import Spec, events


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--rate", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--keys", type=int, default=10_000)
    args = ap.parse_args()

    payloads = list(events(Spec("events", min(args.rate * 4, 200_000), args.keys, seed=11)))
    p = Producer({"bootstrap.servers": args.brokers, "linger.ms": 1, "enable.idempotence": True,
                  "partitioner": "murmur2_random"})
    start = time.time()
    end = start + args.seconds
    sent = 0
    source = cycle(payloads)
    while True:
        now = time.time()
        if now >= end:
            break
        due = int((now - start) * args.rate) - sent
        if due > 0:
            ts = int(now * 1000)
            for key, value in islice(source, due):
                try:
                    p.produce(args.topic, value, key, timestamp=ts)
                except BufferError:
                    p.poll(0.01)
                    p.produce(args.topic, value, key, timestamp=ts)
            sent += due
        p.poll(0)
        time.sleep(0.001)
    p.flush(60)
    print(sent, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
