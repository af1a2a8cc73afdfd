"""Contender processes: which interpreter runs which script, and what each run cost.

Every contender is a child process of the harness, so ``os.wait4`` gives its own peak RSS and
CPU seconds (user + system, librdkafka's threads included) without sampling.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
QUIX_VERSION = "3.28.1"
QUIX_VENV = BENCH / ".venv-quix"
CONTENDERS = ("streamproc", "quix", "ceiling")


def quix_python() -> Path:
    """The pinned Quix Streams in its own virtualenv (its confluent-kafka pin differs from
    ours), created on first use."""
    py = QUIX_VENV / "bin" / "python"
    marker = QUIX_VENV / f".quixstreams-{QUIX_VERSION}"
    if marker.exists():
        return py
    # Several harnesses may start at once (the test suite runs one per workload, in parallel):
    # one creates the virtualenv, the others wait for it instead of clearing it under it.
    with (BENCH / ".venv-quix.lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if not marker.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(QUIX_VENV)],
                           check=True)
            subprocess.run([str(py), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", f"quixstreams=={QUIX_VERSION}"],
                           check=True)
            marker.touch()
    return py


def quix_versions() -> dict[str, str]:
    out = subprocess.run(
        [str(quix_python()), "-c",
         "import json, quixstreams, confluent_kafka; print(json.dumps({'quixstreams': "
         "quixstreams.__version__, 'quix_confluent_kafka': confluent_kafka.__version__}))"],
        check=True, capture_output=True, text=True)
    result: dict[str, str] = json.loads(out.stdout)
    return result


def command(contender: str) -> list[str]:
    script = BENCH / "contenders" / f"{contender}_app.py"
    python = quix_python() if contender == "quix" else Path(sys.executable)
    return [str(python), str(script)]


@dataclass
class Usage:
    exit_code: int
    peak_rss_mb: float
    cpu_s: float


class Contender:
    """One run of one contender: start, wait for its first record, stop, account."""

    def __init__(self, contender: str, args: dict[str, str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.stats = Path(args["stats"])
        self.stats.unlink(missing_ok=True)
        argv = command(contender)
        for k, v in args.items():
            argv += [f"--{k.replace('_', '-')}", v]
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        env.pop("PYTHONPATH", None)
        with log.open("w") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env,
                                         cwd=str(ROOT))
        self.started = time.time()
        self.usage: Usage | None = None

    def first_consumed(self, timeout_s: float = 120.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stats.exists():
                value: float = json.loads(self.stats.read_text())["first_consumed"]
                return value
            if not self.alive():
                raise RuntimeError(f"contender exited: {self.tail()}")
            time.sleep(0.01)
        raise TimeoutError(f"no record consumed within {timeout_s}s: {self.tail()}")

    def alive(self) -> bool:
        """Without reaping it (WNOWAIT): ``stop`` reaps with wait4 to get the rusage."""
        if self.usage is not None:
            return False
        return os.waitid(os.P_PID, self.proc.pid,
                         os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> Usage:
        """Signal and reap the process; SIGKILL if it does not exit in time."""
        if self.usage is not None:
            return self.usage
        hwm = self.peak_rss_mb()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(self.proc.pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.02)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.usage = Usage(self.proc.returncode, hwm if hwm is not None else ru.ru_maxrss / 1024,
                           ru.ru_utime + ru.ru_stime)
        return self.usage

    def peak_rss_mb(self) -> float | None:
        """The process's own high-water mark (VmHWM). Not rusage's ru_maxrss: that one also
        counts the harness's pages the child had between fork and exec."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
