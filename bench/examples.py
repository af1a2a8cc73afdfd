"""Engine CPU per record of the five example topologies, without a broker: each topology's
sample generator (scaled up) through the test driver, one partition, batches of 1000 records,
then a checkpoint and the end of input.

    PYTHONPATH=. python bench/examples.py

It measures operators, windows, timers, RocksDB and checkpoints, not Kafka. End-to-end rates on
the broker are bench/run.py's (W3 is the windowed workload there).
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamproc.testing import TopologyTestDriver

SIZES = [("hourly_counts", {"n": 20000, "hours": 48}), ("sensor_averages", {"n": 20000}),
         ("sessions", {"n": 20000}), ("fraud_alerts", {"n": 20000}),
         ("traffic_peaks", {"minutes": 600})]


def main() -> int:
    # Late records are logged at debug level: keep the measurement about the engine.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    for name, kw in SIZES:
        module = importlib.import_module(f"topologies.{name}")
        events = module.sample(**kw)
        topology = module.build()
        d = TopologyTestDriver(topology, auto_commit=False, batch_size=1000)
        topic = d.compiled.user_source_topics[0]
        codec = d.compiled.source_node(topic).value_codec
        assert codec is not None
        for key, value, ts in events:
            kb = key.encode()
            d.cluster.append(topic, d.cluster.partition_for(topic, kb), kb, codec.encode(value),
                             ts, None)
        started = time.process_time()
        while d._process_available():
            d.commit()
        d.finish()
        spent = time.process_time() - started
        print(f"{name}: {len(events)} records, {len(events) / spent:,.0f} records/s of engine "
              "CPU (driver, 1 partition, batches of 1000)", flush=True)
        d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
