"""The rules behind /healthz and /readyz, "recent" counts and producer statistics: pure logic
over snapshots, with an injected clock."""

from __future__ import annotations

from dataclasses import replace

from streamproc.ops.status import (
    PartitionStatus,
    ProducedCounts,
    Recent,
    RestoreStatus,
    Snapshot,
    StatusBoard,
    TaskStatus,
    lag,
    readiness,
    starting_snapshot,
    stuck_after_s,
    sum_by,
    total,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def running_snapshot(**changes: object) -> Snapshot:
    snap = Snapshot(
        app_id="wc", instance_id="i1", guarantee="exactly_once", state="running", joined=True,
        published_at_ms=2_000, started_at_ms=1_000,
        partitions=(PartitionStatus("in", 0, "0_0", "running", 5, 5, 5, 0),
                    PartitionStatus("in", 1, "0_1", "running", 3, 4, 9, 5)),
        tasks=(TaskStatus("0_0", 0, 0, "running", None, None, False),
               TaskStatus("0_1", 0, 1, "running", 1_500, 500, False)))
    return replace(snap, **changes)  # type: ignore[arg-type]


def test_healthz_turns_503_when_the_loop_stops_polling_for_longer_than_the_limit() -> None:
    clock = Clock()
    board = StatusBoard(running_snapshot(), stuck_after_s=60.0, clock=clock)
    board.beat(clock.now)
    clock.now += 60.0
    ok, body = board.health()
    assert ok is True
    assert body == {"state": "running", "last_poll_age_seconds": 60.0,
                    "stuck_after_seconds": 60.0}
    clock.now += 0.5
    ok, body = board.health()
    assert ok is False
    assert body["reason"] == "the loop has not polled Kafka for 60.5 s (limit 60 s)"
    board.beat(clock.now)  # the loop came back
    assert board.health() == (True, {"state": "running", "last_poll_age_seconds": 0.0,
                                     "stuck_after_seconds": 60.0})


def test_starting_counts_as_a_beat_and_a_failed_instance_is_unhealthy() -> None:
    clock = Clock()
    board = StatusBoard(starting_snapshot("wc", "exactly_once", 0), stuck_after_s=5.0,
                        clock=clock)
    clock.now += 4.0
    assert board.health()[0] is True
    clock.now += 2.0
    assert board.health()[0] is False
    board.beat(clock.now)
    board.publish(running_snapshot(state="failed", error="boom"))
    ok, body = board.health()
    assert ok is False
    assert body["reason"] == "the instance failed: boom"


def test_stuck_limit_is_never_below_three_poll_timeouts() -> None:
    assert stuck_after_s(poll_timeout_ms=100, configured_ms=60_000) == 60.0
    assert stuck_after_s(poll_timeout_ms=5_000, configured_ms=1_000) == 15.0


def test_ready_only_when_running_joined_and_nothing_restores() -> None:
    assert readiness(running_snapshot()) == (
        True, {"state": "running", "tasks": 2, "restoring": []})
    ok, body = readiness(starting_snapshot("wc", "exactly_once", 0))
    assert (ok, body["reason"]) == (False, "the instance is starting")
    ok, body = readiness(running_snapshot(joined=False))
    assert (ok, body["reason"]) == (False, "not yet a member of the consumer group")
    ok, body = readiness(running_snapshot(state="stopping"))
    assert (ok, body["reason"]) == (False, "the instance is stopping")

    restoring = running_snapshot(
        tasks=(TaskStatus("0_0", 0, 0, "running", None, None, False),
               TaskStatus("0_1", 0, 1, "restoring", None, None, False)),
        partitions=(PartitionStatus("in", 0, "0_0", "running", 5, 5, 5, 0),
                    PartitionStatus("in", 1, "0_1", "restoring", 3, 3, 9, 6)),
        restoring=(RestoreStatus("0_1", "counts", "wc-counts-changelog", 1, 10, 100, 90),))
    ok, body = readiness(restoring)
    assert ok is False
    assert body == {"state": "running", "tasks": 2, "restoring": ["0_1"],
                    "reason": "tasks are restoring", "partitions_waiting": ["in[1]"]}


def test_recent_counts_only_what_grew_inside_the_window() -> None:
    recent = Recent(window_s=300.0)
    assert recent.update(0.0, {"CodecError": 2.0}) == {}
    assert recent.update(100.0, {"CodecError": 5.0, "ValueError": 1.0}) == {
        "CodecError": 3.0, "ValueError": 1.0}
    assert recent.update(350.0, {"CodecError": 5.0, "ValueError": 4.0}) == {
        "CodecError": 3.0, "ValueError": 4.0}
    # The sample at 100 is now the base (at or before 420 - 300): only growth since then.
    assert recent.update(420.0, {"CodecError": 6.0, "ValueError": 4.0}) == {
        "CodecError": 1.0, "ValueError": 3.0}


def test_rate_is_growth_per_second_over_the_kept_samples() -> None:
    r = Recent(window_s=10.0)
    assert r.rate(0.0, "n") == 0.0
    r.update(0.0, {"n": 0.0})
    r.update(4.0, {"n": 400.0})
    assert r.rate(4.0, "n") == 100.0
    r.update(12.0, {"n": 600.0})  # the base moves to t=0 -> still kept (12 - 10 = 2 > 0)
    assert r.rate(12.0, "n") == 50.0
    r.update(15.0, {"n": 600.0})  # base t=4 now: (600 - 400) / 11
    assert round(r.rate(15.0, "n"), 3) == round(200 / 11, 3)


def test_produced_counts_sum_every_producer_an_instance_had() -> None:
    pc = ProducedCounts()

    def report(name: str, parts: dict[str, tuple[int, int]]) -> dict[str, object]:
        return {"name": name, "topics": {"out": {"partitions": {
            p: {"txmsgs": n, "txbytes": b} for p, (n, b) in parts.items()}}}}

    pc.update(report("producer-1", {"0": (5, 50), "-1": (99, 990)}))
    pc.update(report("producer-1", {"0": (7, 70), "1": (1, 10)}))
    assert pc.totals() == {("out", 0): (7, 70), ("out", 1): (1, 10)}
    # After a recovery the instance has a new producer whose counts start at zero.
    pc.update(report("producer-2", {"0": (2, 20)}))
    assert pc.totals() == {("out", 0): (9, 90), ("out", 1): (1, 10)}
    pc.update(report("producer-2", {"0": (3, 30), "1": (4, 40)}))
    assert pc.totals() == {("out", 0): (10, 100), ("out", 1): (5, 50)}


def test_counter_helpers_and_lag() -> None:
    counters = {
        ("records_failed_total", (("error_type", "CodecError"), ("policy", "dead_letter"),
                                  ("topic", "a"))): 2.0,
        ("records_failed_total", (("error_type", "CodecError"), ("policy", "dead_letter"),
                                  ("topic", "b"))): 3.0,
        ("records_failed_total", (("error_type", "ValueError"), ("policy", "skip"),
                                  ("topic", "a"))): 7.0,
        ("rebalances_total", ()): 2.0,
    }
    assert sum_by(counters, "records_failed_total", "error_type",
                  {"policy": "dead_letter"}) == {"CodecError": 5}
    assert sum_by(counters, "records_failed_total", "policy") == {"dead_letter": 5, "skip": 7}
    assert total(counters, "rebalances_total") == 2
    assert total(counters, "missing_total") == 0
    assert lag(5, 9) == 4
    assert lag(None, 9) is None
    assert lag(None, 0) == 0
    assert lag(5, None) is None


def test_status_json_has_the_dashboard_fields() -> None:
    snap = running_snapshot(produced_by_partition={("out", 1): (3, 30), ("out", 0): (2, 20)},
                            counters={("rebalances_total", ()): 1.0})
    body = snap.to_json()
    assert "counters" not in body
    assert body["produced_by_partition"] == [
        {"topic": "out", "partition": 0, "records": 2, "bytes": 20},
        {"topic": "out", "partition": 1, "records": 3, "bytes": 30}]
    assert body["partitions"][1] == {"topic": "in", "partition": 1, "task": "0_1",
                                     "state": "running", "committed": 3, "position": 4,
                                     "high_watermark": 9, "lag": 5}
    assert body["tasks"][1]["watermark_ms"] == 1_500
