"""Window semantics on deterministic out-of-order scenarios, through the test driver: every window
type, every emit strategy, every late-data policy, with exact expected outputs."""

from __future__ import annotations

from typing import Any

import pytest

from streamproc import Topology, TopologyError, codecs, windows
from streamproc.time.windows import END_OF_TIME


def windowed(window: Any, op: str = "count", *, ooo: int = 0, fn: Any = None,
             **options: Any) -> Topology:
    t = Topology("w")
    w = (t.source("in", key=codecs.string(), value=codecs.json(), max_out_of_orderness_ms=ooo)
         .group_by_key().window(window))
    args = (fn,) if fn is not None else ()
    getattr(w, op)(*args, store="s", **options).to("out")
    return t


def feed(d: Any, records: list[tuple[str, int, Any]]) -> None:
    for key, ts, value in records:
        d.pipe("in", value, key, timestamp=ts)


def results(d: Any) -> list[tuple[str, int, int, Any]]:
    return [(r.key, r.value["start"], r.value["end"], r.value["value"]) for r in d.records("out")]


# -- tumbling / hopping, emit final ------------------------------------------------------------
def test_tumbling_emits_each_window_once_when_the_watermark_passes_end_plus_grace(
        topology_driver):
    d = topology_driver(windowed(windows.tumbling(10, grace_ms=5)))
    feed(d, [("a", 1, 1), ("a", 9, 1), ("b", 4, 1), ("a", 12, 1)])
    assert results(d) == []  # watermark 12 < 10 + 5
    feed(d, [("a", 14, 1)])
    assert results(d) == []
    feed(d, [("b", 15, 1)])  # watermark 15 = end + grace: [0, 10) closes for every key
    assert results(d) == [("a", 0, 10, 2), ("b", 0, 10, 1)]
    assert [r.timestamp for r in d.records("out")] == [10, 10]
    d.finish()
    assert results(d)[2:] == [("a", 10, 20, 2), ("b", 10, 20, 1)]


def test_out_of_order_records_within_grace_count_and_beyond_it_are_dropped(topology_driver):
    d = topology_driver(windowed(windows.tumbling(10, grace_ms=3)))
    feed(d, [("a", 2, 1), ("a", 11, 1), ("a", 5, 1), ("a", 13, 1), ("a", 7, 1)])
    # 5 arrives at watermark 11 < 13: counted; 7 arrives at watermark 13: [0, 10) closed.
    assert results(d) == [("a", 0, 10, 2)]
    assert d.metrics.total("late_records_total", policy="drop") == 1
    d.finish()
    assert results(d) == [("a", 0, 10, 2), ("a", 10, 20, 2)]


def test_max_out_of_orderness_holds_the_watermark_back(topology_driver):
    d = topology_driver(windowed(windows.tumbling(10), ooo=5))
    feed(d, [("a", 1, 1), ("a", 12, 1), ("a", 8, 1)])  # watermark 7: 8 is on time
    assert results(d) == []
    assert d.watermarks() == {"0_0": 7}
    feed(d, [("a", 15, 1)])
    assert results(d) == [("a", 0, 10, 2)]


def test_hopping_windows_each_record_counts_in_size_over_advance_windows(topology_driver):
    d = topology_driver(windowed(windows.hopping(10, 5)))
    feed(d, [("a", 3, 1), ("a", 7, 1), ("a", 12, 1)])
    d.finish()
    assert results(d) == [("a", -5, 5, 1), ("a", 0, 10, 2), ("a", 5, 15, 2), ("a", 10, 20, 1)]


@pytest.mark.parametrize(("op", "fn", "values", "expected"), [
    ("count", None, [5, 1, 3], 3),
    ("sum", None, [5, 1, 3], 9),
    ("sum", lambda v: v * 2, [5, 1, 3], 18),
    ("min", None, [5, 1, 3], 1),
    ("max", None, [5, 1, 3], 5),
    ("mean", None, [5, 1, 3], 3.0),
    ("reduce", lambda a, b: a * b, [5, 1, 3], 15),
    ("collect", None, [5, 1, 3], [5, 1, 3]),
])
def test_built_in_aggregations(topology_driver, op, fn, values, expected):
    d = topology_driver(windowed(windows.tumbling(100), op, fn=fn))
    feed(d, [("k", i, v) for i, v in enumerate(values)])
    d.finish()
    assert results(d) == [("k", 0, 100, expected)]


def test_collect_is_bounded(topology_driver):
    d = topology_driver(windowed(windows.tumbling(100), "collect", max_items=2))
    feed(d, [("k", i, i) for i in range(5)])
    d.finish()
    assert results(d) == [("k", 0, 100, [0, 1])]


def test_custom_aggregate_with_result(topology_driver):
    t = Topology("w")
    (t.source("in", key=codecs.string()).group_by_key().window(windows.tumbling(10))
     .aggregate(lambda: {"n": 0, "total": 0}, lambda acc, v: {"n": acc["n"] + 1,
                                                              "total": acc["total"] + v},
                result=lambda acc: acc["total"] / acc["n"], store="s")
     .to("out"))
    d = topology_driver(t)
    feed(d, [("k", 1, 2), ("k", 2, 4), ("k", 11, 9)])
    d.finish()
    assert results(d) == [("k", 0, 10, 3.0), ("k", 10, 20, 9.0)]


# -- emit strategies ---------------------------------------------------------------------------
def test_emit_update_emits_the_new_result_after_every_record(topology_driver):
    d = topology_driver(windowed(windows.tumbling(10), emit="update"))
    feed(d, [("a", 1, 1), ("a", 2, 1), ("b", 3, 1), ("a", 11, 1)])
    assert results(d) == [("a", 0, 10, 1), ("a", 0, 10, 2), ("b", 0, 10, 1), ("a", 10, 20, 1)]
    d.finish()
    assert len(results(d)) == 4  # nothing more at the end


def test_early_firings_emit_provisional_results_every_interval_of_wall_clock(topology_driver):
    d = topology_driver(windowed(windows.tumbling(3_600_000), early_every_ms=1000))
    feed(d, [("a", 1, 1), ("a", 2, 1)])
    d.advance_time(500)
    assert results(d) == []
    d.advance_time(600)  # the first interval started with the first tick at 500
    d.advance_time(1000)
    assert results(d) == [("a", 0, 3_600_000, 2)]
    d.advance_time(1000)  # nothing changed since: no new early result
    feed(d, [("a", 3, 1)])
    d.advance_time(1000)
    d.finish()
    assert results(d) == [("a", 0, 3_600_000, 2), ("a", 0, 3_600_000, 3),
                          ("a", 0, 3_600_000, 3)]


# -- late data policies ------------------------------------------------------------------------
def test_side_output_sends_the_original_record_with_window_and_watermark_headers(
        topology_driver):
    d = topology_driver(windowed(windows.tumbling(10), late="side_output"))
    feed(d, [("a", 1, 1), ("a", 25, 1)])
    d.pipe("in", b'{"raw": true}', "a", timestamp=4, headers=[("trace", b"t1")])
    (late,) = d.late_records()
    assert late.topic == "w-late"
    assert (late.key, late.value, late.timestamp) == (b"a", b'{"raw": true}', 4)
    assert late.headers == {
        "trace": b"t1", "streamproc.topic": b"in", "streamproc.partition": b"0",
        "streamproc.offset": b"2", "streamproc.timestamp": b"4",
        "streamproc.operator": b"window_count-2",
        "streamproc.window.start": b"0", "streamproc.window.end": b"10",
        "streamproc.watermark": b"25"}
    assert d.metrics.total("late_records_total", policy="side_output") == 1
    assert results(d) == [("a", 0, 10, 1)]


def test_late_update_reopens_closed_windows_within_allowed_lateness(topology_driver):
    d = topology_driver(windowed(windows.tumbling(10), late="update", allowed_lateness_ms=20))
    feed(d, [("a", 1, 1), ("a", 12, 1)])
    assert results(d) == [("a", 0, 10, 1)]
    feed(d, [("a", 5, 1)])  # watermark 12 < 10 + 20: corrected result at once
    assert results(d) == [("a", 0, 10, 1), ("a", 0, 10, 2)]
    feed(d, [("a", 31, 1), ("a", 6, 1)])  # watermark 31 >= 30: beyond lateness, dropped
    assert results(d) == [("a", 0, 10, 1), ("a", 0, 10, 2), ("a", 10, 20, 1)]
    assert d.metrics.total("late_records_total") == 1
    assert ("a", 0, 10) not in d.state("s")  # purged once beyond lateness


def test_late_update_for_a_window_that_had_no_record_emits_it_once(topology_driver):
    d = topology_driver(windowed(windows.tumbling(10), late="update", allowed_lateness_ms=50))
    feed(d, [("a", 25, 1), ("a", 3, 1)])
    d.finish()
    assert results(d) == [("a", 0, 10, 1), ("a", 20, 30, 1)]


# -- sliding -----------------------------------------------------------------------------------
def test_sliding_windows_end_at_every_record_and_see_the_size_before_it(topology_driver):
    d = topology_driver(windowed(windows.sliding(10), emit="update"))
    feed(d, [("a", 0, 1), ("a", 5, 1), ("a", 10, 1), ("a", 21, 1)])
    assert results(d) == [("a", -10, 0, 1), ("a", -5, 5, 2), ("a", 0, 10, 3), ("a", 11, 21, 1)]


def test_sliding_out_of_order_record_updates_the_later_windows_too(topology_driver):
    d = topology_driver(windowed(windows.sliding(10, grace_ms=100), emit="update"))
    feed(d, [("a", 0, 1), ("a", 8, 1), ("a", 4, 1)])
    assert results(d) == [("a", -10, 0, 1), ("a", -2, 8, 2), ("a", -6, 4, 2), ("a", -2, 8, 3)]


def test_sliding_emit_final(topology_driver):
    d = topology_driver(windowed(windows.sliding(10), "sum"))
    feed(d, [("a", 0, 1), ("a", 5, 2), ("a", 30, 4)])
    assert results(d) == [("a", -10, 0, 1), ("a", -5, 5, 3)]
    d.finish()
    assert results(d)[2:] == [("a", 20, 30, 4)]
    assert d.state("s") == {}


# -- sessions ----------------------------------------------------------------------------------
def session_topology(**options: Any) -> Topology:
    return windowed(windows.session(10), "count", **options)


def test_sessions_split_on_inactivity_gap(topology_driver):
    d = topology_driver(session_topology())
    feed(d, [("a", 0, 1), ("a", 5, 1), ("a", 15, 1), ("a", 26, 1), ("b", 40, 1)])
    # [0, 15] closes once the watermark passes 15 + 10, [26, 26] once it passes 36
    assert results(d) == [("a", 0, 15, 3), ("a", 26, 26, 1)]
    d.finish()
    assert results(d)[2:] == [("b", 40, 40, 1)]


def test_a_record_bridging_two_sessions_merges_them(topology_driver):
    d = topology_driver(session_topology(emit="update"))
    feed(d, [("a", 0, 1), ("a", 30, 1), ("b", 31, 1)])
    # [0, 0] closed at watermark 11 and was deleted (emit="update" keeps no closed window)
    assert d.state("s") == {("a", 30, 30): 1, ("b", 31, 31): 1}
    d2 = topology_driver(windowed(windows.session(10, grace_ms=50), "count"))
    feed(d2, [("a", 0, 1), ("a", 18, 1), ("a", 9, 1)])  # 9 is within 10 of both
    d2.finish()
    assert results(d2) == [("a", 0, 18, 3)]
    assert results(d) == [("a", 0, 0, 1), ("a", 30, 30, 1), ("b", 31, 31, 1)]


def test_session_aggregate_needs_merge():
    t = Topology("w")
    w = t.source("in").group_by_key().window(windows.session(10))
    with pytest.raises(TopologyError, match="needs merge="):
        w.aggregate(list, lambda acc, v: [*acc, v], store="s")


# -- count and global windows ------------------------------------------------------------------
def test_count_windows_fire_every_n_records_per_key(topology_driver):
    d = topology_driver(windowed(windows.count(3), "sum"))
    feed(d, [("a", 1, 1), ("a", 2, 2), ("b", 3, 10), ("a", 4, 3), ("a", 5, 4)])
    assert results(d) == [("a", 1, 4, 6)]
    d.finish()  # the end of the input fires incomplete windows
    assert results(d)[1:] == [("a", 5, 5, 4), ("b", 3, 3, 10)]


def test_count_window_timeout_fires_an_incomplete_window_by_event_time(topology_driver):
    d = topology_driver(windowed(windows.count(3, timeout_ms=10), "sum"))
    feed(d, [("a", 1, 1), ("a", 2, 2), ("b", 5, 7)])
    assert results(d) == []
    feed(d, [("b", 11, 1)])  # watermark 11 >= 1 + 10
    assert results(d) == [("a", 1, 2, 3)]
    feed(d, [("a", 12, 5)])
    d.finish()
    # in the order they fall due: b's at 5 + 10, a's at 12 + 10
    assert results(d)[1:] == [("b", 5, 11, 8), ("a", 12, 12, 5)]


def test_global_window_emits_once_at_the_end_of_input(topology_driver):
    d = topology_driver(windowed(windows.global_(), "count"))
    feed(d, [("a", 1, 1), ("b", 2, 1), ("a", 300, 1)])
    assert results(d) == []
    d.finish()
    assert results(d) == [("a", 1, 300, 2), ("b", 2, 2, 1)]
    assert d.watermarks() == {"0_0": END_OF_TIME}


# -- state stays bounded -----------------------------------------------------------------------
def test_closed_windows_are_deleted(topology_driver):
    d = topology_driver(windowed(windows.tumbling(10)))
    feed(d, [("k", t, 1) for t in range(0, 1000, 3)])
    assert set(d.state("s")) == {("k", 990, 1000)}
    op_open = [len(op.open) for t in d.tasks.values() for op in t._timed]
    assert op_open == [1]


def test_window_state_survives_a_crash_with_state_loss(topology_driver):
    d = topology_driver(windowed(windows.tumbling(10)), auto_commit=False)
    feed(d, [("a", 1, 1), ("a", 2, 1)])
    d.commit()
    feed(d, [("a", 3, 1)])
    d.crash(lose_state=True)  # the third record is replayed
    assert d.state("s") == {("a", 0, 10): 3}
    d.finish()
    assert results(d) == [("a", 0, 10, 3)]


# -- option validation -------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({"emit": "sometimes"}, "emit must be one of"),
    ({"late": "ignore"}, "late must be one of"),
    ({"late": "update"}, "needs allowed_lateness_ms > 0"),
    ({"allowed_lateness_ms": 5}, 'only applies with late="update"'),
    ({"early_every_ms": 10, "emit": "update"}, "early_every_ms must be"),
    ({"colour": "red"}, "unknown options"),
])
def test_bad_window_options_fail_at_build_time(options, message):
    with pytest.raises(TopologyError, match=message):
        windowed(windows.tumbling(10), **options)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: windows.tumbling(0), "size_ms must be a positive integer"),
    (lambda: windows.hopping(10, 20), "must not exceed size_ms"),
    (lambda: windows.tumbling(10, grace_ms=-1), "grace_ms must be >= 0"),
    (lambda: windows.count(0), "size must be a positive integer"),
    (lambda: windows.session(0), "gap_ms must be a positive integer"),
])
def test_bad_window_specs(make, message):
    with pytest.raises(TopologyError, match=message):
        make()
