"""sessions on the test driver: visitor sessions split by 30 min of inactivity."""

from __future__ import annotations

import pytest

from streamproc.testing import check_crash_safety
from tests.topologies import expected
from tests.topologies.helpers import out_of_order, per_key, pipe_all, steps
from topologies._examples import BASE_MS, HOUR, MINUTE, partition_of
from topologies.sessions import build, sample

IN, OUT = "clicks", "visitor-sessions"


def at(h: int, m: int = 0) -> int:
    return BASE_MS + h * HOUR + m * MINUTE


def click(visitor: str, ts: int, page: str = "/") -> tuple[str, dict[str, str], int]:
    return (visitor, {"visitor": visitor, "page": page}, ts)


def session(start: int, end: int, pages: int) -> tuple[dict[str, int], int]:
    return {"start": start, "end": end, "pages": pages}, end


def test_a_session_ends_after_30_min_without_a_view(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [click("v-01", at(0, 0)), click("v-01", at(0, 10), "/docs"),
                     click("v-01", at(0, 25), "/pricing"),
                     click("v-02", at(0, 30)),
                     click("v-02", at(1, 0))])  # exactly 30 min later: the same session
    assert d.records(OUT) == []  # the watermark (00:59) has not passed 00:25 + 30 + 5 min
    pipe_all(d, IN, [click("v-01", at(1, 10))])  # 45 min after its last view: a new session
    assert d.key_values(OUT) == [("v-01", {"start": at(0, 0), "end": at(0, 25), "pages": 3})]
    d.finish()
    assert per_key(d.records(OUT)) == {
        "v-01": [session(at(0, 0), at(0, 25), 3), session(at(1, 10), at(1, 10), 1)],
        "v-02": [session(at(0, 30), at(1, 0), 2)]}


def test_a_late_view_that_bridges_two_sessions_merges_them(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [click("v-03", at(0, 0)),
                     click("v-03", at(0, 33)),  # 33 min later: a second session
                     click("v-03", at(0, 15))])  # within 30 min of both: one session
    d.finish()
    assert per_key(d.records(OUT)) == {"v-03": [session(at(0, 0), at(0, 33), 3)]}


def test_a_view_that_could_only_join_a_closed_session_is_dropped(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [click("v-04", at(0, 0)),
                     click("v-05", at(1, 0)),  # watermark 00:59: v-04's session closes
                     click("v-04", at(0, 10))])  # its own session would close at 00:46: late
    assert d.key_values(OUT) == [("v-04", {"start": at(0, 0), "end": at(0, 0), "pages": 1})]
    assert d.metrics.total("late_records_total") == 1
    d.finish()
    assert per_key(d.records(OUT)) == {"v-04": [session(at(0, 0), at(0, 0), 1)],
                                       "v-05": [session(at(1, 0), at(1, 0), 1)]}


def test_a_view_inside_a_session_that_is_still_open_is_not_late(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [click("v-06", at(0, m)) for m in (0, 20, 40, 60, 80)])  # open until 01:55
    pipe_all(d, IN, [click("v-06", at(0, 30))])  # inside it, 50 min behind the latest view
    d.finish()
    assert per_key(d.records(OUT)) == {"v-06": [session(at(0, 0), at(1, 20), 6)]}


@pytest.mark.parametrize(("seed", "partitions"), [(3, 2), (22, 3)])
def test_the_sample_gives_what_a_batch_computation_gives(topology_driver, seed, partitions):
    events = sample(seed=seed)
    assert out_of_order(events, partitions) > 10
    d = topology_driver(build(), partitions=partitions)
    pipe_all(d, IN, events, partitions)
    d.finish()
    out, late = expected.sessions(events, lambda k: partition_of(k, partitions))
    assert per_key(d.records(OUT)) == out[OUT]
    assert late, "the sample has late views"
    assert d.metrics.total("late_records_total") == late


def test_crash_safety():
    script = steps(IN, [click("v-01", at(0, 0)), click("v-01", at(0, 33)),
                        click("v-01", at(0, 20)),  # merges the two sessions
                        click("v-02", at(1, 30)),  # closes v-01's session
                        click("v-01", at(0, 10))])  # late
    assert check_crash_safety(build, script) == 4 * len(script)
