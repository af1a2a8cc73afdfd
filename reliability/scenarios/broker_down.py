"""Scenario 7, broker down at start: every broker of the cluster stopped, an instance
started: it must wait and retry with a clear log line (no crash, no crash loop) and run once
the cluster is back, with exact results. Last in the suite: it stops the whole cluster."""

from __future__ import annotations

import time
from typing import Any

from reliability.harness import Feeder, RecoveryClock, input_spec, wait_for
from reliability.scenario import Context, Supervisor, drain, finish
from reliability.verify import Outputs

NAME = "broker_down"
TITLE = "Broker down at start: instances started before the cluster"


def run(ctx: Context) -> dict[str, Any]:
    if ctx.cluster_dir is None:
        raise RuntimeError("needs the suite's own cluster (it stops it): drop --brokers")
    from streamproc.kafka import cluster

    records, rate = (10_000, 1_000) if ctx.smoke else (200_000, 2_000)
    app = ctx.app(NAME)  # its topics exist before the cluster goes down
    instances = [app.instance(n) for n in range(2)]
    cluster.stop(ctx.cluster_dir)
    for inst in instances:
        inst.start()
    sup = Supervisor(instances, ctx.rng, restart=False)
    # A few retries: they back off 0.5, 1, 2, 4 s ...
    wait_for("instances retrying", lambda: (sup.tick(), all(
        len(i.events("kafka.unreachable")) >= 3 for i in instances))[1], 60,
        diagnose=lambda: " | ".join(i.tail(3) for i in instances))
    down_s = 5.0 if ctx.smoke else 60.0
    time.sleep(down_s)
    sup.tick()
    alive_while_down = all(i.alive for i in instances)
    t0 = time.monotonic()
    cluster.start(ctx.cluster_dir, brokers=3)
    cluster_s = time.monotonic() - t0
    wait_for("instances running", lambda: (sup.tick(), all(
        i.events("task.running") for i in instances))[1], 180,
        diagnose=lambda: " | ".join(i.tail(3) for i in instances))
    running_s = time.monotonic() - t0
    out, clock = Outputs(app), RecoveryClock(app)
    started = time.monotonic()
    feeder = Feeder(app, input_spec(records), rate).start()
    truth = drain(out, app, feeder, sup.tick, timeout_s=600 if ctx.smoke else 3600)
    retries = [len(i.events("kafka.unreachable")) for i in instances]
    errors = sum(1 for i in instances for e in i.events() if e.get("level") == "error"
                 and e.get("event") != "kafka.client_log")
    res = finish(app, out, truth, clock, started, instances=2,
                 unreachable_lines=retries, alive_while_down=alive_while_down,
                 cluster_restart_s=round(cluster_s, 1),
                 cluster_up_to_running_s=round(running_s, 1), error_lines=errors,
                 instance_exits=len(sup.unexpected_exits))
    res["exact"] = (res["exact"] and alive_while_down and not sup.unexpected_exits
                    and all(n >= 3 for n in retries))
    return res
