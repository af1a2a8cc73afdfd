"""Scenario 5, disk full: one instance's state dir is a small tmpfs that fills up while it
processes. It must stop cleanly with one clear error naming the path (no crash loop, no
traceback spam), commit nothing past its last good checkpoint, and once space is freed and
it is restarted, the results are exact."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from reliability.harness import Instance
from reliability.scenario import Context, Steady, steady

NAME = "disk_full"
TITLE = "Disk full: the state dir on a tmpfs that fills up"
TMPFS_MB = 24


def _mount(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs",
                           str(path)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"disk_full needs to mount a tmpfs (root or CAP_SYS_ADMIN): "
                           f"mount said {done.stderr.strip()!r}")


def _fill(path: Path) -> int:
    """Write a filler file until the filesystem is full; its size in bytes."""
    filler = path / "filler"
    written = 0
    block = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(block)
            except OSError:
                break
    # The last partial block too: nothing left for RocksDB's next write.
    with contextlib.suppress(OSError), filler.open("ab", buffering=0) as f:
        while f.write(b"\0" * 4096):
            written += 4096
    return written


def run(ctx: Context) -> dict[str, Any]:
    records, rate = (20_000, 1_000) if ctx.smoke else (300_000, 2_000)
    mounted: list[Path] = []

    def mount_first(instances: list[Instance]) -> None:
        _mount(instances[0].state_dir)
        mounted.append(instances[0].state_dir)

    try:
        s = steady(ctx, NAME, records, rate, before_start=mount_first)
        try:
            return _run(s)
        finally:
            for inst in s.instances:
                inst.stop()
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def _run(s: Steady) -> dict[str, Any]:
    victim = s.instances[0]
    state_mount = victim.state_dir
    s.sup.held.add(victim.n)  # its exit is the expected outcome: the scenario restarts it
    s.wait("the victim to run tasks", lambda: bool(victim.events("task.running")))
    seen = len(victim.events())
    filled = _fill(state_mount)
    t_fill = time.monotonic()
    s.clock.fault()
    s.wait("the instance on the full disk to stop", lambda: not victim.alive,
           diagnose=lambda: victim.tail(5))
    stop_s = time.monotonic() - t_fill
    code = victim.returncode
    # The engine's own error lines since the disk filled (librdkafka's are kafka.client_log)
    errors = [e for e in victim.events()[seen:] if e.get("level") in ("error", "critical")
              and e.get("event") != "kafka.client_log"]
    named = [e for e in errors if e.get("event") == "state.disk_full"
             and str(e.get("path", "")).startswith(str(state_mount))]
    tracebacks = victim.log_path.read_text(errors="replace").count("Traceback")
    # Space freed; restarted as an operator (or a restart policy) would.
    os.unlink(state_mount / "filler")
    victim.start()
    s.sup.held.discard(victim.n)
    res = s.finish(filler_bytes=filled, fill_to_stop_s=round(stop_s, 1), exit_code=code,
                   error_lines=len(errors), disk_full_lines=len(named),
                   error_path=named[0]["path"] if named else None, tracebacks=tracebacks)
    res["exact"] = (res["exact"] and code == 1 and len(errors) == 1 and len(named) == 1
                    and tracebacks == 0)
    return res
