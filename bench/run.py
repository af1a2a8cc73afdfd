"""The benchmark: streamproc, Quix Streams and the bare-client ceiling, side by side.

    python bench/run.py                      # full run (about an hour on 2 cores)
    python bench/run.py --smoke              # tiny input, checks every contender's output
    python bench/run.py --workloads W1,W2 --records 200000 --reps 3

Drain mode (W1, W2, W3, W4): the input is produced once per workload; each contender then runs
as its own process with a fresh consumer group, output topic and state dir until the group has
committed all input (and every repartition topic is drained). records/s = input records / (last
commit observed - first record consumed). Runs are interleaved (A B C A B C ...) and every
run's output is checked record by record against the expected result. W5 (latency) and W6
(recovery) live in ``latency.py`` and ``recovery.py``. Results go to ``bench/results.json``,
then ``report.py`` renders ``docs/benchmarks.md`` and ``docs/benchmarks.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import workloads
from kafkaops import Kafka
from procs import BENCH, CONTENDERS, ROOT, Contender, quix_versions

GUARANTEES = ("eos", "alo")
DRAIN = ("W1", "W2", "W3", "W4")
# W3 records carry event times from 2023 as their timestamps (CreateTime), and so do its
# windows' outputs: under the default time retention (7 days) the broker would delete them at
# its next retention check, in the middle of a run.
TOPIC_CONFIG = {"W3": {"retention.ms": "-1"}, "W3R": {"retention.ms": "-1"}}
TITLES = {
    "W1": "stateless: decode JSON, filter ~half, transform, encode, produce",
    "W2": "stateful count per key, an update per record",
    "W3": "tumbling 10 s event-time window per key: sum + count, emitted once when closed, "
          "~5% out of order",
    "W4": "word count with repartition: lines -> words -> group by word -> count",
}


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", flush=True)


def drain_run(kafka: Kafka, contender: str, workload: str, guarantee: str, input_topic: str,
              input_records: int, exp: workloads.Expected, commit_interval: float, work: Path,
              timeout_s: float) -> dict[str, Any]:
    """One contender over the whole input; returns its figures and the output check."""
    tag = uuid.uuid4().hex[:6]
    group = f"b{workload.lower()}-{contender}-{guarantee}-{tag}"
    output = f"{group}-out"
    kafka.create(output, config=TOPIC_CONFIG.get(workload))
    state = work / group
    proc = Contender(contender, {
        "workload": workload, "guarantee": guarantee, "brokers": kafka.bootstrap,
        "input": input_topic, "output": output, "group": group,
        "commit_interval": str(commit_interval), "state_dir": str(state),
        "stats": str(work / f"{group}.stats")}, work / f"{group}.log")
    result: dict[str, Any] = {"rps": None, "wall_s": None, "peak_rss_mb": None, "cpu_s": None,
                              "ok": False, "problems": []}
    try:
        first = proc.first_consumed()
        deadline = time.monotonic() + timeout_s
        while not kafka.done(group, input_topic, group):
            if not proc.alive():
                raise RuntimeError(f"contender died: {proc.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not done within {timeout_s}s")
            time.sleep(0.1)
        wall = time.time() - first
        usage = proc.stop()
        if usage.exit_code != 0:
            result["problems"].append(f"exit code {usage.exit_code}: {proc.tail(5)}")
        problems = workloads.check(workload, exp, kafka.read(output))
        result.update(rps=round(input_records / wall, 1),
                      wall_s=round(wall, 3), peak_rss_mb=round(usage.peak_rss_mb, 1),
                      cpu_s=round(usage.cpu_s, 2))
        result["problems"] += problems
        result["ok"] = not result["problems"]
    except Exception as exc:
        proc.stop()
        result["problems"].append(f"{type(exc).__name__}: {exc}")
    finally:
        kafka.discard(group)
        shutil.rmtree(state, ignore_errors=True)
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if r["ok"]]

    def med(field: str) -> float | None:
        values = [r[field] for r in good if r[field] is not None]
        return round(statistics.median(values), 1) if values else None

    return {"median_rps": med("rps"), "median_peak_rss_mb": med("peak_rss_mb"),
            "median_cpu_s": med("cpu_s"), "runs": runs}


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for g in GUARANTEES:
        mine = results.get("streamproc", {}).get(g, {}).get("median_rps")
        row: dict[str, float | None] = {}
        for peer in ("quix", "ceiling"):
            theirs = results.get(peer, {}).get(g, {}).get("median_rps")
            row[f"streamproc/{peer}"] = round(mine / theirs, 2) if mine and theirs else None
        out[g] = row
    return out


def throughput(kafka: Kafka, workload: str, args: argparse.Namespace,
               work: Path) -> dict[str, Any]:
    if workload == "W4":
        spec = workloads.Spec("lines", args.lines, args.keys)
    else:
        spec = workloads.Spec("events", args.records, args.keys)
    input_topic = f"bin-{workload.lower()}-{uuid.uuid4().hex[:6]}"
    kafka.create(input_topic, args.partitions, TOPIC_CONFIG.get(workload))
    if workload == "W3":
        n = kafka.produce_timed(input_topic, (
            *((k, v, t, None) for k, v, t in workloads.w3_events(spec)),
            *workloads.w3_flush(spec, args.partitions)))
    else:
        n = kafka.produce(input_topic, workloads.generate(spec))
    exp = workloads.expected(workload, spec)
    log(f"{workload}: {n} input records in {input_topic}, expecting {exp.output_records} out")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        c: {g: [] for g in args.guarantees} for c in args.contenders}
    for rep in range(args.reps):
        for g in args.guarantees:
            for c in args.contenders:  # interleaved: A B C A B C ...
                r = drain_run(kafka, c, workload, g, input_topic, n, exp, args.commit_interval,
                              work, args.timeout)
                runs[c][g].append(r)
                log(f"{workload} rep {rep + 1} {c:10s} {g}: "
                    + (f"{r['rps']:>9,.0f} rec/s, {r['peak_rss_mb']} MB, {r['cpu_s']} cpu-s"
                       if r["ok"] else f"FAILED {r['problems']}"))
    kafka.delete([input_topic])
    results = {c: {g: summarise(rs) for g, rs in by_g.items()} for c, by_g in runs.items()}
    entry: dict[str, Any] = {"title": TITLES[workload], "input_records": n,
                             "partitions": args.partitions, "keys": args.keys,
                             "unit": "lines/s" if workload == "W4" else "records/s",
                             "results": results, "ratios": ratios(results)}
    if workload == "W4":
        entry["words_per_line"] = workloads.WORDS_PER_LINE
    if workload == "W3":
        entry.update(window_ms=workloads.W3_WINDOW_MS, grace_ms=workloads.W3_GRACE_MS,
                     out_of_order_share=workloads.W3_LATE_SHARE,
                     output_windows=exp.output_records)
    return entry


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                      if x.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem_kb = 0
    return {"cores": os.cpu_count(), "ram_gib": round(mem_kb / 2**20, 1), "cpu": cpu,
            "os": platform.platform()}


def versions(contenders: list[str]) -> dict[str, str]:
    import confluent_kafka

    from streamproc import __version__
    from streamproc.kafka.broker_provision import KAFKA_VERSION
    v = {"python": platform.python_version(), "streamproc": __version__,
         "confluent_kafka": confluent_kafka.__version__,
         "librdkafka": confluent_kafka.libversion()[0], "kafka_broker": KAFKA_VERSION}
    if "quix" in contenders:
        v.update(quix_versions())
    return v


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float, higher: bool = True) -> None:
        met = None if value is None else (value >= target if higher else value <= target)
        out.append({"name": name, "value": value, "target": target, "met": met})

    w = res["workloads"]
    for wl in ("W1", "W2", "W4"):  # the targets; W3 has none
        if wl in w:
            add(f"{wl} EOS: streamproc / Quix records/s >= 2", w[wl]["ratios"]["eos"].get(
                "streamproc/quix"), 2.0)
            r = w[wl]["results"]
            mine = r.get("streamproc", {}).get("eos", {}).get("median_peak_rss_mb")
            theirs = r.get("quix", {}).get("eos", {}).get("median_peak_rss_mb")
            add(f"{wl} EOS: streamproc / Quix peak RSS <= 1",
                round(mine / theirs, 2) if mine and theirs else None, 1.0, higher=False)
    if "W1" in w:
        add("W1 EOS: streamproc / ceiling records/s >= 0.6",
            w["W1"]["ratios"]["eos"].get("streamproc/ceiling"), 0.6)
    if "W5" in w:
        p99 = w["W5"]["results"].get("streamproc", {}).get("eos", {}).get("p99_ms")
        add("W5 EOS: streamproc p99 ms <= commit interval + 50 ms", p99,
            res["commit_interval_s"] * 1000 + 50, higher=False)
    if "W6" in w:
        add("W6: streamproc restore records/s >= 200,000",
            w["W6"]["results"].get("streamproc", {}).get("eos", {}).get("restore_rps"), 200_000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="tiny input, one repetition: checks that every contender is correct")
    ap.add_argument("--workloads", default="W1,W2,W3,W4,W5,W6")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--guarantees", default=",".join(GUARANTEES))
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--lines", type=int, default=200_000, help="W4 input lines (5 words each)")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--commit-interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    ap.add_argument("--w5-rate", type=int, default=0,
                    help="W5 input rate; default half the slowest contender's W2 EOS rate")
    ap.add_argument("--w5-seconds", type=float, default=30.0)
    ap.add_argument("--w5-reps", type=int, default=0, help="default: --reps")
    ap.add_argument("--w6-keys", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=BENCH / "results.json")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.records, args.lines, args.keys, args.reps = 3000, 1000, 300, 1
        args.w5_seconds, args.w6_keys, args.commit_interval = 5.0, 5000, 0.5
        args.w5_rate = args.w5_rate or 500
    if not args.no_report and not args.smoke:
        try:  # fail now, not after an hour of measuring
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("the chart needs matplotlib: pip install -e '.[bench]' (or --no-report)")
    args.contenders = args.contenders.split(",")
    args.guarantees = args.guarantees.split(",")
    selected = args.workloads.split(",")

    from streamproc.kafka import broker
    bootstrap = os.environ.get("STREAMPROC_BROKERS") or broker.start().bootstrap
    kafka = Kafka(bootstrap)
    work = Path(tempfile.mkdtemp(prefix="streamproc-bench-"))
    res: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine(),
        "versions": versions(args.contenders), "commit_interval_s": args.commit_interval,
        "repetitions": args.reps, "smoke": args.smoke, "notes": [], "workloads": {}}
    log(f"broker {bootstrap}; work dir {work}; {res['versions']}")
    try:
        for wl in DRAIN:
            if wl in selected:
                res["workloads"][wl] = throughput(kafka, wl, args, work)
        if "W5" in selected:
            from latency import latency_workload
            res["workloads"]["W5"] = latency_workload(kafka, args, work, res, log)
        if "W6" in selected:
            from recovery import recovery_workload
            res["workloads"]["W6"] = recovery_workload(kafka, args, work, log)
    finally:
        failed = [(wl, c, g) for wl, e in res["workloads"].items()
                  for c, by_g in e["results"].items() for g, s in by_g.items()
                  if not s.get("ok", True)
                  or any(not r.get("ok", True) for r in s.get("runs", []))]
        # A failed run keeps its contenders' logs: the cause is in them.
        if failed:
            log(f"failed runs: their logs are kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    res["targets"] = targets(res)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    log(f"wrote {args.out}")
    if not args.no_report and not args.smoke:
        from report import render
        render(res, ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "benchmarks.png")
    for t in res["targets"]:
        log(f"target {t['name']}: {t['value']} ({'met' if t['met'] else 'NOT met'})")
    if failed:
        log(f"FAILED runs: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
