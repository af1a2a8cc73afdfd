"""The streamproc contender: the workloads written as a user would write them.

    python bench/contenders/streamproc_app.py --workload W1 --guarantee eos --brokers HOST:PORT \
        --input T --output T --group G --commit-interval 1.0 --state-dir D --stats FILE

The group is the application id. It runs exactly like ``streamproc run`` (same Application, same
SIGTERM handling: final checkpoint, exit 0). The first consumed record is noticed by a watcher
thread reading the application's processed-records counter every 5 ms, so no extra step is
added to the pipeline.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
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

from streamproc import Topology, codecs, windows
from streamproc.config import load_settings
from streamproc.logs import configure
from streamproc.service import application


def w3_user(event: dict[str, Any]) -> str:
    user: str = event["user"]
    return user


def build(workload: str, app_id: str, source: str, sink: str) -> Topology:
    t = Topology(app_id)
    if workload == "W1":
        (t.source(source, key=codecs.string(), value=codecs.json())
         .filter(w1_keep).map(w1_transform)
         .to(sink, value=codecs.json()))
    elif workload == "W2":
        (t.source(source, key=codecs.string(), value=codecs.json())
         .group_by_key().count(store="counts")
         .to(sink, value=codecs.json()))
    elif workload == "W3":
        # The input is keyed by user already: windows per key without a repartition. Event time
        # is the record's CreateTime; the watermark is not held back (max_out_of_orderness 0):
        # the grace alone admits the out-of-order records, as in Quix and the ceiling. Output
        # value: {"start", "end", "value": the aggregate}, once per window, when it closes.
        (t.source(source, key=codecs.raw(), value=codecs.json(), timestamp="create_time",
                  max_out_of_orderness_ms=0)
         .group_by_key()
         .window(windows.tumbling(size_ms=W3_WINDOW_MS, grace_ms=W3_GRACE_MS))
         .aggregate(w3_init, w3_add, store="w3", emit="final")
         .to(sink, value=codecs.json()))
    elif workload == "W3R":
        # W3 behind a repartition (bench/propagation.py): re-keyed by the user field, so the
        # window tasks' watermark comes from the upstream tasks' control records, or, with
        # BENCH_PROPAGATION=off, from the largest timestamp each has seen.
        t = Topology(app_id, watermark_propagation=os.environ.get("BENCH_PROPAGATION") != "off")
        (t.source(source, key=codecs.raw(), value=codecs.json(), timestamp="create_time",
                  max_out_of_orderness_ms=0)
         .group_by(w3_user, key=codecs.string(), name="users")
         .window(windows.tumbling(size_ms=W3_WINDOW_MS, grace_ms=W3_GRACE_MS))
         .aggregate(w3_init, w3_add, store="w3", emit="final")
         .to(sink, value=codecs.json()))
    elif workload == "W4":
        (t.source(source, value=codecs.json())
         .flat_map(w4_words)
         .group_by(lambda word: word, key=codecs.string(), value=codecs.string(), name="words")
         .count(store="counts")
         .to(sink, value=codecs.json()))
    else:
        raise SystemExit(f"unknown workload {workload}")
    return t


def main() -> int:
    ap = argparse.ArgumentParser()
    for flag in ("--workload", "--guarantee", "--brokers", "--input", "--output", "--group",
                 "--state-dir", "--stats"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--commit-interval", type=float, default=1.0)
    args = ap.parse_args()

    # STREAMPROC_LOG_LEVEL=info makes the restore figures visible (W6 reads them).
    level = os.environ.get("STREAMPROC_LOG_LEVEL", "warning")
    configure(level, "json")
    settings = load_settings(
        state_dir=args.state_dir,
        processing_guarantee="exactly_once" if args.guarantee == "eos" else "at_least_once",
        commit_interval_ms=int(args.commit_interval * 1000), log_level=level,
        # A stable identity, as a StatefulSet pod name would give: a replacement instance with
        # an empty state dir rejoins as the same static member instead of waiting for the old
        # one's session to expire.
        instance_id="bench-0")
    app = application(build(args.workload, args.group, args.input, args.output), settings,
                      bootstrap=args.brokers)
    first = FirstSeen(args.stats)

    def watch() -> None:
        while not app.processed:
            time.sleep(0.005)
        first.mark()

    threading.Thread(target=watch, daemon=True).start()

    def on_signal(_s: int, _f: Any) -> None:
        app.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    profile = os.environ.get("BENCH_PROFILE")  # a path: cProfile the run into it
    if not profile:
        return app.run()
    import cProfile

    prof = cProfile.Profile()
    code = prof.runcall(app.run)
    prof.dump_stats(f"{profile}.{args.workload}.{args.guarantee}.{os.getpid()}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
