"""Scenario 4, zombie: an instance SIGSTOPped while it processes (a transaction open, records
sent), for longer than the session timeout, so the group gives its partitions to the others;
then SIGCONT. It wakes up believing it still owns them: its commit must be fenced (KIP-447:
the group generation moved on; its transaction timed out on the broker), its uncommitted work
dropped, and it must rejoin without a restart."""

from __future__ import annotations

import signal
from typing import Any

from reliability.scenario import Context, events_count, holds_tasks, steady

NAME = "zombie"
TITLE = "Zombie: SIGSTOP past the session timeout, then SIGCONT"
TOLD = ("rebalance.lost", "rebalance.revoked", "checkpoint.failed", "instance.recovering")
SESSION_S = 6.0  # reliability.harness.INSTANCE_SETTINGS session_timeout_ms


def run(ctx: Context) -> dict[str, Any]:
    records, rate, pauses = (20_000, 1_000, 1) if ctx.smoke else (300_000, 2_000, 6)
    s = steady(ctx, NAME, records, rate)
    paused_s, told = [], 0
    for k in range(pauses):
        zombie = ctx.rng.choice(s.instances)
        # Only an instance that holds running tasks can be a zombie (CI: under the eager range
        # assignor one was paused before its first assignment, and had nothing to be told).
        s.wait(f"i{zombie.n} to hold running tasks", lambda z=zombie: holds_tasks(z.events()))
        before = len(zombie.events())
        # Past the session timeout and the transaction timeout (10 s): both the group and
        # the transaction coordinator give up on it.
        pause = ctx.rng.uniform(SESSION_S + 5, SESSION_S + 14)
        zombie.signal(signal.SIGSTOP)
        s.clock.fault()
        s.idle(pause)
        zombie.signal(signal.SIGCONT)
        paused_s.append(round(pause, 1))
        # It must notice (fenced or lost) and come back with tasks of its own.
        s.wait(f"the zombie i{zombie.n} to rejoin", lambda z=zombie, b=before: any(
            e.get("event") == "task.running" for e in z.events()[b:]))
        # Told it was gone: its partitions lost or revoked, or its transaction failed (CI:
        # under load a revocation, not a loss, was all the zombie saw; exact all the same).
        told += any(e.get("event") in TOLD for e in zombie.events()[before:])
        if k + 1 < pauses:
            s.idle(ctx.rng.uniform(5, 15))
    res = s.finish(pauses=len(paused_s), paused_s=paused_s, zombies_told=told,
                   lost_assignments=events_count(s.app, "rebalance.lost"),
                   checkpoint_failures=events_count(s.app, "checkpoint.failed"),
                   producer_recreated=events_count(s.app, "instance.recovering"))
    # A zombie that was never told would have committed: the proof is it was fenced.
    res["exact"] = res["exact"] and told == len(paused_s)
    return res
