"""Workers: W2 and W4 with ``streamproc run --workers 1`` and ``--workers 2`` on this machine.

    python bench/workers.py [--records 1000000] [--lines 200000] [--partitions 8] [--reps 2]
    python bench/workers.py --smoke          # tiny input, one repetition: checks the harness

Per workload the input is produced once (W2: JSON events keyed by user id, counted per key;
W4: JSON lines of five words, counted per word behind a repartition topic; bench/workloads.py).
Then, for each repetition, one run with 1 worker and one with 2 (the order alternates between
repetitions: 1 2, 2 1, ...), each with a fresh application id, output topic and state dir:
``python -m streamproc run bench.workers_topologies:wN --workers N`` under the defaults
(exactly-once, commit interval 1 s), until the group has committed all input (the source
topic, and for W4 the repartition topic, confirmed with ``io.wait_processed``); then SIGTERM,
which must end in exit 0. Every run's output is checked against the expected result
(workloads.check: one update per input record/word, counts increasing, the final count per key
exact); a wrong output, a non-zero exit or a timeout fails the benchmark (exit 1).

Figures per run:

- ``rps``: input records / (last committed-offset movement - first committed-offset movement),
  counting only the records committed after the first movement (the group's committed offsets
  are polled every 0.1 s by one long-lived, never-subscribed consumer). Start-up (interpreter,
  group join, the first commit interval) is left out. ``rps_from_start``: all input records /
  (last movement - process start). Under ``--workers 2`` start-up includes a rebalance: the
  first worker to join takes every task, and the group rebalances once the second has joined,
  a few seconds into the measured window (eager under the range assignor that ``auto`` picks
  for W4, cooperative for W2).
- Stage rates, between the commits that pass 40 % and 85 % of a stage's total (start-up and
  the drain's tail left out): W2 ``rps_steady``, records/s; W4 ``split_lines_s`` (the source's
  committed offsets) and ``count_words_s`` (the repartition topic's: words counted; its offsets
  also count a transaction marker per partition and commit, a few per second against tens of
  thousands of words). W4 has no single steady rate in a drain: its two stages barely overlap
  (the counting starts only once the split has worked through most of the backlog), see
  ``progress``: (s since start, source committed, last stage committed) at each movement.
- ``app_cpu_s``: user + system CPU seconds of the supervisor and its workers for the whole run
  (``--workers 1`` runs the instance in the started process itself, without a supervisor),
  from ``os.wait4`` on the supervisor: on Linux the usage reported for a reaped child includes
  the usage of the descendants it reaped itself (the kernel's RUSAGE_BOTH), and the supervisor
  waits for every worker before it exits. Cross-checked per run: it must be at least the sum of
  the processes' own utime + stime read from ``/proc/<pid>/stat`` just before the SIGTERM.
  ``app_window_cpu_s`` (and per process): the ``/proc`` deltas between the first and the last
  movement, the cost of the processing itself.
- ``broker_cpu_s``: the broker JVM's utime + stime from ``/proc/<pid>/stat``, before the
  supervisor starts and after it exits; ``broker_window_cpu_s`` over the measured window.

The broker runs on the same cores as the workers: on this 2-core machine the ratio 2 workers /
1 worker is bounded by what the broker (and this harness) leave. Results: bench/workers.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import workloads  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from streamproc.kafka import io  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.1
WORKER_COUNTS = (1, 2)
STEADY = (0.4, 0.85)  # the share of a stage's total between which its rate is measured


def stamp() -> str:
    """Now, UTC, to the millisecond: as the workers' log lines give it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", flush=True)


# -- CPU from /proc ------------------------------------------------------------------------------
def proc_cpu(pid: int | None) -> float | None:
    """utime + stime of ``pid`` itself (all its threads), seconds; None if it is gone."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15: utime, stime


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:  # field 4: ppid
            out.append(int(entry))
    return sorted(out)


def app_snapshot(supervisor: int) -> dict[int, float]:
    """CPU seconds so far of the supervisor and of each of its workers, by pid."""
    snap = {}
    for pid in (supervisor, *children_of(supervisor)):
        cpu = proc_cpu(pid)
        if cpu is not None:
            snap[pid] = cpu
    return snap


def broker_pid(bootstrap: str, started: Any) -> int | None:
    """The local broker JVM's pid (None for a broker elsewhere: its CPU is not measured)."""
    if started is not None:
        return int(started.pid)
    from streamproc.kafka import broker

    running = broker.status()
    return running.pid if running is not None and running.bootstrap == bootstrap else None


# -- progress ------------------------------------------------------------------------------------
class Progress:
    """The group's committed offsets, from one long-lived consumer that never subscribes
    (read_uncommitted: the broker then does not hold the answer while a transaction is open,
    see bench/kafkaops.py)."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                           "enable.auto.commit": False, "isolation.level": "read_uncommitted"})
        self.parts: dict[str, list[int]] = {}

    def partitions(self, topic: str) -> list[int]:
        if topic not in self.parts:
            md = self.c.list_topics(topic, timeout=10).topics.get(topic)
            if md is None or md.error is not None or not md.partitions:
                return []  # a repartition topic the application has not created yet
            self.parts[topic] = sorted(md.partitions)
        return self.parts[topic]

    def committed(self, topic: str) -> list[int]:
        parts = self.partitions(topic)
        got = self.c.committed([TopicPartition(topic, p) for p in parts], 10) if parts else []
        return [max(tp.offset, 0) for tp in got]

    def ends(self, topic: str) -> list[int]:
        return [self.c.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
                for p in self.partitions(topic)]

    def close(self) -> None:
        self.c.close()


def reap(proc: subprocess.Popen[bytes], timeout_s: float | None
         ) -> tuple[int, Any] | None:
    """(exit code, rusage) once ``proc`` has exited, via os.wait4; None if it still runs after
    ``timeout_s`` (0: do not wait). The Popen object is told, so it never waits itself."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def steady_rate(series: list[tuple[float, int, int]], stage: int, total: int
                ) -> float | None:
    """Records/s of ``stage`` (1: the source, 2: the last stage) between the commits that pass
    STEADY[0] and STEADY[1] of its ``total``: without the start-up (a rebalance once every
    worker has joined, the restores) and the drain's tail."""
    lo = next(((p[0], p[stage]) for p in series if p[stage] >= STEADY[0] * total), None)
    hi = next(((p[0], p[stage]) for p in series if p[stage] >= STEADY[1] * total), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return None
    return round((hi[1] - lo[1]) / (hi[0] - lo[0]), 1)


# -- one run -------------------------------------------------------------------------------------
def create_topic(admin: AdminClient, topic: str, partitions: int) -> None:
    for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        f.result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # metadata propagation
        md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic} not ready")


def run_once(bootstrap: str, admin: AdminClient, work: Path, wl: str, workers: int,
             source: str, records: int, exp: workloads.Expected, partitions: int,
             bpid: int | None, timeout_s: float, keep_logs: bool = False) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    app_id = f"bworkers-{wl.lower()}-x{workers}-{tag}"
    sink = f"{app_id}-out"
    create_topic(admin, sink, partitions)
    state = work / app_id
    topics = [source] + ([f"{app_id}-words-repartition"] if wl == "W4" else [])
    cmd = [sys.executable, "-m", "streamproc", "run", f"bench.workers_topologies:{wl.lower()}",
           "--param", f"app_id={app_id}", "--param", f"source={source}",
           "--param", f"sink={sink}", "--workers", str(workers), "--state-dir", str(state)]
    env = {**os.environ, "STREAMPROC_BROKERS": bootstrap, "STREAMPROC_LOG_FORMAT": "json",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    logfile = work / f"{app_id}.log"
    progress = Progress(bootstrap, app_id)
    src_ends = progress.ends(source)
    r: dict[str, Any] = {"workload": wl, "workers": workers, "app_id": app_id,
                         "input_records": records, "ok": False, "problems": []}
    broker_before = proc_cpu(bpid)
    t0 = time.monotonic()
    with logfile.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    exited: tuple[int, Any] | None = None
    try:
        t_first = t_last = None
        n_first = 0
        first_snap: dict[int, float] = {}
        broker_first = None
        last_sig: Any = None
        # (s since start, committed offsets of the source, of the last stage's topic)
        series: list[tuple[float, int, int]] = []
        last_check = 0.0
        deadline = t0 + timeout_s
        while True:
            exited = reap(proc, 0)
            if exited is not None:
                raise RuntimeError(f"the supervisor exited early with {exited[0]}")
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"not drained within {timeout_s:.0f} s")
            committed = {t: progress.committed(t) for t in topics}
            sig = tuple(tuple(v) for v in committed.values())
            if sig != last_sig:
                last_sig, t_last = sig, now
                r["last_movement_at"] = stamp()
                series.append((now - t0, sum(committed[source]),
                               sum(committed[topics[-1]])))
            done_src = committed[source] == src_ends
            if t_first is None and sum(committed[source]) > 0:
                t_first, n_first = now, sum(committed[source])
                r["first_movement_at"] = stamp()
                first_snap, broker_first = app_snapshot(proc.pid), proc_cpu(bpid)
            if done_src and now - last_check >= 0.5:
                last_check = now
                near = True
                for t in topics[1:]:  # under exactly-once a partition ends in markers
                    ends = progress.ends(t)
                    near = near and bool(ends) and sum(ends) - sum(committed[t]) <= 2 * len(ends)
                # Exact: nothing readable (read_committed) past the committed offsets.
                if near and io.wait_processed(bootstrap, app_id, topics, timeout_s=0):
                    break
            time.sleep(POLL_S)
        end_snap, broker_end = app_snapshot(proc.pid), proc_cpu(bpid)
        assert t_first is not None and t_last is not None
        window = t_last - t_first
        r.update(
            rps=round((records - n_first) / window, 1) if window > 0 else None,
            rps_from_start=round(records / (t_last - t0), 1),
            progress=[(round(t, 2), a, b) for t, a, b in series],
            start_to_first_commit_s=round(t_first - t0, 2), window_s=round(window, 2),
            committed_at_first_movement=n_first,
            app_window_cpu_s=round(sum(end_snap.get(p, 0.0) - first_snap.get(p, 0.0)
                                       for p in end_snap), 2),
            window_cpu_by_process={
                (f"worker pid {p}" if p != proc.pid
                 else "supervisor" if workers > 1 else "instance (no supervisor)"):
                round(end_snap[p] - first_snap.get(p, 0.0), 2) for p in end_snap},
            worker_pids_changed=sorted(first_snap) != sorted(end_snap),
            app_proc_cpu_s_before_stop=round(sum(end_snap.values()), 2),
            broker_window_cpu_s=(round(broker_end - broker_first, 2)
                                 if broker_end is not None and broker_first is not None
                                 else None))
        if wl == "W4":
            r["split_lines_s"] = steady_rate(series, 1, records)
            r["count_words_s"] = steady_rate(series, 2, records * workloads.WORDS_PER_LINE)
        else:
            r["rps_steady"] = steady_rate(series, 1, records)
        proc.send_signal(signal.SIGTERM)
        exited = reap(proc, 120)
        if exited is None:
            raise TimeoutError("the supervisor did not exit within 120 s of SIGTERM")
        code, usage = exited
        broker_after = proc_cpu(bpid)
        r.update(exit_code=code, app_cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
                 app_max_rss_mb=round(usage.ru_maxrss / 1024, 1),
                 broker_cpu_s=(round(broker_after - broker_before, 2)
                               if broker_after is not None and broker_before is not None
                               else None),
                 run_wall_s=round(time.monotonic() - t0, 2))
        if code != 0:
            r["problems"].append(f"exit code {code} after SIGTERM")
        if r["app_cpu_s"] + 0.05 < r["app_proc_cpu_s_before_stop"]:
            r["problems"].append(
                f"wait4 gave {r['app_cpu_s']} CPU s, less than the /proc sum "
                f"{r['app_proc_cpu_s_before_stop']}: the workers' usage is not in it")
        text = logfile.read_text(errors="replace")
        r["assignments_logged"] = text.count('"rebalance.assigned"')
        r["revocations_logged"] = text.count('"rebalance.revoked"')
        r["worker_restarts_logged"] = text.count('"worker.restarting"')
        output = io.read_all(bootstrap, sink, timeout_s=180)
        r["output_records"] = len(output)
        r["problems"] += workloads.check(wl, exp, [(o.key, o.value) for o in output])
    except Exception as exc:
        r["problems"].append(f"{type(exc).__name__}: {exc}")
    finally:
        progress.close()
        if exited is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            if reap(proc, 120) is None:
                proc.kill()
                reap(proc, None)
    r["ok"] = not r["problems"]
    if r["ok"]:
        shutil.rmtree(state, ignore_errors=True)
    if r["ok"] and not keep_logs:
        logfile.unlink(missing_ok=True)
    else:
        r["log"] = str(logfile)
    names = [t for t in admin.list_topics(timeout=10).topics if app_id in t]
    if names:
        for f in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best effort clean-up between runs
                f.result(60)
    return r


# -- the benchmark -------------------------------------------------------------------------------
def median(runs: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in runs if r["ok"] and r.get(field) is not None]
    return round(statistics.median(values), 2) if values else None


def ratio(summary: dict[str, Any], field: str) -> float | None:
    one, two = summary["1"][field], summary["2"][field]
    return round(two / one, 3) if one and two else None


def stages(r: dict[str, Any]) -> str:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    if r["workload"] == "W4":
        return (f"stages: split {fmt(r.get('split_lines_s'))} lines/s, count "
                f"{fmt(r.get('count_words_s'))} words/s")
    return f"steady {fmt(r.get('rps_steady'))}"


def workload(bootstrap: str, admin: AdminClient, work: Path, wl: str,
             args: argparse.Namespace, bpid: int | None) -> dict[str, Any]:
    spec = (workloads.Spec("events", args.records, args.keys) if wl == "W2"
            else workloads.Spec("lines", args.lines, args.keys))
    source = f"bworkers-in-{wl.lower()}-{uuid.uuid4().hex[:6]}"
    create_topic(admin, source, args.partitions)
    n = io.produce(bootstrap, source, workloads.generate(spec))
    exp = workloads.expected(wl, spec)
    log(f"{wl}: {n} input records in {source} ({args.partitions} partitions), "
        f"expecting {exp.output_records} output records")
    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        order = WORKER_COUNTS if rep % 2 == 0 else WORKER_COUNTS[::-1]
        for workers in order:
            r = run_once(bootstrap, admin, work, wl, workers, source, n, exp, args.partitions,
                         bpid, args.timeout, args.keep_logs)
            r["rep"] = rep + 1
            runs.append(r)
            if r["ok"]:
                log(f"{wl} rep {rep + 1} x{workers}: {r['rps']:>9,.0f} rec/s "
                    f"({r['rps_from_start']:,.0f} from start; {stages(r)}), "
                    f"app {r['app_cpu_s']} CPU s "
                    f"({r['app_window_cpu_s']} in the window), broker {r['broker_cpu_s']} "
                    f"CPU s ({r['broker_window_cpu_s']}), assignments {r['assignments_logged']}")
            else:
                log(f"{wl} rep {rep + 1} x{workers}: FAILED {r['problems']}")
    for f in admin.delete_topics([source], operation_timeout=30).values():
        with contextlib.suppress(Exception):
            f.result(60)
    summary: dict[str, Any] = {}
    for workers in WORKER_COUNTS:
        mine = [r for r in runs if r["workers"] == workers]
        summary[str(workers)] = {
            f: median(mine, f) for f in ("rps", "rps_from_start", "rps_steady",
                                         "split_lines_s", "count_words_s", "app_cpu_s",
                                         "app_window_cpu_s", "broker_cpu_s",
                                         "broker_window_cpu_s", "window_s")}
    one, two = summary["1"]["rps"], summary["2"]["rps"]
    s_one, s_two = summary["1"]["rps_from_start"], summary["2"]["rps_from_start"]
    return {"input_records": n, "partitions": args.partitions, "keys": args.keys,
            "unit": "lines/s" if wl == "W4" else "records/s",
            "output_records": exp.output_records, "summary": summary,
            "ratio_2_over_1": round(two / one, 3) if one and two else None,
            "ratio_2_over_1_from_start": round(s_two / s_one, 3) if s_one and s_two else None,
            **{f"ratio_2_over_1_{f}": ratio(summary, f)
               for f in (("split_lines_s", "count_words_s") if wl == "W4" else ("rps_steady",))},
            "runs": runs}


def machine() -> dict[str, Any]:
    cpu, mem_kb = "unknown", 0
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(x.split(":", 1)[1].strip()
                   for x in Path("/proc/cpuinfo").read_text().splitlines()
                   if x.startswith("model name"))
        mem_kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                      if x.startswith("MemTotal"))
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout
    return {"nproc": int(nproc.strip() or 0), "cpu_count": os.cpu_count(), "cpu": cpu,
            "ram_gib": round(mem_kb / 2**20, 1), "os": platform.platform(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]}


def versions() -> dict[str, str]:
    import confluent_kafka

    from streamproc import __version__
    from streamproc.kafka.broker_provision import KAFKA_VERSION
    return {"python": platform.python_version(), "streamproc": __version__,
            "confluent_kafka": confluent_kafka.__version__,
            "librdkafka": confluent_kafka.libversion()[0], "kafka_broker": KAFKA_VERSION}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000, help="W2 input events")
    ap.add_argument("--lines", type=int, default=200_000, help="W4 input lines (5 words each)")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--workloads", default="W2,W4")
    ap.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny input, one repetition: checks the harness and the outputs")
    ap.add_argument("--out", type=Path, default=BENCH / "workers.json")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep every run's log (the work dir is then kept too)")
    args = ap.parse_args()
    if args.smoke:
        args.records, args.lines, args.keys, args.reps = 5000, 2000, 300, 1
    selected = [w for w in args.workloads.split(",") if w]
    if unknown := set(selected) - {"W2", "W4"}:
        ap.error(f"unknown workloads {sorted(unknown)}: W2 and W4 only")

    from streamproc.kafka import broker

    started = None
    bootstrap = os.environ.get("STREAMPROC_BROKERS")
    if not bootstrap:
        started = broker.start()
        bootstrap = started.bootstrap
    bpid = broker_pid(bootstrap, started)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    work = Path(tempfile.mkdtemp(prefix="streamproc-bench-workers-"))
    res: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine(),
        "versions": versions(), "smoke": args.smoke, "repetitions": args.reps,
        "guarantee": "exactly_once (the default)", "commit_interval_ms": "1000 (the default)",
        "broker": {"bootstrap": bootstrap, "pid": bpid, "same_machine": bpid is not None},
        "cpu_method": "app_cpu_s: os.wait4 on the supervisor (Linux reports a reaped child's "
                      "usage with that of the children it reaped: the supervisor waits for "
                      "every worker), checked >= the /proc/<pid>/stat sum before SIGTERM; "
                      "window figures: /proc/<pid>/stat utime+stime deltas of the supervisor, "
                      "each worker and the broker between the first and the last "
                      "committed-offset movement",
        "workloads": {}}
    log(f"broker {bootstrap} (pid {bpid}); work dir {work}; {res['versions']}")
    for wl in selected:
        res["workloads"][wl] = workload(bootstrap, admin, work, wl, args, bpid)
    failed = [(wl, r["rep"], r["workers"]) for wl, e in res["workloads"].items()
              for r in e["runs"] if not r["ok"]]
    if not failed and not args.keep_logs:
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    log(f"wrote {args.out}")
    print()
    print(f"{'workload':8} {'workers':>7} {'rec/s (median)':>15} {'ratio 2/1':>9} "
          f"{'app CPU s':>9} {'broker CPU s':>12}  stage rates (median, ratio 2/1)")
    for wl, e in res["workloads"].items():
        fields = ("split_lines_s", "count_words_s") if wl == "W4" else ("rps_steady",)
        for workers in WORKER_COUNTS:
            s = e["summary"][str(workers)]
            rps = f"{s['rps']:,.0f}" if s["rps"] is not None else "-"
            rates = ", ".join(
                f"{f} {'-' if s[f] is None else f'{s[f]:,.0f}'}"
                + ("" if workers == 1 else f" ({e[f'ratio_2_over_1_{f}']})") for f in fields)
            print(f"{wl:8} {workers:>7} {rps:>15} "
                  f"{'' if workers == 1 else e['ratio_2_over_1']!s:>9} "
                  f"{s['app_cpu_s']!s:>9} {s['broker_cpu_s']!s:>12}  {rates}")
    print(f"({res['machine']['nproc']} cores; W4 in input lines/s, "
          f"{workloads.WORDS_PER_LINE} words each; CPU s: whole run, medians)")
    if failed:
        log(f"FAILED runs (workload, rep, workers): {failed}; their logs are kept in {work}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
