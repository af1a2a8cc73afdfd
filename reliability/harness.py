"""What every scenario needs: the application's topics, its instances as real processes, a
feeder producing the input, and a clock of how long the group takes to recover from a fault.

Instances are ``python3 -m streamproc.cli run reliability.topology:build`` (the command the
Docker image runs), each with its own state dir, a stable instance id (so a restart takes back
its transactional.id and its static group membership) and a JSON log the scenarios read events
from. Nothing here knows what fault a scenario injects.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from reliability.topology import FLUSH_GROUP, WINDOW_MS

ROOT = Path(__file__).resolve().parent.parent
KEEP = {"retention.ms": "-1"}  # inputs and outputs are read back whole at the end

# Settings of every instance: a checkpoint twice a second and a short session, so that a
# scenario spends its time on faults and recoveries rather than on timeouts.
INSTANCE_SETTINGS: dict[str, str] = {
    "commit_interval_ms": "500", "session_timeout_ms": "6000", "log_level": "info",
    "log_format": "json", "transaction_timeout_ms": "10000"}


def quiet(conf: dict[str, Any]) -> dict[str, Any]:
    """A harness client: librdkafka's own log lines off (a broker that is down on purpose
    makes them noisy)."""
    return {**conf, "log_level": 0, "logger": _Silent()}


_ADMINS: dict[str, AdminClient] = {}


def admin_for(bootstrap: str) -> AdminClient:
    """One admin client per cluster for the whole run: librdkafka has aborted the process
    (an assertion in rd_kafka_enq_once) when short-lived admin clients were destroyed."""
    if bootstrap not in _ADMINS:
        _ADMINS[bootstrap] = AdminClient(quiet({"bootstrap.servers": bootstrap}))
    return _ADMINS[bootstrap]


class _Silent:
    def log(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class App:
    """One scenario's application: its id and topics, created on the cluster."""

    bootstrap: str
    work: Path
    name: str
    partitions: int = 6
    replication: int = 3
    app_id: str = ""
    source: str = ""
    counts: str = ""
    windows: str = ""
    instances: list[Instance] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = f"{self.name}-{uuid.uuid4().hex[:6]}"
        self.app_id = f"rel-{tag}"
        self.source, self.counts, self.windows = (f"{tag}-events", f"{tag}-counts",
                                                  f"{tag}-windows")
        self.work.mkdir(parents=True, exist_ok=True)

    @property
    def late(self) -> str:
        return f"{self.app_id}-late"

    @property
    def dlq(self) -> str:
        return f"{self.app_id}-dlq"

    def create_topics(self) -> None:
        admin = admin_for(self.bootstrap)
        topics = [NewTopic(t, self.partitions, self.replication, config=KEEP)
                  for t in (self.source, self.counts, self.windows)]
        for topic, fut in admin.create_topics(topics, request_timeout=30).items():
            fut.result(60)
            _ = topic

    def instance(self, n: int, **settings: str) -> Instance:
        inst = Instance(self, n, settings)
        self.instances.append(inst)
        return inst

    def settings(self) -> dict[str, str]:
        return {**INSTANCE_SETTINGS, "internal_replication_factor": str(self.replication)}

    def stop_all(self, timeout_s: float = 60) -> list[int | None]:
        return [i.stop(timeout_s) for i in self.instances]


# Every instance process started, so that the runner can kill what a failed scenario left.
STARTED: list[Instance] = []


def kill_all() -> None:
    for inst in STARTED:
        if inst.alive:
            inst.signal(signal.SIGKILL)


class Instance:
    """One instance of an :class:`App` as a real process: start, kill -9, stop, pause."""

    def __init__(self, app: App, n: int, settings: dict[str, str]) -> None:
        self.app, self.n = app, n
        self.state_dir = app.work / f"i{n}" / "state"
        self.log_path = app.work / f"i{n}.log"
        self.bootstrap = app.bootstrap
        self.settings = {**app.settings(), "instance_id": f"i{n}", **settings}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # A command the instance runs under, e.g. ``ip netns exec NS`` (scenario 3 puts each
        # instance in a network namespace of its own, behind a fault proxy).
        self.prefix: list[str] = []

    def argv(self) -> list[str]:
        a = self.app
        return [*self.prefix, sys.executable, "-m", "streamproc.cli", "run",
                "reliability.topology:build",
                "--param", f"app_id={a.app_id}", "--param", f"source={a.source}",
                "--param", f"counts={a.counts}", "--param", f"windows_topic={a.windows}"]

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
        env.update({f"STREAMPROC_{k.upper()}": v for k, v in self.settings.items()})
        env.update(STREAMPROC_BROKERS=self.bootstrap, STREAMPROC_STATE_DIR=str(self.state_dir),
                   PYTHONPATH=str(ROOT), **extra)
        return env

    def start(self, **extra_env: str) -> Instance:
        assert not self.alive, f"instance {self.n} is already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(json.dumps({"event": "harness.start", "at": time.time(),
                                  "env": extra_env}).encode() + b"\n")
            self.proc = subprocess.Popen(self.argv(), cwd=ROOT, env=self.env(extra_env),
                                         stdout=log, stderr=subprocess.STDOUT)
        STARTED.append(self)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(30)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM (a clean stop: final checkpoint, leave the group); SIGKILL after the
        timeout. The exit code, or None if it was not running."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            return None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """JSON events of every run of this instance (whole lines only)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text[:text.rfind("\n") + 1].splitlines():
            if line.startswith("{"):
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if name is None or e.get("event") == name:
                    out.append(e)
        return out

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float, step_s: float = 0.2,
             diagnose: Callable[[], str] = lambda: "") -> float:
    """Wait until ``cond()``; the seconds it took. TimeoutError naming ``what`` otherwise."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s. {diagnose()}")
        time.sleep(step_s)
    return time.monotonic() - t0


# --------------------------------------------------------------------------- input
@dataclass(frozen=True)
class InputSpec:
    records: int
    keys: int = 500
    groups: int = 12
    step_ms: int = 2  # event time between consecutive records: 500 a window of 1 s
    t0: int = 0

    def event(self, i: int) -> tuple[bytes, bytes]:
        return (f"k{i % self.keys}".encode(),
                json.dumps({"id": i, "g": f"g{i % self.groups}",
                            "ts": self.t0 + i * self.step_ms}).encode())


def input_spec(records: int, **kw: Any) -> InputSpec:
    # Event time ends a little before now: inside max_future_skew_ms, after min_timestamp_ms.
    span = records * kw.get("step_ms", 2)
    t0 = int(time.time() * 1000) - span - 120_000
    return InputSpec(records, t0=t0 - t0 % WINDOW_MS, **kw)


class Feeder:
    """Produces an :class:`InputSpec` at ``rate`` records/s from a thread (idempotent, acks=all:
    a broker failure neither loses nor reorders what it sends), then one far-future flush
    record per partition so that every data window closes."""

    def __init__(self, app: App, spec: InputSpec, rate: float) -> None:
        self.app, self.spec, self.rate = app, spec, rate
        self.sent = 0
        self.failed = 0
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._pause = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed += 1

    def _run(self) -> None:
        try:
            p = Producer(quiet({"bootstrap.servers": self.app.bootstrap, "acks": "all",
                                "enable.idempotence": True, "linger.ms": 20,
                                "message.timeout.ms": 300_000}))
            chunk = max(1, int(self.rate / 20))
            t0 = time.monotonic()
            for start in range(0, self.spec.records, chunk):
                for i in range(start, min(start + chunk, self.spec.records)):
                    k, v = self.spec.event(i)
                    while True:
                        try:
                            p.produce(self.app.source, v, k, on_delivery=self._delivered)
                            break
                        except BufferError:
                            p.poll(0.1)
                self.sent = min(start + chunk, self.spec.records)
                p.poll(0)
                ahead = t0 + self.sent / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            last = self.spec.t0 + self.spec.records * self.spec.step_ms
            flush = json.dumps({"id": -1, "g": FLUSH_GROUP, "ts": last + 10 * WINDOW_MS})
            for part in range(self.app.partitions):
                p.produce(self.app.source, flush.encode(), f"flush-{part}".encode(),
                          partition=part, on_delivery=self._delivered)
            left = p.flush(300)
            if left:
                raise RuntimeError(f"{left} input records not delivered in 300 s")
        except BaseException as exc:  # reported by wait()
            self.error = exc
        finally:
            self.done.set()

    def wait(self, timeout_s: float) -> None:
        if not self.done.wait(timeout_s):
            raise TimeoutError(f"the feeder did not finish in {timeout_s:.0f} s "
                               f"({self.sent} of {self.spec.records} sent)")
        if self.error is not None:
            raise RuntimeError(f"the feeder failed: {self.error}") from self.error


# --------------------------------------------------------------------------- recovery clock
class RecoveryClock:
    """How long the group takes to process again after a fault: from the fault until every
    input partition that had records waiting has a committed offset past where it stood.
    One poller thread with one consumer (it never joins the group: ``committed`` only); the
    positions at a fault are the first the poller reads after it, so a fault never blocks
    the scenario (a broker down on purpose can keep them unreadable for seconds)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.durations: list[float] = []
        self.unresolved = 0
        self.without_backlog = 0  # faults when no partition had records waiting: not timed
        self._faults: list[float] = []  # fault times not yet given a snapshot
        self._pending: list[tuple[float, dict[int, int]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._parts = [TopicPartition(app.source, p) for p in range(app.partitions)]
        self._consumer = self._new_consumer()
        self._thread = threading.Thread(target=self._run, name="recovery-clock", daemon=True)
        self._thread.start()

    def _new_consumer(self) -> Consumer:
        return Consumer(quiet({"bootstrap.servers": self.app.bootstrap,
                               "group.id": self.app.app_id, "enable.auto.commit": False}))

    def _positions(self) -> tuple[dict[int, int], dict[int, int]] | None:
        try:
            committed = {tp.partition: tp.offset
                         for tp in self._consumer.committed(self._parts, timeout=5)}
            ends = {tp.partition: self._consumer.get_watermark_offsets(tp, timeout=5)[1]
                    for tp in self._parts}
        except Exception:  # a broker down on purpose: try again on the next tick
            return None
        return committed, ends

    def fault(self) -> None:
        """A fault happens now: time its recovery."""
        with self._lock:
            self._faults.append(time.monotonic())

    def _run(self) -> None:
        failures = 0
        while not self._stop.wait(0.25):
            with self._lock:
                if not self._pending and not self._faults:
                    continue
            pos = self._positions()
            if pos is None:
                failures += 1
                if failures % 20 == 0:  # 5 s of failures: a client stuck on a dead broker
                    self._consumer.close()
                    self._consumer = self._new_consumer()
                continue
            failures = 0
            committed, ends = pos
            now = time.monotonic()
            with self._lock:
                for at in self._faults:
                    waiting = {p: c for p, c in committed.items() if c < ends[p]}
                    if waiting:
                        self._pending.append((at, waiting))
                    else:
                        self.without_backlog += 1
                self._faults = []
                left = []
                for at, waiting in self._pending:
                    if all(committed[p] > c for p, c in waiting.items()):
                        self.durations.append(now - at)
                    else:
                        left.append((at, waiting))
                self._pending = left

    def close(self) -> None:
        self._stop.set()
        self._thread.join(15)
        with self._lock:
            self.unresolved = len(self._pending) + len(self._faults)
        self._consumer.close()

    def figures(self) -> dict[str, Any]:
        d = sorted(self.durations)
        return {"recoveries": len(d), "unresolved": self.unresolved,
                "faults_without_backlog": self.without_backlog,
                "recover_p50_s": round(_pct(d, 50), 2) if d else None,
                "recover_p99_s": round(_pct(d, 99), 2) if d else None,
                "recover_max_s": round(d[-1], 2) if d else None}


def _pct(sorted_values: list[float], p: float) -> float:
    i = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]
