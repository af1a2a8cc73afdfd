"""The fault suite cannot rot: ``reliability/run.py --smoke`` runs every scenario small on its
own 3-node cluster (started and stopped by the runner), in three groups so that a parallel run
spreads them over its workers. Each scenario must be exact, and must show its fault happened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streamproc.kafka import cluster

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.kafka, pytest.mark.crash]

GROUPS = {
    "instances": ("rotation", "zombie", "state_loss", "rescale"),
    "brokers": ("broker_failure", "broker_down"),
    # Network namespaces need root (CAP_SYS_ADMIN) and iproute2: the CI machine has both.
    # With disk_full, not in a group of its own: a fourth cluster and three more instances at
    # once overloaded the 2-core machine (CI run 10: 13 min, and two scenarios stalled).
    "io": ("disk_full", "network"),
}


def _check(name: str, r: dict[str, Any]) -> None:
    """What each scenario's figures must show besides ``exact``: that the fault happened."""
    assert r["duplicates"] == 0 and r["losses"] == 0 and r["dead_letters"] == 0, (name, r)
    assert r["records_in"] == r["count_outputs"] > 0, (name, r)
    assert r["windows_emitted"] == r["windows_expected"] > 0, (name, r)
    assert r["stores_checked"] > 0 and r["stores_mismatched"] == 0, (name, r)
    if name == "rotation":
        # 5 kills wanted; a crash point armed by the last of them may still fire after it
        # (CI: 6).
        assert r["kills"] >= 5 and r["restarts"] >= 5, r
    elif name == "zombie":
        assert r["pauses"] == 1 and r["zombies_told"] == 1, r
    elif name == "state_loss":
        assert r["state_dirs_deleted"] == 1 and r["rebuilt_records"] > 0, r
    elif name == "broker_failure":
        assert r["killed_node"] in (1, 2, 3) and len(r["rolling_restart"]) == 3, r
        assert r["instance_exits"] == 0, r
    elif name == "broker_down":
        assert r["alive_while_down"] and min(r["unreachable_lines"]) >= 3, r
    elif name == "disk_full":
        assert (r["exit_code"], r["disk_full_lines"], r["error_lines"], r["tracebacks"]) \
            == (1, 1, 1, 0), r
    elif name == "rescale":
        # 1 -> 3 -> 1: the three shared the 6 stateful tasks 2 each, and each step ended.
        assert r["stateful_per_instance"] == [[2, 2, 2]], r
        assert len(r["scale_out_s"]) == len(r["scale_in_s"]) == 1, r
        assert r["instance_exits"] == 0, r
    elif name == "network":
        assert r["producer_recreated"] >= 1 and r["instance_exits"] == 0, r
        assert {k: f["count"] for k, f in r["faults"].items()} == {
            "delay": 1, "drop": 1, "drop_at_commit": 1, "partition": 1}, r
        assert all(f["recover_s"] is not None for f in r["fault_log"]), r["fault_log"]
        assert r["proxies"]["commit_responses_lost"] == 1, r


# Each group starts its own 3-node cluster and instances: minutes under the suite's load.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_scenario_is_exact(group: str, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    scenarios = GROUPS[group]
    argv = [sys.executable, str(ROOT / "reliability" / "run.py"), "--smoke",
            "--scenarios", ",".join(scenarios), "--out", str(out), "--seed", "7"]
    # The runner's work dir (its cluster) under tmp_path: one it could not stop is stopped here.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    try:
        run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=840)
        if run.returncode == -6 and "rdkafka" in run.stderr and not out.exists():
            # librdkafka aborted the runner itself (an assertion in one of the harness's own
            # clients, seen in CI: rd_kafka_enq_once_del_source_return), before any scenario
            # result: that is the tooling, not the engine under test. Once more.
            run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=840)
    finally:
        for left in tmp_path.glob("streamproc-reliability-*/cluster"):
            cluster.stop(left)  # an aborted runner's finally never ran
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())["scenarios"]
    assert sorted(results) == sorted(scenarios)
    for name, r in results.items():
        assert "error" not in r, (name, r.get("error"), r.get("traceback"))
        assert r["exact"], (name, r)
        _check(name, r)
    assert run.returncode == 0, run.stdout[-3000:]
