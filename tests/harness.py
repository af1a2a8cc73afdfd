"""Running applications for tests: in a thread (fast, same process) or as a real process that
can be SIGKILLed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from streamproc import Topology
from streamproc.config import load_settings
from streamproc.kafka import io
from streamproc.kafka.admin import TopicAdmin, TopicSpec
from streamproc.runtime.app import Application
from streamproc.service import application

ROOT = Path(__file__).resolve().parent.parent


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cli(kafka: str, *args: str, timeout_s: float = 90,
        **env: str) -> subprocess.CompletedProcess[str]:
    """``python3 -m streamproc ARGS`` as a user runs it, against ``kafka``, with extra
    environment variables (``STREAMPROC_*`` settings, crash points); output captured."""
    return subprocess.run([sys.executable, "-m", "streamproc", *args], cwd=ROOT,
                          env={**os.environ, "STREAMPROC_BROKERS": kafka,
                               "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=timeout_s)


# Test records are dated by the examples' clock (2024) or earlier: time-based retention would
# delete them from the broker (each batch that old rolls a segment) before a test reads its
# output back, which happened under load. Test topics keep everything.
KEEP = {"retention.ms": "-1"}


def create_topics(bootstrap: str, *specs: tuple[str, int]) -> None:
    TopicAdmin(bootstrap).create([TopicSpec(name, n, KEEP) for name, n in specs])


def feed(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]],
         seconds: float, chunks: int = 30) -> threading.Thread:
    """Produce ``records`` in ``chunks`` spread over ``seconds`` from a background thread, so
    that kills and rebalances land mid-processing."""
    size = -(-len(records) // chunks)

    def run() -> None:
        for i in range(0, len(records), size):
            io.produce(bootstrap, topic, records[i:i + size])
            time.sleep(seconds / chunks)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# Fast checkpoints and a short session so tests spend their time on behaviour, not timeouts.
TEST_SETTINGS: dict[str, Any] = {"commit_interval_ms": 200, "session_timeout_ms": 6000,
                                 "log_level": "warning"}


@contextmanager
def running(topology: Topology, bootstrap: str, state_dir: Path,
            **settings: Any) -> Iterator[Application]:
    """Run an application in a background thread; stop it (final checkpoint) on exit."""
    app = application(topology, load_settings(**{**TEST_SETTINGS, "state_dir": state_dir,
                                                 **settings}), bootstrap=bootstrap)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(app.run()), daemon=True)
    thread.start()
    try:
        yield app
    finally:
        app.stop()
        thread.join(60)
        assert not thread.is_alive(), "application did not stop within 60 s"
    assert result == [0], f"application exited with {result}"


class AppProcess:
    """``streamproc run <spec>`` as a child process, output to a log file."""

    def __init__(self, spec: str, bootstrap: str, state_dir: Path, log_path: Path,
                 env: dict[str, str], **settings: Any) -> None:
        self.spec = spec
        self.log_path = log_path
        self.env = {**os.environ, **env, "STREAMPROC_BROKERS": bootstrap,
                    "STREAMPROC_STATE_DIR": str(state_dir), "STREAMPROC_LOG_FORMAT": "json",
                    "PYTHONPATH": str(ROOT)}
        for k, v in {**TEST_SETTINGS, "log_level": "info", **settings}.items():
            self.env[f"STREAMPROC_{k.upper()}"] = str(v)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **extra_env: str) -> AppProcess:
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.time():.3f} {extra_env}\n".encode())
        with open(self.log_path, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamproc.cli", "run", self.spec], cwd=ROOT,
                env={**self.env, **extra_env}, stdout=out, stderr=subprocess.STDOUT)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, event: str, after: int = 0) -> list[dict[str, Any]]:
        """The JSON log events named ``event`` past character ``after`` of the log (only whole
        lines: the child may be writing the last one)."""
        text = self.log_text()[after:]
        out = []
        for line in text[:text.rfind("\n") + 1].splitlines():
            if line.startswith("{"):
                e = json.loads(line)
                if e.get("event") == event:
                    out.append(e)
        return out


def wait_event(app: AppProcess, event: str, timeout_s: float, after: int = 0
               ) -> list[dict[str, Any]]:
    """Wait for the JSON log event ``event`` past character ``after`` of ``app``'s log."""
    deadline = time.monotonic() + timeout_s
    while not (found := app.events(event, after)):
        assert time.monotonic() < deadline, \
            f"{event} not seen in {timeout_s} s:\n{app.log_text()[-3000:]}"
        time.sleep(0.2)
    return found


def wait_progress(app: AppProcess, kafka: str, group: str, *, after: int = 0,
                  timeout_s: float = 60.0, unless: Callable[[], bool] = lambda: False) -> None:
    """Wait until ``app`` has processed and committed records of its own partitions: a
    checkpoint moved ``group``'s committed offset of a partition one of its tasks started on
    (its ``task.running`` events past character ``after`` of its log) beyond where that task
    started. Returns early once ``unless()`` holds (e.g. the input has all been fed, so there
    may be nothing left for it to process); fails if the process dies or on the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert app.alive, app.log_text()[-3000:]
        started: dict[str, dict[int, int]] = {}
        for e in app.events("task.running", after):
            for name, offset in zip(e["partitions"], e["committed"], strict=True):
                topic, partition = name[:-1].rsplit("[", 1)
                started.setdefault(topic, {})[int(partition)] = -1 if offset is None else offset
        for topic, starts in started.items():
            now = io.committed_offsets(kafka, group, topic)
            if any(now.get(p, -1) > offset for p, offset in starts.items()):
                return
        if unless():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint of {app.spec} moved {group}'s offsets on "
                                 f"{started} within {timeout_s} s:\n{app.log_text()[-3000:]}")
        time.sleep(0.2)


def crash_while_fed(app: AppProcess, feeder: threading.Thread,
                    points: list[tuple[str, int]], seed: int) -> int:
    """While ``feeder`` produces: kill ``app`` at each named crash point (after its nth hit),
    then with kill -9 at random moments (1.5-3 s after each start) until the feeding ends.
    Returns the number of kills; the app is left stopped."""
    kills = 0
    for point, nth in points:
        app.start(STREAMPROC_TEST_CRASH_AT=point, STREAMPROC_TEST_CRASH_AFTER=str(nth))
        code = app.wait(90)
        assert code == -9, f"expected a SIGKILL at {point}, got {code}\n{app.log_text()[-3000:]}"
        kills += 1
    rng = random.Random(seed)
    while feeder.is_alive():
        app.start()
        time.sleep(rng.uniform(1.5, 3.0))
        assert app.alive, app.log_text()[-3000:]
        app.kill9()
        kills += 1
    feeder.join()
    return kills
