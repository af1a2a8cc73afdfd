"""Scenario 1, instance rotation: three instances, kill -9 at random moments, each restarted
after a random delay.

Two kinds of kill, mixed at random:

- from outside: SIGKILL of a random live instance at a random moment;
- from inside, at a chosen point of the checkpoint: the instance is restarted with a crash
  point (``STREAMPROC_TEST_CRASH_AT``) and SIGKILLs itself the Nth time it gets there:
  ``before_commit`` (the transaction is open: outputs, changelog and offsets sent, not
  committed), ``after_commit`` (committed, RocksDB not yet written) or ``mid_restore``.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from reliability.harness import Feeder, RecoveryClock, input_spec, wait_for
from reliability.scenario import Context, Supervisor, drain, finish
from reliability.verify import Outputs

NAME = "rotation"
TITLE = "Instance rotation: kill -9 at random moments"
POINTS = ("before_commit", "after_commit", "mid_restore")


def run(ctx: Context) -> dict[str, Any]:
    records, rate, kills_wanted = (20_000, 1_000, 5) if ctx.smoke else (1_000_000, 5_000, 24)
    rng = ctx.rng
    app = ctx.app(NAME)
    instances = [app.instance(n) for n in range(3)]
    for inst in instances:
        inst.start()
    sup = Supervisor(instances, rng, delay_s=(0.0, 4.0))
    out, clock = Outputs(app), RecoveryClock(app)
    started = time.monotonic()
    feeder = Feeder(app, input_spec(records), rate).start()
    # The first kill once the application runs: a kill before that only delays the start.
    wait_for("first outputs", lambda: out.poll(0.5) > 0 or out.count_records > 0, 120)
    # Kills spread over the feed: its length over the kills wanted, at random within that.
    gap = records / rate / (kills_wanted + 1)
    kinds: Counter[str] = Counter()
    # instance -> (the crash point its next run carries, the start count of that run)
    armed: dict[int, tuple[str, int]] = {}
    next_kill = time.monotonic() + rng.uniform(0.5, 1.5) * gap

    def tick() -> None:
        nonlocal next_kill
        for inst in instances:  # a crash point fired: the process killed itself
            if inst.n in armed and inst.starts >= armed[inst.n][1] and not inst.alive:
                kinds[f"self:{armed.pop(inst.n)[0]}"] += 1
                clock.fault()
                sup.down(inst)
        sup.tick()
        if sum(kinds.values()) >= kills_wanted or time.monotonic() < next_kill:
            return
        alive = [i for i in instances if i.alive]
        if not alive:
            return
        victim = rng.choice(alive)
        victim.kill9()
        kinds["sigkill"] += 1
        armed.pop(victim.n, None)  # killed before its crash point fired: disarmed
        clock.fault()
        if rng.random() < 0.4:  # its next run dies by itself, at a point of a checkpoint
            point = rng.choice(POINTS)
            armed[victim.n] = (point, victim.starts + 1)
            # mid_restore: the Nth restore batch (few per start); commit points: the Nth
            # checkpoint (two a second)
            nth = 1 if point == "mid_restore" else rng.randint(1, 6)
            sup.env_next[victim.n] = {"STREAMPROC_TEST_CRASH_AT": point,
                                      "STREAMPROC_TEST_CRASH_AFTER": str(nth)}
        sup.down(victim)
        next_kill = time.monotonic() + rng.uniform(0.5, 1.5) * gap

    # Keep killing until the kills wanted are done, even if the feed has ended.
    deadline = time.monotonic() + (600 if ctx.smoke else 3600)
    while sum(kinds.values()) < kills_wanted and time.monotonic() < deadline:
        out.poll(0.5)
        tick()
    truth = drain(out, app, feeder, tick, timeout_s=600 if ctx.smoke else 3600)
    return finish(app, out, truth, clock, started, instances=3,
                  kills=sum(kinds.values()), kills_by_kind=dict(kinds),
                  restarts=sup.restarts, unexpected_exits=len(sup.unexpected_exits))
