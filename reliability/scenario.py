"""The frame of a scenario: the cluster it runs on, a supervisor that restarts dead instances
the way a container runtime would, and the common ending (drain, stop, verify, figures).

A scenario module has ``NAME``, ``TITLE`` and ``run(ctx: Context) -> dict``; the dict holds its
figures and ``exact`` (:func:`finish` fills both).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reliability.harness import App, Feeder, Instance, RecoveryClock, input_spec, wait_for
from reliability.verify import Outputs, read_input, stores_match_changelog, verdict


@dataclass
class Context:
    bootstrap: str
    cluster_dir: Path | None  # None: an external cluster (no node faults possible)
    work: Path
    smoke: bool
    seed: int
    log: Callable[[str], None]
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def app(self, name: str, **kw: Any) -> App:
        app = App(self.bootstrap, self.work / name, name, **kw)
        app.create_topics()
        return app


class Supervisor:
    """Restarts an instance that died (exit of its own: a crash point, a fatal error) after a
    delay, like a restart policy; counts what it did. Scenarios that must show an instance
    *never* dies check :attr:`unexpected_exits` instead of letting it restart them."""

    def __init__(self, instances: list[Instance], rng: random.Random,
                 delay_s: tuple[float, float] = (0.0, 3.0), restart: bool = True) -> None:
        self.instances, self.rng, self.delay_s, self.restart = instances, rng, delay_s, restart
        self.held: set[int] = set()  # instances a scenario keeps down on purpose
        self.due: dict[int, float] = {}
        self.restarts = 0
        self.unexpected_exits: list[tuple[int, int | None]] = []
        self.env_next: dict[int, dict[str, str]] = {}  # extra env of an instance's next start

    def down(self, inst: Instance, delay_s: float | None = None) -> None:
        """``inst`` was stopped on purpose: start it again after ``delay_s`` (random if None)."""
        lo, hi = self.delay_s
        self.due[inst.n] = time.monotonic() + (self.rng.uniform(lo, hi) if delay_s is None
                                               else delay_s)

    def tick(self) -> None:
        now = time.monotonic()
        for inst in self.instances:
            if inst.alive or inst.n in self.held:
                continue
            if inst.n not in self.due:  # it exited on its own
                self.unexpected_exits.append((inst.n, inst.returncode))
                if not self.restart:
                    self.held.add(inst.n)
                    continue
                self.down(inst)
            if now >= self.due[inst.n]:
                del self.due[inst.n]
                inst.start(**self.env_next.pop(inst.n, {}))
                self.restarts += 1


def drain(out: Outputs, app: App, feeder: Feeder, tick: Callable[[], None],
          timeout_s: float) -> Any:
    """Wait for the feeder, then until the outputs account for the whole input (polling the
    outputs and ``tick``-ing the scenario meanwhile). The input's truth."""
    deadline = time.monotonic() + timeout_s
    while not feeder.done.is_set():
        out.poll(0.5)
        tick()
        if time.monotonic() > deadline:
            break
    feeder.wait(max(1.0, deadline - time.monotonic()))
    truth = read_input(app)

    def complete() -> bool:
        out.poll(1.0)
        tick()
        return out.complete(truth)

    def where() -> str:
        behind = sum(1 for k, n in truth.per_key.items() if out.last.get(k, 0) < n)
        open_w = sum(1 for w, n in truth.per_window.items()
                     if out.windows.get(w, 0) + out.late[w] < n)
        return (f"{behind} keys and {open_w} windows incomplete; instances alive: "
                f"{[i.n for i in app.instances if i.alive]}; last log lines of each: "
                + " | ".join(f"i{i.n}: {i.tail(3)}" for i in app.instances))

    wait_for("every output committed", complete, max(30.0, deadline - time.monotonic()),
             step_s=0, diagnose=where)
    out.poll(2.0)  # anything after completion (a duplicate) must be seen too
    return truth


def finish(app: App, out: Outputs, truth: Any, clock: RecoveryClock | None,
           started: float, **figures: Any) -> dict[str, Any]:
    """Stop every instance cleanly, check the stores against the changelogs, gather figures."""
    codes = app.stop_all()
    if clock is not None:
        clock.close()
    out.close()
    result = {**verdict(truth, out), **figures}
    result["clean_exit_codes"] = codes
    result.update(stores_match_changelog(app, [i.state_dir for i in app.instances]))
    if clock is not None:
        result.update(clock.figures())
    result["seconds"] = round(time.monotonic() - started, 1)
    result["exact"] = (result["exact"] and result["stores_mismatched"] == 0
                       and result["stores_checked"] > 0)
    return result


def restarts_seen(instances: list[Instance]) -> int:
    return sum(max(0, i.starts - 1) for i in instances)


def events_count(app: App, event: str) -> int:
    """How many times ``event`` was logged by the app's instances, over all their runs."""
    return sum(len(i.events(event)) for i in app.instances)


@dataclass
class Steady:
    """A scenario's application under a steady feed: what most scenarios start from."""

    ctx: Context
    app: App
    instances: list[Instance]
    sup: Supervisor
    out: Outputs
    clock: RecoveryClock
    feeder: Feeder
    started: float

    def tick(self) -> None:
        """Read outputs for a moment and let the supervisor look: the scenario's heartbeat."""
        self.out.poll(0.3)
        self.sup.tick()

    def idle(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.tick()

    def wait(self, what: str, cond: Callable[[], bool], timeout_s: float = 120,
             diagnose: Callable[[], str] = lambda: "") -> float:
        return wait_for(what, lambda: (self.tick(), cond())[1], timeout_s, step_s=0,
                        diagnose=diagnose)

    def finish(self, **figures: Any) -> dict[str, Any]:
        """Drain, stop, verify; ``exact`` also requires that no instance exited on its own."""
        truth = drain(self.out, self.app, self.feeder, self.sup.tick,
                      timeout_s=600 if self.ctx.smoke else 3600)
        res = finish(self.app, self.out, truth, self.clock, self.started,
                     instances=len(self.instances),
                     instance_exits=len(self.sup.unexpected_exits), **figures)
        res["exact"] = res["exact"] and not self.sup.unexpected_exits
        return res


def steady(ctx: Context, name: str, records: int, rate: float, *, instances: int = 3,
           before_start: Callable[[list[Instance]], None] = lambda _: None) -> Steady:
    """``instances`` instances of a new application started, the feed running, and the first
    outputs committed. The supervisor restarts nobody: an exit of its own is a failure."""
    app = ctx.app(name)
    insts = [app.instance(n) for n in range(instances)]
    before_start(insts)
    for inst in insts:
        inst.start()
    s = Steady(ctx, app, insts, Supervisor(insts, ctx.rng, restart=False), Outputs(app),
               RecoveryClock(app), Feeder(app, input_spec(records), rate), time.monotonic())
    s.feeder.start()
    s.wait("first outputs", lambda: s.out.count_records > 0)
    return s


def held_partitions(events: list[dict[str, Any]]) -> set[str]:
    """What an instance holds now, from its rebalance events (eager or incremental)."""
    held: set[str] = set()
    for e in events:
        kind = e.get("event")
        if kind == "rebalance.assigned":
            held |= set(e.get("partitions") or ())
        elif kind in ("rebalance.revoked", "rebalance.lost"):
            held -= set(e.get("partitions") or ())
    return held


def holds_tasks(events: list[dict[str, Any]]) -> bool:
    """It holds partitions, and a task has run since it last got some."""
    last = max((i for i, e in enumerate(events) if e.get("event") == "rebalance.assigned"),
               default=None)
    return last is not None and bool(held_partitions(events)) \
        and any(e.get("event") == "task.running" for e in events[last:])
