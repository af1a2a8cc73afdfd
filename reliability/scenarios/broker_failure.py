"""Scenario 2, broker failure: kill -9 of the broker that leads most of the application's
input partitions and of its instances' transaction-state partitions, while it processes; the
broker comes back 10-30 s later; then a rolling restart of all three brokers (each stopped
cleanly, restarted, caught up, the next). No instance may exit or be restarted: the
application rides it out on its own."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from reliability.harness import App, admin_for
from reliability.scenario import Context, events_count, steady

NAME = "broker_failure"
TITLE = "Broker failure: kill -9 of the busiest leader, then a rolling restart"


def java_hash(s: str) -> int:
    """Java's String.hashCode, which the broker uses to place a transactional.id."""
    units = s.encode("utf-16-be")  # Java hashes UTF-16 code units
    h = 0
    for i in range(0, len(units), 2):
        h = (31 * h + int.from_bytes(units[i:i + 2], "big")) & 0xFFFFFFFF
    return h


def coordinator_partition(transactional_id: str, partitions: int) -> int:
    """The __transaction_state partition of a transactional.id (Kafka's Utils.abs is
    ``n & 0x7fffffff``, not Math.abs)."""
    return (java_hash(transactional_id) & 0x7FFFFFFF) % partitions


def leaders(app: App, txids: list[str]) -> Counter[int]:
    """Node id -> how many of the input partitions and transaction-state partitions of
    ``txids`` it leads."""
    md = admin_for(app.bootstrap).list_topics(timeout=30)
    count: Counter[int] = Counter()
    for p in md.topics[app.source].partitions.values():
        count[p.leader] += 1
    txn = md.topics["__transaction_state"].partitions
    for t in txids:
        count[txn[coordinator_partition(t, len(txn))].leader] += 1
    return count


def run(ctx: Context) -> dict[str, Any]:
    if ctx.cluster_dir is None:
        raise RuntimeError("needs the suite's own cluster (it kills brokers): drop --brokers")
    from streamproc.kafka import cluster

    records, rate = (40_000, 1_000) if ctx.smoke else (400_000, 2_000)
    s = steady(ctx, NAME, records, rate)
    led = leaders(s.app, [f"{s.app.app_id}-i{i.n}" for i in s.instances])
    victim = led.most_common(1)[0][0]
    ctx.log(f"   killing node {victim}, leader of {led[victim]} of the input and "
            f"transaction-state partitions ({dict(led)})")
    cluster.kill(ctx.cluster_dir, victim)
    s.clock.fault()
    down_s = 10.0 if ctx.smoke else ctx.rng.uniform(10, 30)
    s.idle(down_s)
    t0 = time.monotonic()
    cluster.restart(ctx.cluster_dir, victim)
    back_s = time.monotonic() - t0
    rolled = []
    for node in [n.id for n in cluster.status(ctx.cluster_dir).nodes]:  # type: ignore[union-attr]
        s.tick()
        cluster.stop_node(ctx.cluster_dir, node)
        s.clock.fault()
        cluster.restart(ctx.cluster_dir, node)
        rolled.append(node)
    return s.finish(killed_node=victim, killed_node_led=led[victim],
                    node_down_s=round(down_s, 1), node_restart_s=round(back_s, 1),
                    rolling_restart=rolled,
                    producer_recreated=events_count(s.app, "instance.recovering"),
                    in_place_restarts=events_count(s.app, "instance.restarting"),
                    checkpoint_failures=events_count(s.app, "checkpoint.failed"))
