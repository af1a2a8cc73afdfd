"""W6 with a standby: ``kill -9`` of one of two instances to the survivor's first output, with
state for 1,000,000 keys, with and without ``num_standby_replicas=1`` (issue #19, part 3).

    python bench/standby.py [--keys 1000000] [--partitions 8] [--reps 2] [--rate 200]
    python bench/standby.py --smoke          # 20,000 keys, one repetition: checks the harness

Per repetition, one run per mode (``num_standby_replicas`` 0 and 1; the order alternates
between repetitions), each with a fresh application id, topics and state dirs. A run:

1. Two instances ("a" and "b": own state dir, own HTTP port, static members) of W2 (count per
   key, bench/workers_topologies.py:w2) under ``streamproc run``, exactly-once, start together
   and split the input's partitions. One record per key is produced (keys u0000000...), and the
   run waits until the group has committed all of it; with a standby, also until both instances
   report on /metrics ``streamproc_standby_tasks`` = the other's task count and
   ``streamproc_standby_lag_records`` 0 for each.
2. A trickle (bench/loadgen.py, ``--rate`` records/s over keys of the same set, so the state
   stays at ``--keys`` keys) runs into every partition; once a's partitions commit it, and a
   commit interval and a half later (a random point of a's transaction), a gets ``kill -9``
   and is not restarted.
3. Timestamps: the kill (harness clock); b's ``rebalance.assigned`` naming a's partitions and
   b's ``restore.completed`` / ``task.running`` of a's tasks (b's JSON log, same clock); the
   broker's rollback of a's open transaction (broker.log); the first output of a's former
   partitions: the group's committed offsets, polled every 20 ms by one never-subscribed
   consumer, move past where a left them (under exactly-once the output and the input offsets
   commit in one transaction). ``first_output`` waits for all of a's partitions to move,
   ``first_any`` for one. ``first_readable_output``: the first record a read_committed reader
   of a's output partitions gets past their high watermark at the kill (what downstream sees:
   only after the broker rolled a's open transaction back).
4. The trickle stops, b drains, and the output is checked (workloads.check): one update per
   input record, counts increasing, the final count per key exact, against the input topic
   read back (whatever the trickle got into it). A wrong output fails the benchmark (exit 1).

Phases reported: kill -> reassignment (the group protocol: a static member leaves only when
its ``session_timeout_ms`` expires, counted from its last heartbeat, and the survivor rejoins
on its next heartbeat); reassignment -> first output (releasing the standbys, the restore, the
first commit; the offset fetch would also wait for a's open transaction if the kill fell
between a's offsets going into it and its commit: ``committed_retries_logged``); kill -> first
output; kill -> first readable output (a's open transaction holds read_committed readers of
a's output partitions until the broker's coordinator times it out). Medians over the
repetitions. The broker (started by the harness, own data dir) shares the 2 cores with both
instances. Results: bench/standby.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import workloads  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from kafkaops import Kafka  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from workers import Progress, log, machine, versions  # noqa: E402

from streamproc.kafka import io  # noqa: E402
from streamproc.kafka.ports import free_port  # noqa: E402

POLL_S = 0.02
# workloads.events numbers the keys u{i:07d} (one distinct key per record) when its key space
# is at least 100,000; below, it draws them at random. loadgen.py, given the same key space,
# cycles over the first 4 x rate of them: keys of the built state.
KEY_SPACE_MIN = 100_000


def ts_of(event: dict[str, Any]) -> float:
    """Epoch seconds of a JSON log line (structlog's ISO timestamp, UTC)."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


class Instance:
    """One ``streamproc run`` process of the W2 app, its JSON log and its HTTP surface."""

    def __init__(self, name: str, app_id: str, source: str, sink: str, bootstrap: str,
                 work: Path, settings: dict[str, Any]) -> None:
        self.name, self.port = name, free_port()
        self.log = work / f"{app_id}-{name}.log"
        self.state = work / f"{app_id}-{name}-state"
        self.cmd = [sys.executable, "-m", "streamproc", "run", "bench.workers_topologies:w2",
                    "--param", f"app_id={app_id}", "--param", f"source={source}",
                    "--param", f"sink={sink}"]
        self.env = {**os.environ, "STREAMPROC_BROKERS": bootstrap,
                    "STREAMPROC_STATE_DIR": str(self.state), "STREAMPROC_LOG_FORMAT": "json",
                    "STREAMPROC_LOG_LEVEL": "info", "STREAMPROC_INSTANCE_ID": name,
                    "STREAMPROC_HTTP_PORT": str(self.port), "PYTHONPATH": str(ROOT),
                    **{f"STREAMPROC_{k.upper()}": str(v) for k, v in settings.items()}}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"instance {self.name} exited with {self.proc.returncode}: "
                               f"{self.log.read_text(errors='replace')[-1500:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 90) -> int:
        if self.alive():
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            return -9

    def get(self, path: str) -> str | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5).text
        except httpx.HTTPError:
            return None

    def partitions(self, topic: str) -> set[int]:
        text = self.get("/status")
        if text is None:
            return set()
        return {p["partition"] for p in json.loads(text).get("partitions", [])
                if p["topic"] == topic}

    def gauge(self, name: str) -> list[tuple[dict[str, str], float]]:
        text = self.get("/metrics") or ""
        return [(s.labels, s.value) for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == name]

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        """The JSON log lines past byte ``after`` (whole lines only)."""
        data = self.log.read_bytes()[after:]
        out = []
        for line in data[:data.rfind(b"\n") + 1].splitlines():
            if line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out


def wait(check: Any, timeout_s: float, what: str, *insts: Instance,
         every_s: float = 0.2) -> float:
    """Poll ``check()`` until true; the time it took. Fails if an instance dies."""
    t0 = time.monotonic()
    while not check():
        for inst in insts:
            inst.check_alive()
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)
    return time.monotonic() - t0


def warm(inst: Instance, tasks: int) -> bool:
    """``tasks`` standbys (one store each), none behind its changelog."""
    count = inst.gauge("streamproc_standby_tasks")
    lag = inst.gauge("streamproc_standby_lag_records")
    return count == [({}, float(tasks))] and len(lag) == tasks and all(v == 0.0 for _, v in lag)


def broker_rollback(broker_log: Path | None, txn_id: str, after: float) -> float | None:
    """When the broker's transaction coordinator rolled back ``txn_id``'s open transaction
    (its periodic check for timed-out transactions), after ``after``. log4j's ISO8601
    timestamps are local time, without a zone."""
    if broker_log is None or not broker_log.exists():
        return None
    needle = f"Completed rollback of ongoing transaction for transactionalId {txn_id} due to"
    for line in broker_log.read_text(errors="replace").splitlines():
        if needle in line:
            with contextlib.suppress(ValueError):
                t = datetime.strptime(line[1:24], "%Y-%m-%dT%H:%M:%S,%f").astimezone()
                if t.timestamp() > after:
                    return t.timestamp()
    return None


def run_once(kafka: Kafka, replicas: int, args: argparse.Namespace, work: Path,
             broker_log: Path | None) -> dict[str, Any]:
    app_id = f"bstandby-r{replicas}-{uuid.uuid4().hex[:6]}"
    src, sink = f"{app_id}-in", f"{app_id}-out"
    kafka.create(src, args.partitions)
    kafka.create(sink, args.partitions)
    settings = {"num_standby_replicas": replicas, "session_timeout_ms": args.session_timeout_ms}
    r: dict[str, Any] = {"num_standby_replicas": replicas, "app_id": app_id, "ok": False,
                         "problems": []}
    insts: dict[str, Instance] = {}
    progress = Progress(kafka.bootstrap, app_id)
    gen: subprocess.Popen[bytes] | None = None
    try:
        insts = {n: Instance(n, app_id, src, sink, kafka.bootstrap, work, settings)
                 for n in ("a", "b")}
        a, b = insts["a"], insts["b"]
        every = set(range(args.partitions))

        def split() -> bool:
            pa, pb = a.partitions(src), b.partitions(src)
            return bool(pa) and bool(pb) and not pa & pb and pa | pb == every

        # Both in the group before the input exists: nothing is built twice or moved later.
        wait(split, 180, "both instances assigned", a, b)
        t0 = time.monotonic()
        spec = workloads.Spec("events", args.keys, max(args.keys, KEY_SPACE_MIN))
        kafka.produce(src, workloads.events(spec))
        ends = progress.ends(src)
        wait(lambda: progress.committed(src) == ends, args.timeout, "state build", a, b)
        r["build_s"] = round(time.monotonic() - t0, 1)
        held = {n: sorted(i.partitions(src)) for n, i in insts.items()}
        r["partitions_a"], r["partitions_b"] = held["a"], held["b"]
        if replicas:
            # The standbys tail the changelogs behind the active tasks: caught up is the
            # steady state a failure is meant to find (what the gauges publish, every 2 s).
            r["standby_warm_after_build_s"] = round(wait(
                lambda: warm(a, len(held["b"])) and warm(b, len(held["a"])), args.timeout,
                "standbys caught up", a, b), 1)

        # The trickle: every partition keeps getting input, as in production.
        before = progress.ends(src)
        gen = subprocess.Popen([sys.executable, str(BENCH / "loadgen.py"), "--brokers",
                                kafka.bootstrap, "--topic", src, "--rate", str(args.rate),
                                "--seconds", "3600", "--keys",
                                str(max(args.keys, KEY_SPACE_MIN))],
                               stdout=subprocess.DEVNULL)
        start = progress.committed(src)
        wait(lambda: all(progress.committed(src)[p] > start[p] for p in held["a"]), 60,
             "a committing the trickle", a, b)
        time.sleep(1.5 * args.commit_interval_ms / 1000)
        mark = b.log.stat().st_size
        # Shared machine: the load at the kill says how much else ran on the 2 cores.
        r["loadavg_at_kill"] = Path("/proc/loadavg").read_text().split()[:3]
        a.proc.send_signal(signal.SIGKILL)
        t_kill = time.time()
        a.proc.wait(30)
        # Where a's committed offsets stand: an EndTxn a sent just before the kill completes
        # within milliseconds; b cannot be assigned a's partitions before the session expires.
        time.sleep(0.3)
        base = progress.committed(src)
        # What a downstream read_committed reader sees: a's output partitions from their high
        # watermark at the kill (past a's open transaction), so the first record it gets is
        # b's output, readable only once a's transaction has been rolled back.
        sink_end = progress.ends(sink)
        reader = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"{app_id}-rd",
                           "isolation.level": "read_committed", "enable.auto.commit": False,
                           "fetch.wait.max.ms": 10})
        reader.assign([TopicPartition(sink, p, sink_end[p]) for p in held["a"]])
        t_any = t_all = t_visible = None
        moved: set[int] = set()
        last_b = (time.time(), [base[p] for p in held["b"]])
        b_gap = 0.0
        deadline = time.monotonic() + args.timeout
        try:
            while t_all is None or t_visible is None:
                now_c, now = progress.committed(src), time.time()
                newly = {p for p in held["a"] if now_c[p] > base[p]} - moved
                if newly:
                    moved |= newly
                    t_any = t_any or now
                    if moved == set(held["a"]):
                        t_all = now
                mine = [now_c[p] for p in held["b"]]
                if mine != last_b[1]:  # the survivor's own partitions: did they stall?
                    b_gap = max(b_gap, now - last_b[0])
                    last_b = (now, mine)
                if t_visible is None and any(m.error() is None for m in reader.consume(100, 0)):
                    t_visible = time.time()
                b.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no output from a's partitions within "
                                       f"{args.timeout:.0f} s of the kill (committed again: "
                                       f"{sorted(moved)}, readable: {t_visible is not None})")
                time.sleep(POLL_S)
        finally:
            reader.close()
        r["survivor_own_max_commit_gap_s"] = round(max(b_gap, time.time() - last_b[0]), 2)

        # b's view of the failover, from its log.
        ev = b.events(mark)
        a_tp = {f"{src}[{p}]" for p in held["a"]}
        assigned = [e for e in ev if e["event"] == "rebalance.assigned"
                    and a_tp & set(e["partitions"])]
        got = {tp for e in assigned for tp in e["partitions"]}
        if not assigned or not a_tp <= got:
            raise RuntimeError(f"b's log shows a's partitions {sorted(a_tp - got)} never "
                               "assigned")
        a_tasks = {t for e in assigned for t in e["new_tasks"]}
        restores = [e for e in ev if e["event"] == "restore.completed" and e["task"] in a_tasks]
        running = [e for e in ev if e["event"] == "task.running" and e["task"] in a_tasks]
        retries = [e for e in ev if e["event"] == "offsets.committed_retry"]
        t_assigned = ts_of(assigned[0])
        t_restored = max((ts_of(e) for e in restores), default=None)
        t_running = max((ts_of(e) for e in running), default=None)
        t_rollback = broker_rollback(broker_log, f"{app_id}-a", t_kill)
        rel = {"assigned": t_assigned, "restored": t_restored, "running": t_running,
               "first_any": t_any, "first_output": t_all, "txn_rollback": t_rollback,
               "first_readable_output": t_visible}
        r["since_kill_s"] = {k: None if v is None else round(v - t_kill, 3)
                             for k, v in rel.items()}
        r.update(
            kill_to_reassignment_s=round(t_assigned - t_kill, 3),
            reassignment_to_first_output_s=round(t_all - t_assigned, 3),
            reassignment_to_restored_s=(round(t_restored - t_assigned, 3)
                                        if t_restored else None),
            reassignment_to_first_any_s=round(t_any - t_assigned, 3) if t_any else None,
            kill_to_first_output_s=round(t_all - t_kill, 3),
            kill_to_txn_rollback_s=round(t_rollback - t_kill, 3) if t_rollback else None,
            kill_to_first_readable_output_s=round(t_visible - t_kill, 3),
            restored_records=sum(int(e["records"]) for e in restores),
            restore_seconds_max=max((float(e["seconds"]) for e in restores), default=None),
            restores=[{k: e.get(k) for k in ("task", "records", "seconds", "from_offset",
                                              "to_offset")} for e in restores],
            committed_retries_logged=len(retries),
            last_committed_retry_since_kill_s=(round(ts_of(retries[-1]) - t_kill, 3)
                                               if retries else None),
            standby_released=[(e["task"], e["reason"]) for e in ev
                              if e["event"] == "standby.released"],
            survivor_lost_or_revoked=[e["event"] for e in ev
                                      if e["event"] in ("rebalance.lost", "rebalance.revoked")])
        if len(restores) < len(a_tasks):
            r["problems"].append(f"b logged {len(restores)} restore.completed for a's "
                                 f"{len(a_tasks)} tasks")
        if t_any is not None and t_any < t_assigned:
            r["problems"].append("a's partitions committed before b was assigned them")

        # Stop the trickle, let b drain, check the output against the input read back.
        gen.send_signal(signal.SIGTERM)
        gen.wait(30)
        after = progress.ends(src)
        silent = [p for p in every if after[p] <= before[p]]
        if silent:
            r["problems"].append(f"the trickle never reached partitions {silent}")
        r["trickle_records"] = sum(after) - sum(before)
        wait(lambda: progress.committed(src) == after, args.timeout, "b draining", b)
        inputs = io.read_all(kafka.bootstrap, src, timeout_s=300)
        outputs = io.read_all(kafka.bootstrap, sink, timeout_s=300)
        counts = Counter((m.key or b"").decode() for m in inputs)
        r["input_records"], r["output_records"], r["keys"] = len(inputs), len(outputs), \
            len(counts)
        r["problems"] += workloads.check("W2", workloads.Expected(len(inputs), final=counts),
                                         [(m.key, m.value) for m in outputs])
        code = b.stop()
        if code != 0:
            r["problems"].append(f"b exited {code} after SIGTERM")
    except Exception as exc:
        r["problems"].append(f"{type(exc).__name__}: {exc}")
    finally:
        progress.close()
        if gen is not None and gen.poll() is None:
            gen.kill()
            gen.wait(30)
        for inst in insts.values():
            inst.stop()
    r["ok"] = not r["problems"]
    kafka.discard(app_id)
    for inst in insts.values():
        shutil.rmtree(inst.state, ignore_errors=True)
        if r["ok"] and not args.keep_logs:
            inst.log.unlink(missing_ok=True)
        else:
            r[f"log_{inst.name}"] = str(inst.log)
    return r


FIELDS = ("kill_to_reassignment_s", "reassignment_to_restored_s",
          "reassignment_to_first_output_s", "kill_to_first_output_s", "restored_records",
          "kill_to_txn_rollback_s", "kill_to_first_readable_output_s",
          "build_s", "standby_warm_after_build_s", "survivor_own_max_commit_gap_s")


def median(runs: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in runs if r["ok"] and r.get(field) is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rate", type=int, default=200, help="trickle, records/s (all partitions)")
    ap.add_argument("--session-timeout-ms", type=int, default=6000,
                    help="both modes: how long the dead static member keeps its partitions")
    ap.add_argument("--timeout", type=float, default=600.0, help="per wait, seconds")
    ap.add_argument("--smoke", action="store_true", help="20,000 keys, one repetition")
    ap.add_argument("--out", type=Path, default=BENCH / "standby.json")
    ap.add_argument("--keep-logs", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.keys, args.reps = 20_000, 1
    args.commit_interval_ms = 1000  # the default, which the instances run with

    from streamproc.kafka import broker

    work = Path(tempfile.mkdtemp(prefix="streamproc-bench-standby-"))
    started = None
    bootstrap = os.environ.get("STREAMPROC_BROKERS")
    if not bootstrap:
        # Its own data dir: a broker someone else runs is neither reused nor stopped.
        started = broker.start(data_dir=work / "broker")
        bootstrap = started.bootstrap
    broker_log = started.data_dir / "broker.log" if started is not None else None
    kafka = Kafka(bootstrap)
    res: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine(),
        "versions": versions(), "smoke": args.smoke, "repetitions": args.reps,
        "keys": args.keys, "partitions": args.partitions, "instances": ["a", "b"],
        "settings": {"processing_guarantee": "exactly_once (the default)",
                     "commit_interval_ms": "1000 (the default)",
                     "transaction_timeout_ms": "10000 (the default)",
                     "session_timeout_ms": args.session_timeout_ms,
                     "static_membership": "true (the default)",
                     "partition_assignor": "auto (cooperative-sticky for W2)",
                     "trickle_rps": args.rate},
        "broker": {"bootstrap": bootstrap, "started_by_bench": started is not None},
        "method": "kill -9 of instance a; timestamps from the harness clock (kill, committed "
                  "offsets polled every 20 ms), b's JSON log and broker.log, same machine",
        "runs": []}
    log(f"broker {bootstrap}; work dir {work}; {res['versions']}")
    try:
        for rep in range(args.reps):
            for replicas in ((0, 1) if rep % 2 == 0 else (1, 0)):
                r = run_once(kafka, replicas, args, work, broker_log)
                r["rep"] = rep + 1
                res["runs"].append(r)
                if r["ok"]:
                    log(f"rep {rep + 1} standby={replicas}: kill->reassigned "
                        f"{r['kill_to_reassignment_s']} s, reassigned->restored "
                        f"{r['reassignment_to_restored_s']} s ({r['restored_records']:,} "
                        f"records), reassigned->first output "
                        f"{r['reassignment_to_first_output_s']} s, kill->first output "
                        f"{r['kill_to_first_output_s']} s; since kill {r['since_kill_s']}")
                else:
                    log(f"rep {rep + 1} standby={replicas}: FAILED {r['problems']}")
    finally:
        if started is not None:
            broker.stop(started.data_dir)
    res["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    res["summary"] = {str(m): {f: median([r for r in res["runs"]
                                          if r["num_standby_replicas"] == m], f)
                               for f in FIELDS} for m in (0, 1)}
    with_standby = res["summary"]["1"]["reassignment_to_first_output_s"]
    res["target"] = {"what": "reassignment -> first output with a standby <= 2 s "
                             "(kill -> reassignment is the session timeout)",
                     "median_s": with_standby,
                     "met": with_standby is not None and with_standby <= 2.0}
    failed = [(r["rep"], r["num_standby_replicas"]) for r in res["runs"] if not r["ok"]]
    if not failed and not args.keep_logs:
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    log(f"wrote {args.out}")
    print()
    cols = (("kill->assigned", "kill_to_reassignment_s"),
            ("assigned->restored", "reassignment_to_restored_s"),
            ("restored recs", "restored_records"),
            ("assigned->output", "reassignment_to_first_output_s"),
            ("kill->output", "kill_to_first_output_s"),
            ("kill->txn rollback", "kill_to_txn_rollback_s"),
            ("kill->readable", "kill_to_first_readable_output_s"))
    print("standby " + " ".join(f"{c:>18}" for c, _ in cols) + "  (medians, s)")
    for m in ("0", "1"):
        print(f"{m:>7} " + " ".join(f"{res['summary'][m][f]!s:>18}" for _, f in cols))
    print(f"(session_timeout_ms {args.session_timeout_ms}: kill->assigned is the group "
          f"protocol's; target assigned->output <= 2 s with a standby: "
          f"{'met' if res['target']['met'] else 'MISSED'}; readable: what a read_committed "
          f"reader of the output sees, after the broker rolled back a's open transaction)")
    if failed:
        log(f"FAILED runs (rep, standby): {failed}; logs kept in {work}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
