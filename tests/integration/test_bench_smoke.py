"""The benchmark harness cannot rot: its smoke mode runs every workload with every contender
(streamproc, Quix Streams in its own virtualenv, the bare-client ceiling) on a tiny input
against the real broker, under exactly-once, and every run's output must be exactly the
expected one.

One harness run per workload (``--workloads W<n>``; for W6 one per contender too), so that a
parallel run spreads them over its workers; together they check what one run of all six does
(the workloads and contenders are independent: each run has its own input, groups and state,
and smoke mode fixes W5's rate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRAIN = ("W1", "W2", "W3", "W4")


W6_CONTENDERS = ("quix", "streamproc")  # W6 (recovery) has no ceiling


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("workload", "contenders"), [
    *((w, "all") for w in (*DRAIN, "W5")),
    # W6 is the longest by far: one run per contender, so that they run side by side.
    *(("W6", c) for c in W6_CONTENDERS)])
def test_every_contender_produces_the_exact_expected_output(kafka: str, tmp_path: Path,
                                                            workload: str,
                                                            contenders: str) -> None:
    out = tmp_path / "results.json"
    only = [] if contenders == "all" else ["--contenders", contenders]
    proc = subprocess.run(
        # Exactly-once only: the at-least-once configurations differ from it by client
        # settings alone, and halving the runs keeps the suite well inside its time budget
        # (streamproc's at-least-once path is tested end to end in test_wordcount).
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--guarantees", "eos",
         "--workloads", workload, *only, "--out", str(out)],
        env={**os.environ, "STREAMPROC_BROKERS": kafka}, cwd=ROOT,
        capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())
    w = res["workloads"]
    assert sorted(w) == [workload]
    if workload == "W3":
        # W3's check covers every window: exactly once, exact count, sum within 1e-6.
        assert w["W3"]["output_windows"] > 0
    if workload in DRAIN:
        assert sorted(w[workload]["results"]) == ["ceiling", "quix", "streamproc"]
        for contender, by_g in w[workload]["results"].items():
            assert sorted(by_g) == ["eos"], (workload, contender)
            for g, summary in by_g.items():
                runs = summary["runs"]
                assert len(runs) == 1 and runs[0]["ok"], (workload, contender, g, runs)
                assert runs[0]["problems"] == [] and runs[0]["rps"] > 0
    if workload == "W5":
        for contender, by_g in w["W5"]["results"].items():
            for g, summary in by_g.items():
                assert summary["ok"], (contender, g, summary)
                run = summary["runs"][0]
                assert run["received"] == run["sent"] > 0
    if workload == "W6":
        # Both contenders over the two runs: the ceiling has no state to restore.
        assert sorted(w["W6"]["results"]) == [contenders]
        for contender, by_g in w["W6"]["results"].items():
            r = by_g["eos"]
            # ok includes the restored counts of re-sent keys being exactly right.
            assert r["ok"] and r["problems"] == [], (contender, r)
            assert r["restore_s"] is not None and r["restore_s"] > 0, (contender, r)
            assert r["kill_to_first_output_s"] > 0
