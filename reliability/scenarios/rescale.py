"""Scenario 8, rescale: the application goes from one instance to three and back to one
while the input flows (issue #19, part 4). Scaling out, the new instances join the group and
take their share of the tasks, restoring the stores they get from the changelogs; scaling in,
two instances stop cleanly (SIGTERM: a final checkpoint, then they leave the group) and the
one left takes every task back. Every step must stay exact; the figures say how long each
step took until every instance of the new set held running tasks."""

from __future__ import annotations

import time
from typing import Any

from reliability.harness import Feeder, RecoveryClock, input_spec
from reliability.scenario import (
    Context,
    Steady,
    Supervisor,
    events_count,
    held_partitions,
    holds_tasks,
)
from reliability.verify import Outputs

NAME = "rescale"
TITLE = "Rescale: 1 -> 3 -> 1 instances while the input flows"


def run(ctx: Context) -> dict[str, Any]:
    records, rate, rounds = (20_000, 500, 1) if ctx.smoke else (300_000, 2_000, 3)
    app = ctx.app(NAME)
    # The two added ones leave the group when they stop (a scale in): without it the group
    # would keep their tasks for the session timeout.
    insts = [app.instance(0)] + [app.instance(n, leave_group_on_shutdown="true") for n in (1, 2)]
    first, added = insts[0], insts[1:]
    sup = Supervisor(insts, ctx.rng, restart=False)
    sup.held |= {i.n for i in added}  # down on purpose until the scale-out
    first.start()
    s = Steady(ctx, app, insts, sup, Outputs(app), RecoveryClock(app),
               Feeder(app, input_spec(records), rate), time.monotonic())
    s.feeder.start()
    s.wait("first outputs", lambda: s.out.count_records > 0)
    s.wait("i0 to hold running tasks", lambda: holds_tasks(first.events()))
    everything = held_partitions(first.events())
    out_s, in_s, balanced = [], [], []
    for _ in range(rounds):
        s.idle(ctx.rng.uniform(3, 6))
        marks = {i.n: len(i.events()) for i in added}
        started = time.monotonic()
        for inst in added:
            inst.start()
            sup.held.discard(inst.n)
        s.wait("all three to hold running tasks", lambda m=marks: all(
            holds_tasks(i.events()[m[i.n]:]) for i in added) and holds_tasks(first.events()),
            timeout_s=180)
        out_s.append(round(time.monotonic() - started, 1))
        # The stateful tasks spread over the three (the range assignor: 2 of 6 each).
        shares = [len({p for p in held_partitions(i.events()[marks.get(i.n, 0):])
                       if "-repartition[" in p}) for i in insts]
        balanced.append(shares)
        s.idle(ctx.rng.uniform(3, 6))
        started = time.monotonic()
        for inst in added:
            sup.held.add(inst.n)
            inst.stop()
        s.wait("i0 to hold every task again", lambda: held_partitions(first.events())
               == everything and holds_tasks(first.events()), timeout_s=180)
        in_s.append(round(time.monotonic() - started, 1))
    res = s.finish(rounds=rounds, scale_out_s=out_s, scale_in_s=in_s,
                   stateful_per_instance=balanced,
                   rebalances=events_count(app, "rebalance.assigned"))
    res["exact"] = res["exact"] and len(in_s) == rounds \
        and all(min(b) >= 1 for b in balanced)
    return res
