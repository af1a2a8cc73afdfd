"""Scenario 3, network faults: each instance in a network namespace of its own, reaching the
brokers only through a fault proxy (reliability/proxy.py), so one instance's network can fail
while the others' does not. Under a steady feed, faults of four kinds hit random instances:

- ``delay``: every byte held 8-14 s for a while: round trips outlast the session timeout
  (6 s) and a transaction outlasts transaction.timeout.ms (10 s), so the broker aborts it and
  the commit's outcome is unknown to the instance, which must recreate its producer;
- ``drop``: every connection of the instance reset at a random moment;
- ``drop_at_commit``: the response to the instance's next EndTxn swallowed and every
  connection reset: the commit happened, the instance cannot know it;
- ``partition``: a blackhole for longer than the session timeout, then healed.

The instances must ride every fault out without exiting, and the outputs stay exact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reliability.harness import App, Instance, RecoveryClock, wait_for
from reliability.netns import Netns, NetnsUnavailable, broker_ports
from reliability.proxy import FaultProxy
from reliability.scenario import Context, Steady, events_count, steady

NAME = "network"
TITLE = "Network faults: delay, connection drops, drop at commit, partition (per instance)"
KINDS = ("delay", "drop", "drop_at_commit", "partition")
SESSION_S = 6.0  # reliability.harness.INSTANCE_SETTINGS session_timeout_ms


class Network:
    """A namespace and a fault proxy per instance; :meth:`close` removes them all."""

    def __init__(self, app: App, count: int) -> None:
        self.namespaces: list[Netns] = []
        self.proxies: list[FaultProxy] = []
        ports = broker_ports(app.bootstrap)
        try:
            for n in range(count):
                ns = Netns(f"sprel{os.getpid()}i{n}")
                self.namespaces.append(ns)
                self.proxies.append(FaultProxy(ns, ports))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for p in self.proxies:
            p.close()
        for ns in self.namespaces:
            ns.delete()

    def figures(self) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for p in self.proxies:
            for k, v in p.figures().items():
                total[k] += v
        return dict(total)


def run(ctx: Context) -> dict[str, Any]:
    records, rate, per_kind = (24_000, 200, 1) if ctx.smoke else (300_000, 400, 5)
    made: list[tuple[App, Network]] = []

    def isolate(instances: list[Instance]) -> None:
        app = instances[0].app
        try:
            net = Network(app, len(instances))
        except NetnsUnavailable as exc:
            raise RuntimeError(f"cannot run the network scenario: {exc}") from None
        made.append((app, net))
        for inst, ns in zip(instances, net.namespaces, strict=True):
            inst.prefix = ns.prefix

    try:
        s = steady(ctx, NAME, records, rate, before_start=isolate)
        return _run(ctx, s, made[0][1], per_kind)
    finally:
        for app, net in made:
            app.stop_all(30)  # a failure midway: no instance may outlive its namespace's proxy
            net.close()


def _run(ctx: Context, s: Steady, net: Network, per_kind: int) -> dict[str, Any]:
    rng, instances, clock = ctx.rng, s.instances, s.clock
    plan = [k for k in KINDS for _ in range(per_kind)]
    rng.shuffle(plan)
    faults: list[dict[str, Any]] = []
    for kind in plan:
        victim = rng.choice([i for i in instances if i.alive] or instances)
        proxy = net.proxies[victim.n]
        before = len(victim.events())
        t0 = time.monotonic()
        clock.fault()
        fault: dict[str, Any] = {"kind": kind, "instance": victim.n}
        if kind == "delay":
            fault["latency_s"] = round(latency := rng.uniform(8, 14), 1)
            proxy.delay(latency)
            s.idle(latency + rng.uniform(4, 10))
        elif kind == "partition":
            proxy.partition()
            s.idle(rng.uniform(SESSION_S + 1, SESSION_S + 6))
        elif kind == "drop":
            proxy.drop()
        else:
            fired = proxy.drop_at_commit()
            until = time.monotonic() + 30  # two commits a second under a steady feed
            while not fired.is_set() and time.monotonic() < until:
                s.tick()
            fault["fired"] = fired.is_set()
        proxy.heal()
        fault["seconds"] = round(time.monotonic() - t0, 1)
        # The group processes again (every partition with records waiting moves on), and
        # the victim has a task running again, before the next fault.
        _await_recovery(ctx, clock, len(faults) + 1, victim, before, s.tick, fault, instances)
        faults.append(fault)
        s.idle(rng.uniform(2, 6))
    res = s.finish(faults=_by_kind(faults), fault_log=faults, proxies=net.figures(),
                   exit_codes=[code for _, code in s.sup.unexpected_exits],
                   crashes=events_count(s.app, "instance.crashed"),
                   lost_assignments=events_count(s.app, "rebalance.lost"),
                   checkpoint_failures=events_count(s.app, "checkpoint.failed"),
                   producer_recreated=events_count(s.app, "instance.recovering"))
    # Exactly-once results, no instance exited (Steady.finish), and the unknown-outcome path
    # was exercised (a new producer after a failed commit), which is what the faults are for.
    res["exact"] = (res["exact"] and res["producer_recreated"] > 0
                    and all(f.get("fired", True) for f in faults))
    return res


def _await_recovery(ctx: Context, clock: RecoveryClock, n: int, victim: Instance, before: int,
                    tick: Callable[[], None], fault: dict[str, Any],
                    instances: list[Instance]) -> None:
    t0 = time.monotonic()
    try:
        wait_for("the group to process again", lambda: (
            tick(), len(clock.durations) >= n)[1], 180, step_s=0)
        fault["recover_s"] = round(clock.durations[n - 1], 1) if len(clock.durations) >= n else None
    except TimeoutError as exc:
        ctx.log(f"   {exc}")
        fault["recover_s"] = None
        fault["stacks"] = _dump_stacks(instances, n)
    if fault["kind"] in ("delay", "partition"):
        # Past the session timeout the victim's partitions went to the others: it must
        # rejoin and take some back (not a condition of exactness, a figure).
        try:
            wait_for(f"i{victim.n} to rejoin", lambda: (tick(), any(
                e.get("event") == "task.running" for e in victim.events()[before:]))[1],
                max(10.0, 120 - (time.monotonic() - t0)), step_s=0)
            fault["rejoined"] = True
        except TimeoutError:
            fault["rejoined"] = False
    ctx.log(f"   {fault}")


def _dump_stacks(instances: list[Instance], n: int) -> dict[str, str]:
    """Where every live instance is, when the group did not process again: the threads of
    each (py-spy, with the native frames of librdkafka's calls), written beside its log and
    kept in the results (the run's work dir is removed after it)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(spy, os.X_OK):
        return {}
    dumps = {}
    for inst in instances:
        if not inst.alive:
            continue
        run = subprocess.run([spy, "dump", "--native", "--pid", str(inst.proc.pid)],
                             capture_output=True, text=True, timeout=60, check=False)
        text = run.stdout + run.stderr
        inst.log_path.with_suffix(f".stall{n}.txt").write_text(text)
        # The interesting frames are the blocked ones: librdkafka calls and waits.
        dumps[f"i{inst.n}"] = "\n".join(
            line for line in text.splitlines()
            if "streamproc" in line or "rd_kafka" in line or "Thread" in line)[:6000]
    return dumps


def _by_kind(faults: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        fs = [f for f in faults if f["kind"] == kind]
        rec = [f["recover_s"] for f in fs if f.get("recover_s") is not None]
        out[kind] = {"count": len(fs), "seconds": round(sum(f["seconds"] for f in fs), 1),
                     "recover_max_s": max(rec) if rec else None}
    return out
