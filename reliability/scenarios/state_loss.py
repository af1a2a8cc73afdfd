"""Scenario 6, state loss: an instance killed, its whole state dir deleted while it is down,
and restarted: every store it owned is rebuilt from its changelog before it processes, and
the results stay exact."""

from __future__ import annotations

import shutil
import time
from typing import Any

from reliability.harness import Feeder, RecoveryClock, input_spec, wait_for
from reliability.scenario import Context, Supervisor, drain, finish
from reliability.verify import Outputs

NAME = "state_loss"
TITLE = "State loss: a state dir deleted while its instance is down"


def _rebuilt(events: list[dict[str, Any]]) -> bool:
    """A task runs and every restore this run started has completed."""
    kinds = [e.get("event") for e in events]
    return ("task.running" in kinds
            and kinds.count("restore.completed") >= kinds.count("restore.started") > 0)


def run(ctx: Context) -> dict[str, Any]:
    records, rate, losses = (20_000, 1_000, 1) if ctx.smoke else (300_000, 2_000, 4)
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
    rebuilt_records = 0
    for k in range(losses):
        # Let state build up first, so the rebuild has something to restore.
        for _ in range(int(ctx.rng.uniform(3, 8) / 0.3)):
            tick()
        victim = ctx.rng.choice(instances)
        sup.held.add(victim.n)
        victim.kill9()
        clock.fault()
        shutil.rmtree(victim.state_dir)
        before = len(victim.events())
        time.sleep(ctx.rng.uniform(0.5, 3.0))
        victim.start()
        sup.held.discard(victim.n)
        wait_for(f"i{victim.n} to rebuild its stores and run", lambda v=victim, b=before: (
            tick(), _rebuilt(v.events()[b:]))[1], 120)
        rebuilt_records += sum(int(e.get("records", 0)) for e in victim.events()[before:]
                               if e.get("event") == "restore.completed")
        _ = k
    truth = drain(out, app, feeder, sup.tick, timeout_s=600 if ctx.smoke else 3600)
    res = finish(app, out, truth, clock, started, instances=3, state_dirs_deleted=losses,
                 rebuilt_records=rebuilt_records, instance_exits=len(sup.unexpected_exits))
    res["exact"] = res["exact"] and not sup.unexpected_exits and rebuilt_records > 0
    return res
