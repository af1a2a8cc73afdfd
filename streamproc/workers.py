"""``streamproc run TOPOLOGY --workers N``: N instances of one application on this machine,
under one supervisor process.

Python runs one core per process, so a machine with N cores runs N instances. A worker is an
ordinary ``streamproc run`` process (the command the image and the tests run, with
``--workers 1``), so it is an instance like any other: its own consumer, transactional
producer, stores and HTTP port. What the supervisor adds:

- **A slot per worker.** Slot ``i`` keeps its state in ``{state_dir}/worker-{i}``, where its
  generated instance id is kept too (a configured ``instance_id`` becomes ``{id}-w{i}``), so a
  restarted worker comes back with its transactional.id and static membership: it fences its
  own predecessor and takes its partitions back without a rebalance.
- **Restarts.** A worker that dies is started again after a backoff (0.5 s doubling to 30 s;
  reset once it has run a minute), each logged. One that fails more than five times in five
  minutes stops the application with a non-zero exit: a crash loop is a failure to report,
  not to hide. A worker that exits 2 (bad configuration, a missing topic) stops everything at
  once, since a restart cannot fix it; one that exits 0 (a bounded run that finished) is done.
- **Signals.** SIGTERM or SIGINT is passed to every worker, which takes its final checkpoint;
  the supervisor waits ``shutdown_timeout_ms`` (plus a margin) before SIGKILL. If the
  supervisor itself is killed, the kernel sends each worker SIGTERM (``PR_SET_PDEATHSIG``):
  no orphan keeps processing without anyone to stop it.
- **One HTTP front** (streamproc/ops/front.py) on ``http_port`` when it is set: the probes,
  ``/metrics`` and ``/status`` of all workers at one address; worker ``i`` listens on
  ``http_port + 1 + i``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from streamproc.config import Settings, flag_for
from streamproc.ops.front import Front, WorkerView

log = structlog.get_logger("streamproc.workers")

# A worker started by a supervisor finds the supervisor's pid here (not a STREAMPROC_ setting:
# nobody sets it by hand).
SUPERVISOR_ENV = "_STREAMPROC_SUPERVISOR_PID"

EXIT_CONFIG = 2  # streamproc's exit code for errors that a restart cannot fix


@dataclass(frozen=True)
class RestartPolicy:
    backoff_first_s: float = 0.5
    backoff_max_s: float = 30.0
    healthy_after_s: float = 60.0  # a worker that ran this long starts its backoff over
    max_failures: int = 5  # more failures than this within the window: the application fails
    window_s: float = 300.0
    shutdown_margin_s: float = 15.0  # past shutdown_timeout_ms before SIGKILL


@dataclass(frozen=True)
class Slot:
    """What makes worker ``index`` itself across restarts."""

    index: int
    state_dir: Path
    instance_id: str | None  # None: generated on first start, kept in state_dir
    http_port: int | None
    advertised_url: str | None

    def flags(self) -> list[str]:
        """The flags that turn the application's command line into this worker's."""
        out = [flag_for("workers"), "1", flag_for("state_dir"), str(self.state_dir)]
        if self.instance_id is not None:
            out += [flag_for("instance_id"), self.instance_id]
        if self.http_port is not None:
            out += [flag_for("http_port"), str(self.http_port)]
        if self.advertised_url is not None:
            out += [flag_for("http_advertised_url"), self.advertised_url]
        return out


def plan_slots(settings: Settings, free_port: Callable[[str], int] | None = None
               ) -> list[Slot]:
    """The slots of ``settings.workers`` workers. With ``http_port`` P > 0 worker ``i`` gets
    P + 1 + i; with 0 (any free port) each gets a free port picked now, so the front knows
    where to find it."""
    pick = free_port or _free_port
    slots = []
    for i in range(settings.workers):
        port: int | None = None
        if settings.http_port is not None:
            port = settings.http_port + 1 + i if settings.http_port else pick(settings.http_host)
        url = settings.http_advertised_url
        slots.append(Slot(
            index=i, state_dir=settings.state_dir / f"worker-{i}",
            instance_id=None if settings.instance_id is None else f"{settings.instance_id}-w{i}",
            http_port=port,
            advertised_url=None if url is None or port is None else with_port(url, port)))
    return slots


def with_port(url: str, port: int) -> str:
    """``url`` (http(s)://host[:port]) with ``port``: the advertised URL of a worker is the
    application's, at the worker's own port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def adopt_supervisor() -> None:
    """In a worker: ask the kernel for SIGTERM when the supervisor dies (Linux), and stop at
    once if it already has. Outside a supervisor, nothing."""
    parent = os.environ.get(SUPERVISOR_ENV)
    if not parent or not parent.isdigit():
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # it died between our fork and the prctl
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Worker:
    """One slot's process and its history (read by the HTTP front from its own thread)."""

    slot: Slot
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    state: str = "starting"  # starting | running | backoff | done | failed
    restarts: int = 0
    last_exit: int | None = None
    next_start: float = 0.0
    backoff_s: float = 0.0  # the next restart's; 0: the policy's first
    failures: deque[float] = field(default_factory=deque)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.state == "running" else None


class Supervisor:
    """Starts the workers, restarts them, stops them. :meth:`run` returns the exit code."""

    def __init__(self, settings: Settings, command: Sequence[str], *,
                 slots: Sequence[Slot] | None = None,
                 policy: RestartPolicy = RestartPolicy()) -> None:
        self.settings = settings
        self.policy = policy
        # The worker's command line without the slot's flags: python -m streamproc run ...
        self._command = list(command)
        self.workers = [Worker(s) for s in (slots or plan_slots(settings))]
        self._stopping = threading.Event()
        self._exit: int | None = None  # set when the application must stop with it

    def stop(self) -> None:
        self._stopping.set()

    def views(self) -> list[WorkerView]:
        """The workers as they are now, for the HTTP front's thread."""
        now = time.monotonic()
        return [WorkerView(index=w.slot.index, port=w.slot.http_port, state=w.state,
                           restarts=w.restarts, pid=w.pid, last_exit=w.last_exit,
                           running_for_s=now - w.started_at if w.state == "running" else 0.0)
                for w in self.workers]

    def run(self) -> int:
        log.info("workers.starting", workers=len(self.workers),
                 state_dir=str(self.settings.state_dir))
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                for w in self.workers:
                    self._tend(w, now)
                if self._exit is not None:
                    break
                if all(w.state == "done" for w in self.workers):
                    log.info("workers.done")
                    return 0
                self._stopping.wait(0.1)
        finally:
            self._shutdown()
        if self._exit is not None:
            return self._exit
        codes = [w.last_exit for w in self.workers if w.last_exit not in (None, 0)]
        return 0 if not codes else 1

    def _tend(self, w: Worker, now: float) -> None:
        if w.state in ("starting", "backoff") and now >= w.next_start:
            self._start(w, now)
            return
        if w.state != "running" or w.proc is None:
            return
        code = w.proc.poll()
        if code is None:
            return
        w.last_exit = code
        ran_s = now - w.started_at
        if code == 0:
            w.state = "done"
            log.info("worker.done", worker=w.slot.index, ran_s=round(ran_s, 1))
            return
        if code == EXIT_CONFIG:
            w.state = "failed"
            log.error("workers.failing", worker=w.slot.index, exit_code=code,
                      reason="the worker stopped on an error a restart cannot fix "
                      "(its own error line says which)")
            self._exit = code if self._exit is None else self._exit
            return
        p = self.policy
        if ran_s >= p.healthy_after_s or not w.backoff_s:
            w.backoff_s = p.backoff_first_s
        w.failures.append(now)
        while w.failures and now - w.failures[0] > p.window_s:
            w.failures.popleft()
        if len(w.failures) > p.max_failures:
            w.state = "failed"
            log.error("workers.failing", worker=w.slot.index, exit_code=code,
                      reason=f"failed {len(w.failures)} times within {p.window_s:g} s")
            self._exit = 1 if self._exit is None else self._exit
            return
        w.state, w.next_start = "backoff", now + w.backoff_s
        log.warning("worker.restarting", worker=w.slot.index, exit_code=code,
                    ran_s=round(ran_s, 1), backoff_s=w.backoff_s, restarts=w.restarts + 1)
        w.backoff_s = min(w.backoff_s * 2, p.backoff_max_s)

    def _start(self, w: Worker, now: float) -> None:
        if w.state == "backoff":
            w.restarts += 1
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
        w.proc = subprocess.Popen([*self._command, *w.slot.flags()], env=env)
        w.started_at, w.state = now, "running"
        log.info("worker.started", worker=w.slot.index, pid=w.proc.pid,
                 state_dir=str(w.slot.state_dir), http_port=w.slot.http_port)

    def _shutdown(self) -> None:
        """SIGTERM to every live worker (its final checkpoint), SIGKILL to those still there
        after the shutdown timeout."""
        live = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for w in live:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.settings.shutdown_timeout_ms / 1000 \
            + self.policy.shutdown_margin_s
        for w in live:
            assert w.proc is not None
            try:
                w.last_exit = w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker.killed", worker=w.slot.index, pid=w.proc.pid,
                          reason="did not stop within the shutdown timeout")
                w.proc.kill()
                w.last_exit = w.proc.wait()
            if w.state == "running":
                w.state = "done" if w.last_exit == 0 else "failed"
        log.info("workers.stopped", exit_codes=[w.last_exit for w in self.workers])


def worker_command(argv: Sequence[str]) -> list[str]:
    """The worker's command line: this same ``streamproc`` command (``argv`` without the
    program name), run by this interpreter."""
    return [sys.executable, "-m", "streamproc", *argv]


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """``streamproc run --workers N`` (``argv`` without the program name): this process
    supervises the workers, and serves their HTTP front, instead of running an instance."""
    supervisor = Supervisor(settings, worker_command(argv))

    def on_signal(signum: int, _frame: object) -> None:
        log.info("workers.stopping", signal=signal.Signals(signum).name)
        supervisor.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    front = None
    if settings.http_port is not None:
        front = Front(settings, supervisor.views)
        port = front.start()
        log.info("http.listening", port=port, host=settings.http_host, front=True)
    try:
        return supervisor.run()
    finally:
        if front is not None:
            front.stop()
