"""Stateful task balance: how wordcount's tasks and keys spread over 2 and 3 instances, with
the cooperative-sticky assignor and with ``partition_assignor=auto`` (range for wordcount).

    python bench/balance.py [--lines 30000] [--partitions 6] [--out bench/balance.json]

Per (assignor, instances): the instances start one after another, each once the previous one
holds tasks (a rolling start, as a deployment does it); then the input is fed and drained.
Read from outside at the end: every instance's tasks (its ``/status``), and the keys of each
stateful task (distinct keys in its changelog partition). Reported: stateful tasks and keys
per instance, and each instance's share of them. Target (issue #19): with 3 instances every
instance holds between 1/4 and 1/2 of the stateful tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from streamproc.kafka import io  # noqa: E402
from streamproc.kafka.ports import free_port  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _status(port: int) -> dict[str, Any] | None:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5)
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None


def _wait(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)
    return got


def run_case(bootstrap: str, work: Path, assignor: str, instances: int, lines: list[str],
             partitions: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    app_id, src, sink = f"balance-{tag}", f"balance-lines-{tag}", f"balance-counts-{tag}"
    admin_topics = [(src, partitions), (sink, partitions)]
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(t, n, 1) for t, n in admin_topics]).values():
        f.result(30)
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    env = {**os.environ, "STREAMPROC_BROKERS": bootstrap, "STREAMPROC_LOG_LEVEL": "warning",
           "STREAMPROC_PARTITION_ASSIGNOR": assignor, "STREAMPROC_COMMIT_INTERVAL_MS": "200",
           "PYTHONPATH": str(ROOT)}
    try:
        for i in range(instances):
            port = free_port()
            cmd = [sys.executable, "-m", "streamproc", "run", "topologies.wordcount:build",
                   "--param", f"app_id={app_id}", "--param", f"source={src}",
                   "--param", f"sink={sink}", "--state-dir", str(work / tag / f"i{i}"),
                   "--http-port", str(port)]
            out = open(work / f"{tag}-i{i}.log", "wb")  # noqa: SIM115 (the child keeps it)
            procs.append((subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT),
                          port))
            # The next one starts once this one holds tasks (a rolling start).
            _wait(lambda p=port: (s := _status(p)) and s.get("tasks"), 120,
                  f"instance {i} with tasks")
        io.produce(bootstrap, src, [(None, ln.encode()) for ln in lines])
        if not io.wait_processed(bootstrap, app_id, [src, f"{app_id}-words-repartition"],
                                 timeout_s=300):
            raise TimeoutError("input not drained")

        def settled() -> list[dict[str, Any]] | None:
            got = [_status(p) for _, p in procs]
            if any(s is None for s in got):
                return None
            owned = sorted((t["subtopology"], t["partition"]) for s in got if s
                           for t in s["tasks"])
            # Every task owned by exactly one instance: no rebalance in flight.
            expect = sorted((st, p) for st in (0, 1) for p in range(partitions))
            return got if owned == expect else None  # type: ignore[return-value]

        statuses = _wait(settled, 60, "a settled assignment")
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            proc.wait(90)
    keys: dict[int, set[bytes]] = defaultdict(set)
    for rec in io.read_all(bootstrap, f"{app_id}-counts-changelog"):
        keys[rec.partition].add(rec.key or b"")
    total_keys = sum(len(v) for v in keys.values())
    rows = []
    for i, status in enumerate(statuses):
        stateful = sorted(t["partition"] for t in status["tasks"] if t["subtopology"] == 1)
        stateless = sorted(t["partition"] for t in status["tasks"] if t["subtopology"] == 0)
        nkeys = sum(len(keys[p]) for p in stateful)
        rows.append({"instance": i, "stateful_tasks": stateful, "stateless_tasks": stateless,
                     "keys": nkeys, "task_share": round(len(stateful) / partitions, 3),
                     "key_share": round(nkeys / total_keys, 3) if total_keys else 0.0})
    shares = [r["task_share"] for r in rows]
    return {"assignor": assignor, "instances": instances, "partitions": partitions,
            "keys": total_keys, "per_instance": rows, "min_task_share": min(shares),
            "max_task_share": max(shares),
            "within_target": all(0.25 <= s <= 0.5 for s in shares) if instances == 3
            else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=30_000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--out", type=Path, default=BENCH / "balance.json")
    args = ap.parse_args()
    from streamproc.kafka import broker

    bootstrap = os.environ.get("STREAMPROC_BROKERS") or broker.start().bootstrap
    rng = random.Random(7)
    words = [f"k{i:05d}" for i in range(6000)]
    lines = [" ".join(rng.choice(words) for _ in range(5)) for _ in range(args.lines)]
    work = Path(tempfile.mkdtemp(prefix="streamproc-balance-"))
    log(f"broker {bootstrap}; work dir {work}")
    results = []
    for assignor in ("cooperative-sticky", "auto"):
        for n in (2, 3):
            r = run_case(bootstrap, work, assignor, n, lines, args.partitions)
            results.append(r)
            log(f"{assignor:18} x{n}: stateful tasks per instance "
                f"{[len(x['stateful_tasks']) for x in r['per_instance']]}, keys "
                f"{[x['keys'] for x in r['per_instance']]} of {r['keys']}, task share "
                f"{r['min_task_share']}-{r['max_task_share']}"
                + ("" if r["within_target"] is None else
                   f", target 1/4-1/2: {'met' if r['within_target'] else 'MISSED'}"))
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "lines": args.lines, "results": results}, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
