"""Timers, idleness and watermark propagation through repartitions (issue: downstream event
time is the minimum over upstream tasks), through the test driver."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from streamproc import Topology, codecs, windows
from streamproc.testing import Fault, Pipe, check_crash_safety
from streamproc.time.watermarks import NO_WATERMARK


# -- keyed process functions with timers ------------------------------------------------------
def timer_topology() -> Topology:
    def on_record(ctx: Any, key: str, value: dict[str, Any]) -> None:
        if value.get("cancel"):
            ctx.timers.delete_event_time(ctx.state.get())
            ctx.state.delete()
            return
        due = ctx.timestamp + 10
        ctx.state.set(due)
        ctx.timers.register_event_time(due)
        if value.get("remind"):
            ctx.timers.register_processing_time(ctx.now + 1000)

    def on_timer(ctx: Any, key: str, ts: int) -> None:
        ctx.emit({"timer": ts, "watermark": ctx.watermark, "state": ctx.state.get()})
        if ctx.state.get() == ts:
            ctx.state.delete()

    t = Topology("timers")
    (t.source("in", key=codecs.string()).group_by_key()
     .process(on_record, store="pending", on_timer=on_timer).to("out"))
    return t


def test_event_time_timer_fires_before_the_record_that_passes_it(topology_driver):
    d = topology_driver(timer_topology())
    d.pipe("in", {}, "a", timestamp=0)   # timer at 10
    d.pipe("in", {}, "b", timestamp=5)   # timer at 15
    d.pipe("in", {}, "a", timestamp=12)  # watermark 12: a's timer at 10 fires first
    # The timer runs before the record at 12 is processed: the state is still the first due.
    assert d.key_values("out") == [("a", {"timer": 10, "watermark": 12, "state": 10})]
    d.finish()
    assert d.key_values("out")[1:] == [
        ("b", {"timer": 15, "watermark": 2**63 - 1, "state": 15}),
        ("a", {"timer": 22, "watermark": 2**63 - 1, "state": 22})]
    assert d.state("pending") == {}


def test_deleted_timers_do_not_fire(topology_driver):
    d = topology_driver(timer_topology())
    d.pipe("in", {}, "a", timestamp=0)
    d.pipe("in", {"cancel": True}, "a", timestamp=3)
    d.finish()
    assert d.records("out") == []


def test_processing_time_timers_follow_the_wall_clock(topology_driver):
    d = topology_driver(timer_topology(), start_time_ms=50_000)
    d.pipe("in", {"remind": True}, "a", timestamp=0)
    d.advance_time(999)
    assert d.records("out") == []
    d.advance_time(1)
    assert d.key_values("out") == [("a", {"timer": 51_000, "watermark": 0, "state": 10})]


def test_timers_survive_a_crash_that_loses_local_state(topology_driver):
    d = topology_driver(timer_topology(), auto_commit=False)
    d.pipe("in", {}, "a", timestamp=0)
    d.commit()
    d.crash(lose_state=True)
    d.pipe("in", {}, "b", timestamp=11)
    d.commit()
    assert d.key_values("out") == [("a", {"timer": 10, "watermark": 11, "state": 10})]


def test_timers_are_crash_safe():
    steps = [Pipe("in", {"cancel": i % 5 == 4}, k, timestamp=ts)
             for i, (k, ts) in enumerate([("a", 0), ("b", 3), ("a", 8), ("c", 12), ("a", 14),
                                          ("b", 20), ("c", 21), ("a", 35), ("b", 36)])]
    assert check_crash_safety(timer_topology, steps) == 9 * 4


def test_on_timer_needs_a_store():
    from streamproc import TopologyError
    t = Topology("x")
    with pytest.raises(TopologyError, match="needs a store"):
        t.source("in").process(lambda c, k, v: None, on_timer=lambda c, k, ts: None)


# -- idleness ----------------------------------------------------------------------------------
def idle_topology(idle_timeout_ms: int | None) -> Topology:
    t = Topology("idle")
    (t.source("in", key=codecs.string(), idle_timeout_ms=idle_timeout_ms).group_by_key()
     .window(windows.tumbling(10)).count(store="c").to("out"))
    return t


def test_without_idleness_a_quiet_partition_keeps_its_window_open(topology_driver):
    d = topology_driver(idle_topology(None))
    d.pipe("in", 1, "a", timestamp=5)
    d.advance_time(3_600_000)
    assert d.records("out") == []


def test_idleness_lets_the_watermark_follow_the_wall_clock(topology_driver):
    d = topology_driver(idle_topology(1000))
    d.pipe("in", 1, "a", timestamp=5)
    d.advance_time(1000)  # idle now; the watermark starts moving from 5
    d.advance_time(4)
    assert d.watermarks() == {"0_0": 9}
    assert d.records("out") == []
    d.advance_time(1)
    assert d.key_values("out") == [("a", {"start": 0, "end": 10, "value": 1})]
    d.pipe("in", 1, "a", timestamp=7)  # input resumed, but [0, 10) has closed: late
    assert d.metrics.total("late_records_total") == 1


# -- watermark propagation through a repartition ---------------------------------------------
def skewed_topology(propagation: bool = True) -> Topology:
    t = Topology("skew", watermark_propagation=propagation)
    (t.source("in", key=codecs.string())
     .group_by(lambda v: v["k"], key=codecs.string(), name="byk")
     .window(windows.tumbling(10)).count(store="c", late="side_output")
     .to("out"))
    return t


def skewed_input() -> list[Pipe]:
    """Partition 0 runs 1000 ms ahead of partition 1; both in order."""
    steps = []
    for i in range(30):
        steps.append(Pipe("in", {"k": "x" if i % 3 else "y"}, f"p0-{i}", timestamp=1000 + i * 5,
                          partition=0))
        steps.append(Pipe("in", {"k": "x" if i % 2 else "y"}, f"p1-{i}", timestamp=i * 5,
                          partition=1))
    return steps


def batch_counts(steps: list[Pipe]) -> Counter[tuple[str, int]]:
    assert all(s.timestamp is not None for s in steps)
    return Counter((s.value["k"], (s.timestamp or 0) // 10 * 10) for s in steps)


def run(d: Any, steps: list[Pipe]) -> None:
    for s in steps:
        d.pipe(s.topic, s.value, s.key, timestamp=s.timestamp, partition=s.partition)
    d.finish()


def test_with_propagation_a_slow_partition_loses_nothing(topology_driver):
    d = topology_driver(skewed_topology(), partitions=2)
    steps = skewed_input()
    run(d, steps)
    got = Counter()
    for r in d.records("out"):
        assert r.value["end"] - r.value["start"] == 10
        assert (r.key, r.value["start"]) not in got  # each window exactly once
        got[(r.key, r.value["start"])] = r.value["value"]
    assert got == batch_counts(steps)
    assert d.late_records() == []


def test_without_propagation_the_slow_partition_becomes_late(topology_driver):
    d = topology_driver(skewed_topology(propagation=False), partitions=2)
    steps = skewed_input()
    run(d, steps)
    late = d.late_records()
    # Every record of partition 1: the downstream task's stream time is 1000 ms ahead of them
    # from the first record of partition 0 on.
    assert sorted(r.timestamp for r in late) == [i * 5 for i in range(30)]
    assert sum(r.value["value"] for r in d.records("out")) == 60 - 30


def test_downstream_waits_for_every_upstream_task(topology_driver):
    d = topology_driver(skewed_topology(), partitions=2)
    d.pipe("in", {"k": "x"}, "p0", timestamp=1000, partition=0)
    assert d.watermarks()["1_0"] == NO_WATERMARK  # upstream task 0_1 not heard from yet
    d.pipe("in", {"k": "x"}, "p1", timestamp=20, partition=1)
    assert {k: v for k, v in d.watermarks().items() if k.startswith("1_")} == {
        "1_0": 20, "1_1": 20}


def test_an_idle_upstream_task_does_not_hold_the_minimum_back(topology_driver):
    t = Topology("skew")
    (t.source("in", key=codecs.string(), idle_timeout_ms=500)
     .group_by(lambda v: v["k"], key=codecs.string(), name="byk")
     .window(windows.tumbling(10)).count(store="c").to("out"))
    d = topology_driver(t, partitions=2)
    d.pipe("in", {"k": "x"}, "p0", timestamp=3, partition=0)
    d.pipe("in", {"k": "x"}, "p0", timestamp=15, partition=0)
    assert d.records("out") == []  # partition 1 has never been heard from
    d.advance_time(499)
    assert d.records("out") == []
    d.advance_time(1)  # both idle; partition 1 no longer holds the minimum back
    assert d.key_values("out") == [("x", {"start": 0, "end": 10, "value": 1})]


def test_propagation_is_crash_and_rebalance_safe():
    steps = skewed_input()[:24]
    schedules = [[Fault(i, "commit") for i in range(0, n, 3)] + [Fault(n, kind)]
                 for n in (4, 9, 15, 22) for kind in ("crash", "crash_lose_state",
                                                      "crash_mid_checkpoint", "rebalance")]
    assert check_crash_safety(skewed_topology, steps, schedules, partitions=2) == 16




def test_crash_check_of_a_merged_fan_out_compares_per_key_multisets():
    from streamproc.testing import CrashSafetyError

    def merged() -> Topology:
        t = Topology("fan")
        s = t.source("in", key=codecs.string())
        evens = s.filter(lambda n: n % 2 == 0).map(lambda n: {"even": n})
        odds = s.filter(lambda n: n % 2 == 1).map(lambda n: {"odd": n})
        evens.merge(odds).to("out")
        return t

    steps = [Pipe("in", n, "k", timestamp=n) for n in (2, 3, 4)]
    schedule = [[Fault(0, "commit"), Fault(2, "crash")]]
    with pytest.raises(CrashSafetyError):  # the branches interleave by batch
        check_crash_safety(merged, steps, schedule)
    assert check_crash_safety(merged, steps, schedule, ordered=False) == 1


def test_a_malformed_control_record_is_dead_lettered_not_a_crash(topology_driver):
    from streamproc.time.watermarks import CONTROL_HEADER

    d = topology_driver(skewed_topology())
    topic = "skew-byk-repartition"
    d.cluster.append(topic, 0, None, b"not json", 7, [(CONTROL_HEADER, b"watermark")])
    d.pipe("in", {"k": "x"}, "p0", timestamp=5)  # the downstream task reads the topic
    (letter,) = d.dead_letters()
    assert (letter.value, letter.headers["streamproc.topic"],
            letter.headers["streamproc.offset"], letter.headers["streamproc.operator"],
            letter.headers["streamproc.error.type"]) == (
        b"not json", topic.encode(), b"0", b"byk.source", b"ControlRecordRejected")
    assert d.watermarks()["1_0"] == 5  # the real control record still counts


def test_a_task_reading_several_topics_waits_for_the_slowest() -> None:
    from streamproc.time.watermarks import NO_WATERMARK, TaskTime

    tt = TaskTime(ooo_ms=10, idle_timeout_ms=None, has_local=True, upstream_tasks={},
                  now_ms=0, local_topics=("a", "b"))
    tt.begin_batch(0)
    tt.observe(100, 0, "a")
    assert tt.watermark == NO_WATERMARK  # b not heard from: it may be far behind
    tt.observe(50, 0, "b")
    assert tt.watermark == 40
    tt.observe(500, 1, "a")  # a backlog of a read first does not move it
    assert tt.watermark == 40
    tt.observe(150, 1, "b")
    assert (tt.watermark, tt.stream_time) == (140, 500)
    again = TaskTime(ooo_ms=10, idle_timeout_ms=None, has_local=True, upstream_tasks={},
                     now_ms=0, local_topics=("a", "b"))
    snap = tt.snapshot()
    assert snap is not None
    again.restore(snap)
    again.begin_batch(0)
    again.observe(300, 2, "b")
    assert again.watermark == 290  # a's 500 came back with the checkpoint


def test_a_quiet_topic_stops_holding_the_watermark_after_the_idle_timeout() -> None:
    from streamproc.time.watermarks import NO_WATERMARK, TaskTime

    tt = TaskTime(ooo_ms=0, idle_timeout_ms=1_000, has_local=True, upstream_tasks={},
                  now_ms=0, local_topics=("a", "b"))
    tt.begin_batch(500)
    tt.observe(100, 0, "a")
    assert tt.watermark == NO_WATERMARK
    tt.begin_batch(1_500)  # b quiet for 1.5 s since the task started
    tt.observe(200, 1, "a")
    assert tt.watermark == 200
