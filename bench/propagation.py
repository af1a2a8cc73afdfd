"""What watermark propagation costs: W3 behind a repartition (streamproc only), with the
control records on and off, interleaved on the same input.

    python bench/propagation.py [--records 200000] [--reps 3] [--guarantee eos]

With propagation on, the window tasks' watermark is the minimum over the upstream tasks
(control records in the repartition topic), and the output must equal W3's expected windows
exactly. With it off, each window task takes the largest timestamp it has seen: the run is
only timed, and the script reports how many windows came out wrong (records judged late because
another upstream partition was ahead; windows never closed where no flush record arrived).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import workloads
from kafkaops import Kafka
from run import TOPIC_CONFIG, drain_run, log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--guarantee", default="eos", choices=["eos", "alo"])
    ap.add_argument("--commit-interval", type=float, default=1.0)
    args = ap.parse_args()

    import os

    from streamproc.kafka import broker
    kafka = Kafka(os.environ.get("STREAMPROC_BROKERS") or broker.start().bootstrap)
    spec = workloads.Spec("events", args.records, args.keys)
    topic = f"bin-w3r-{uuid.uuid4().hex[:6]}"
    kafka.create(topic, args.partitions, TOPIC_CONFIG.get("W3"))
    n = kafka.produce_timed(topic, (
        *((k, v, t, None) for k, v, t in workloads.w3_events(spec)),
        *workloads.w3_flush(spec, args.partitions)))
    exp = workloads.expected("W3", spec)
    work = Path(tempfile.mkdtemp(prefix="streamproc-prop-"))
    runs: dict[str, list[dict[str, object]]] = {"on": [], "off": []}
    try:
        for rep in range(args.reps):
            for mode in ("on", "off"):
                os.environ["BENCH_PROPAGATION"] = mode  # inherited by the contender process
                r = drain_run(kafka, "streamproc", "W3R", args.guarantee, topic, n, exp,
                              args.commit_interval, work, 900.0)
                runs[mode].append(r)
                log(f"rep {rep + 1} propagation {mode}: {r['rps']} rec/s, "
                    f"{r['peak_rss_mb']} MB, problems: {r['problems'][:2]}")
    finally:
        kafka.delete([topic])
    summary = {}
    for mode, rs in runs.items():
        rates = [r["rps"] for r in rs if isinstance(r["rps"], float)]
        summary[mode] = {"median_rps": statistics.median(rates) if rates else None,
                         "exact_runs": sum(1 for r in rs if r["ok"]), "runs": len(rs),
                         "problems": rs[0]["problems"][:3] if rs else []}
    on, off = summary["on"]["median_rps"], summary["off"]["median_rps"]
    if on and off:
        summary["on_vs_off"] = round(on / off, 3)
    print(json.dumps({"input_records": n, "guarantee": args.guarantee, **summary}, indent=2))
    return 0 if summary["on"]["exact_runs"] == args.reps else 1


if __name__ == "__main__":
    sys.exit(main())
