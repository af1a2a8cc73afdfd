"""Scenario 6, state loss: an instance killed, its whole state dir deleted while it is down,
and restarted: every store it owned is rebuilt from its changelog before it processes, and
the results stay exact."""

from __future__ import annotations

import shutil
import time
from typing import Any

from reliability.scenario import Context, steady

NAME = "state_loss"
TITLE = "State loss: a state dir deleted while its instance is down"


def _rebuilt(events: list[dict[str, Any]]) -> bool:
    """A task runs and every restore this run started has completed."""
    kinds = [e.get("event") for e in events]
    return ("task.running" in kinds
            and kinds.count("restore.completed") >= kinds.count("restore.started") > 0)


def run(ctx: Context) -> dict[str, Any]:
    records, rate, losses = (20_000, 1_000, 1) if ctx.smoke else (300_000, 2_000, 4)
    s = steady(ctx, NAME, records, rate)
    rebuilt_records = 0
    for _ in range(losses):
        s.idle(ctx.rng.uniform(3, 8))  # state builds up first: the rebuild has work to do
        victim = ctx.rng.choice(s.instances)
        s.sup.held.add(victim.n)
        victim.kill9()
        s.clock.fault()
        shutil.rmtree(victim.state_dir)
        before = len(victim.events())
        time.sleep(ctx.rng.uniform(0.5, 3.0))
        victim.start()
        s.sup.held.discard(victim.n)
        s.wait(f"i{victim.n} to rebuild its stores and run",
               lambda v=victim, b=before: _rebuilt(v.events()[b:]))
        rebuilt_records += sum(int(e.get("records", 0)) for e in victim.events()[before:]
                               if e.get("event") == "restore.completed")
    res = s.finish(state_dirs_deleted=losses, rebuilt_records=rebuilt_records)
    res["exact"] = res["exact"] and rebuilt_records > 0
    return res
