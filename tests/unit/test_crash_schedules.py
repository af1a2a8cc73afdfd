"""Property: for a windowed topology, any crash schedule (and any batching of the input) gives
the same committed output as a failure-free run, record for record; no window result is lost
or emitted twice."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc import Topology, codecs, windows
from streamproc.testing import Fault, Pipe, run_steps
from streamproc.testing.crashes import FAULT_KINDS


def windowed() -> Topology:
    """Tumbling counts (emit final, late records side-output) and hopping sums (emit update)
    over the same keyed input: two window stores, a late topic and the watermark in one task."""
    t = Topology("hyp")
    events = t.source("in", key=codecs.string(), value=codecs.json(), max_out_of_orderness_ms=5)
    grouped = events.group_by_key()
    grouped.window(windows.tumbling(20, grace_ms=3)).count(
        store="tumbling", late="side_output").to("counts")
    grouped.window(windows.hopping(30, 10)).sum(
        lambda v: v["n"], store="hopping", emit="update", late="drop").to("sums")
    return t


@st.composite
def scripts(draw: st.DrawFn) -> tuple[list[Pipe], list[Fault], int | None]:
    n = draw(st.integers(min_value=1, max_value=25))
    steps, clock = [], 0
    for i in range(n):
        clock += draw(st.integers(min_value=0, max_value=8))
        # mostly in order, some records up to 30 ms behind (late beyond grace, or not)
        ts = max(0, clock - draw(st.sampled_from([0, 0, 0, 2, 7, 30])))
        steps.append(Pipe("in", {"n": i}, draw(st.sampled_from(["a", "b", "c"])), timestamp=ts))
    faults = draw(st.lists(st.builds(Fault, st.integers(min_value=-1, max_value=n - 1),
                                     st.sampled_from(FAULT_KINDS)), max_size=6))
    batch = draw(st.sampled_from([None, 1, 2, 3]))
    return steps, sorted(faults, key=lambda f: f.after_step), batch


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts())
def test_any_crash_schedule_gives_the_failure_free_output(script):
    steps, faults, batch = script
    expected = run_steps(windowed, steps, None)
    got = run_steps(windowed, steps, faults, batch_size=batch)
    assert got == expected
    # and the failure-free output itself is right: each tumbling window exactly once, with
    # the window end as its timestamp
    windows_out = [(k, json.loads(value)["start"], json.loads(value)["end"], ts)
                   for k, rs in expected["counts"].items() for value, ts, _ in rs]
    assert len({(k, s) for k, s, _, _ in windows_out}) == len(windows_out)
    assert all(end == ts == s + 20 for _, s, end, ts in windows_out)
