"""W5: end-to-end latency of W2 (count per key) at a fixed input rate.

The load generator (its own process) stamps each record with its send time; every contender
carries the input timestamp to its output. A read_committed consumer in the harness takes
``receive time - output timestamp`` for every output record: what a downstream reader sees,
transaction commit included. The first seconds after the contender joined are a warm-up and
not counted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from kafkaops import Kafka
from procs import BENCH, Contender

WARMUP_S = 3.0


def wait_stable(kafka: Kafka, group: str, timeout_s: float = 120.0) -> None:
    """Until the group has a member with an assignment (the contender is ready to consume)."""
    from confluent_kafka import ConsumerGroupState

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            desc = kafka.admin.describe_consumer_groups([group])[group].result(10)
            if desc.state == ConsumerGroupState.STABLE and any(
                    m.assignment.topic_partitions for m in desc.members):
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"group {group} did not become stable")


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def latency_run(kafka: Kafka, contender: str, guarantee: str, rate: int, seconds: float,
                keys: int, commit_interval: float, work: Path) -> dict[str, Any]:
    group = f"bw5-{contender}-{guarantee}-{uuid.uuid4().hex[:6]}"
    input_topic, output = f"{group}-in", f"{group}-out"
    kafka.create(input_topic)
    kafka.create(output)
    reader = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"{group}-reader",
                       "isolation.level": "read_committed", "enable.auto.commit": False,
                       "fetch.wait.max.ms": 10, "fetch.min.bytes": 1})
    reader.assign([TopicPartition(output, p, 0) for p in range(4)])
    proc = Contender(contender, {
        "workload": "W2", "guarantee": guarantee, "brokers": kafka.bootstrap,
        "input": input_topic, "output": output, "group": group,
        "commit_interval": str(commit_interval), "state_dir": str(work / group),
        "stats": str(work / f"{group}.stats")}, work / f"{group}.log")
    out: dict[str, Any] = {"p50_ms": None, "p99_ms": None, "p999_ms": None, "ok": False,
                           "problems": []}
    try:
        wait_stable(kafka, group)
        gen = subprocess.Popen([sys.executable, str(BENCH / "loadgen.py"), "--brokers",
                                kafka.bootstrap, "--topic", input_topic, "--rate", str(rate),
                                "--seconds", str(seconds), "--keys", str(keys)],
                               stdout=subprocess.PIPE, text=True)
        t_from = (time.time() + WARMUP_S) * 1000
        lat: list[float] = []
        received = 0
        drain_until = None
        while drain_until is None or time.time() < drain_until:
            for m in reader.consume(10_000, 0.05):
                if m.error() is not None:
                    continue
                now = time.time() * 1000
                received += 1
                ts = m.timestamp()[1]
                if ts >= t_from:
                    lat.append(now - ts)
            if drain_until is None and gen.poll() is not None:
                drain_until = time.time() + 2 * commit_interval + 3
            if not proc.alive():
                raise RuntimeError(f"contender died: {proc.tail()}")
        sent = int((gen.stdout.read() if gen.stdout else "0").strip() or 0)
        usage = proc.stop()
        lat.sort()
        if received != sent:
            out["problems"].append(f"received {received} outputs for {sent} inputs")
        if usage.exit_code != 0:
            out["problems"].append(f"exit code {usage.exit_code}")
        if lat:
            out.update(p50_ms=round(percentile(lat, 0.5), 1),
                       p99_ms=round(percentile(lat, 0.99), 1),
                       p999_ms=round(percentile(lat, 0.999), 1),
                       mean_ms=round(statistics.fmean(lat), 1))
        out.update(received=received, sent=sent, measured=len(lat),
                   peak_rss_mb=round(usage.peak_rss_mb, 1))
        out["ok"] = not out["problems"] and bool(lat)
    except Exception as exc:
        proc.stop()
        out["problems"].append(f"{type(exc).__name__}: {exc}")
    finally:
        reader.close()
        kafka.discard(group)
    return out


def latency_workload(kafka: Kafka, args: argparse.Namespace, work: Path,
                     res: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    rate = args.w5_rate
    if not rate:
        w2 = res["workloads"].get("W2", {}).get("results", {})
        maxima = [w2[c]["eos"]["median_rps"] for c in w2 if w2[c].get("eos", {}).get("median_rps")]
        rate = int(min(maxima) * 0.5) if maxima else 5000
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        c: {g: [] for g in args.guarantees} for c in args.contenders}
    for rep in range(args.w5_reps or args.reps):
        for g in args.guarantees:
            for c in args.contenders:
                r = latency_run(kafka, c, g, rate, args.w5_seconds, args.keys,
                                args.commit_interval, work)
                runs[c][g].append(r)
                log(f"W5 rep {rep + 1} {c:10s} {g}: " + (
                    f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, p999 {r['p999_ms']} ms"
                    if r["ok"] else f"FAILED {r['problems']}"))
    results: dict[str, Any] = {}
    for c, by_g in runs.items():
        results[c] = {}
        for g, rs in by_g.items():
            good = [r for r in rs if r["ok"]]

            def med(f: str, good: list[dict[str, Any]] = good) -> float | None:
                return round(statistics.median(r[f] for r in good), 1) if good else None

            results[c][g] = {"p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
                             "p999_ms": med("p999_ms"), "ok": len(good) == len(rs),
                             "received": sum(r.get("received", 0) for r in rs), "runs": rs}
    return {"title": "end-to-end latency of W2 at a fixed input rate", "rate_rps": rate,
            "duration_s": args.w5_seconds, "warmup_s": WARMUP_S, "results": results}
