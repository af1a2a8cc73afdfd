"""Scenario 4, zombie: an instance SIGSTOPped while it processes (a transaction open, records
sent), for longer than the session timeout, so the group gives its partitions to the others;
then SIGCONT. It wakes up believing it still owns them: its commit must be fenced (KIP-447:
the group generation moved on; its transaction timed out on the broker), its uncommitted work
dropped, and it must rejoin without a restart."""

from __future__ import annotations

import signal
import time
from typing import Any

from reliability.harness import Feeder, RecoveryClock, input_spec, wait_for
from reliability.scenario import Context, Supervisor, drain, events_count, finish
from reliability.verify import Outputs

NAME = "zombie"
TITLE = "Zombie: SIGSTOP past the session timeout, then SIGCONT"
SESSION_S = 6.0  # reliability.harness.INSTANCE_SETTINGS session_timeout_ms


def run(ctx: Context) -> dict[str, Any]:
    records, rate, pauses = (20_000, 1_000, 1) if ctx.smoke else (300_000, 2_000, 6)
    app = ctx.app(NAME)
    instances = [app.instance(n) for n in range(3)]
    for inst in instances:
        inst.start()
    sup = Supervisor(instances, ctx.rng, restart=False)
    out, clock = Outputs(app), RecoveryClock(app)
    started = time.monotonic()
    feeder = Feeder(app, input_spec(records), rate).start()

    def tick() -> None:
        out.poll(0.3)
        sup.tick()

    wait_for("first outputs", lambda: (tick(), out.count_records > 0)[1], 120)
    paused_s = []
    for k in range(pauses):
        zombie = ctx.rng.choice(instances)
        before = len(zombie.events())
        # Past the session timeout and the transaction timeout (10 s): both the group and
        # the transaction coordinator give up on it.
        pause = ctx.rng.uniform(SESSION_S + 5, SESSION_S + 14)
        zombie.signal(signal.SIGSTOP)
        clock.fault()
        until = time.monotonic() + pause
        while time.monotonic() < until:
            tick()
        zombie.signal(signal.SIGCONT)
        paused_s.append(round(pause, 1))
        # It must notice (fenced or lost) and come back with tasks of its own.
        wait_for(f"the zombie i{zombie.n} to rejoin", lambda z=zombie, b=before: (
            tick(), any(e.get("event") == "task.running" for e in z.events()[b:]))[1], 120)
        if k + 1 < pauses:
            for _ in range(int(ctx.rng.uniform(5, 15) / 0.3)):
                tick()
    truth = drain(out, app, feeder, sup.tick, timeout_s=600 if ctx.smoke else 3600)
    res = finish(app, out, truth, clock, started, instances=3, pauses=len(paused_s),
                 paused_s=paused_s, instance_exits=len(sup.unexpected_exits),
                 lost_assignments=events_count(app, "rebalance.lost"),
                 checkpoint_failures=events_count(app, "checkpoint.failed"),
                 producer_recreated=events_count(app, "instance.recovering"))
    # A zombie that was never told would have committed: the proof is it was fenced.
    res["exact"] = (res["exact"] and not sup.unexpected_exits
                    and res["lost_assignments"] + res["checkpoint_failures"] >= len(paused_s))
    return res
