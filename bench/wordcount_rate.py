"""Measure wordcount on the local broker: records/s end to end, and the changelog restore rate.

    python bench/wordcount_rate.py [--lines 100000] [--keys 10000] [--guarantee exactly_once]

Not a test: prints figures. The full comparative harness (Quix Streams, raw client ceiling) is
a separate issue; this is the engine's own baseline.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamproc.config import load_settings
from streamproc.kafka import broker, io
from streamproc.kafka.admin import TopicAdmin, TopicSpec
from streamproc.runtime.app import Application
from topologies.wordcount import build


def run_until_done(app: Application, bootstrap: str, tasks: int) -> tuple[float, float]:
    """Run until all input is committed and every task runs; returns (total s, s from the
    first processed record)."""
    t = threading.Thread(target=app.run, daemon=True)
    start = time.monotonic()
    first: list[float] = []

    def watch() -> None:
        while not first and t.is_alive():
            if app.processed:
                first.append(time.monotonic())
            time.sleep(0.01)

    t.start()
    threading.Thread(target=watch, daemon=True).start()
    while not (len(app.tasks) == tasks and all(x.running for x in app.tasks.values())):
        time.sleep(0.05)
    io.wait_processed(bootstrap, app.app_id, list(app.compiled.topic_subtopology), 900)
    end = time.monotonic()
    app.stop()
    t.join(120)
    return end - start, end - (first[0] if first else start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--guarantee", default="exactly_once")
    ap.add_argument("--commit-interval-ms", type=int, default=1000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="streamproc-bench-"))
    b = broker.start(data_dir=tmp / "kafka")
    try:
        bootstrap = b.bootstrap
        tag = uuid.uuid4().hex[:6]
        app_id, src, sink = f"bench-{tag}", f"lines-{tag}", f"counts-{tag}"
        TopicAdmin(bootstrap).create([TopicSpec(src, 4), TopicSpec(sink, 4)])
        rng = random.Random(1)
        vocab = [f"word{i}" for i in range(args.keys)]
        lines = [" ".join(rng.choice(vocab) for _ in range(5)) for _ in range(args.lines)]
        words = 5 * args.lines
        io.produce(bootstrap, src, ((None, ln.encode()) for ln in lines))

        settings = load_settings(state_dir=tmp / "state",
                                 processing_guarantee=args.guarantee,
                                 commit_interval_ms=args.commit_interval_ms)
        app = Application(build(app_id, src, sink), settings, bootstrap=bootstrap)
        total, secs = run_until_done(app, bootstrap, 8)
        # Each line is consumed once from the source and each word once from the repartition
        # topic: records processed = lines + words.
        print(f"wordcount {args.guarantee}, commit {args.commit_interval_ms} ms: "
              f"{args.lines} lines / {words} words in {secs:.1f} s from the first record "
              f"({total:.1f} s with start-up) = {args.lines / secs:,.0f} lines/s, "
              f"{words / secs:,.0f} words/s, {(args.lines + words) / secs:,.0f} records/s "
              f"processed", flush=True)

        changelog = len(io.read_all(bootstrap, f"{app_id}-counts-changelog"))
        shutil.rmtree(tmp / "state")
        app2 = Application(build(app_id, src, sink), settings, bootstrap=bootstrap)
        run_until_done(app2, bootstrap, 8)
        assert app2._restorer is not None
        tot = app2._restorer.totals
        print(f"restore: {tot.records} changelog records ({changelog} in topic), {tot.bytes} B, "
              f"{tot.stores} stores in {tot.wall_seconds:.2f} s wall = "
              f"{tot.records / max(tot.wall_seconds, 1e-9):,.0f} records/s", flush=True)
    finally:
        broker.stop(data_dir=tmp / "kafka")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
