"""Savepoints on the real broker.

The issue's test: take a savepoint mid-stream, keep processing, then start a second
application (a new application id, writing to its own output topic) from the savepoint; its
output from the savepoint on equals the original's. Word count has a repartition, so the cut
includes records between its two sub-topologies: some are put in flight on purpose (written to
the repartition topic, not yet consumed) and must be counted exactly once by both.

Runs are bounded (``until=end``), so each ends by itself after committing everything.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streamproc.graph.compile import compile_topology
from streamproc.kafka import io
from streamproc.savepoints import Savepoint
from streamproc.savepoints.topology import fingerprint
from tests import apps
from tests.harness import cli, create_topics, running, unique
from tests.integration.test_bounded import run_bounded
from topologies import wordcount

pytestmark = pytest.mark.kafka

FIRST = [f"w{i % 5} x{i % 3}" for i in range(60)]
INFLIGHT = ["w0", "w1", "w1", "late"]  # written straight to the repartition topic
SECOND = [f"w{i % 4} y{i % 2}" for i in range(40)]


def _by_key(kafka: str, topic: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in io.read_all(kafka, topic):
        out.setdefault((r.key or b"").decode(), []).append(orjson.loads(r.value or b""))
    return out


def _produce(kafka: str, topic: str, lines: list[str], first: int = 0) -> None:
    io.produce_timed(kafka, topic, ((None, line.encode(), None, (first + i) % 2)
                                    for i, line in enumerate(lines)))


def test_second_app_from_a_savepoint_continues_exactly_like_the_original(
        kafka: str, tmp_path: Path) -> None:
    u = unique("sp")
    source, out_a, out_b = f"{u}-lines", f"{u}-counts-a", f"{u}-counts-b"
    app_a, app_b = f"{u}-a", f"{u}-b"
    create_topics(kafka, (source, 2), (out_a, 2), (out_b, 2))
    topo_a = wordcount.build(app_a, source, out_a)
    spec = "topologies.wordcount:build"
    params_a = ["--param", f"app_id={app_a}", "--param", f"source={source}",
                "--param", f"sink={out_a}"]

    _produce(kafka, source, FIRST)
    assert run_bounded(topo_a, kafka, tmp_path / "a", until="end", static_membership=False) == 0
    # Records the upstream side wrote that the downstream side has not consumed yet (as when
    # an instance stops between the two): the savepoint must carry them.
    io.produce_timed(kafka, f"{app_a}-words-repartition",
                     ((w.encode(), w.encode(), None, None) for w in INFLIGHT))

    sp_dir = tmp_path / "savepoint"
    made = cli(kafka, "savepoint", "create", "--app", app_a, "--topology", spec, *params_a,
                "--to", str(sp_dir))
    assert made.returncode == 0, made.stderr
    sp = Savepoint.open(sp_dir)
    m = sp.manifest
    totals = Counter(w for line in FIRST for w in line.split())
    assert m.application_id == app_a and m.topology == spec
    # The same graph under another id has the same fingerprint; another sink another one.
    assert m.fingerprint == fingerprint(compile_topology(wordcount.build(app_b, source, out_a)))
    assert m.fingerprint != fingerprint(compile_topology(wordcount.build(app_a, source, out_b)))
    assert m.source_offsets == {source: {0: 30, 1: 30}}
    assert m.tasks == {0: 2, 1: 2}
    assert sorted(m.stores) == ["counts"] and m.stores["counts"].keys == len(totals)
    saved = {k.decode(): orjson.loads(v) for k, v in sp.store("counts").items()}
    assert saved == dict(totals)
    assert m.inflight["words-repartition"].records == len(INFLIGHT)
    assert sorted((r.key or b"").decode() for p in range(2)
                  for r in sp.inflight("words-repartition", p)) == sorted(INFLIGHT)
    inspected = cli(kafka, "savepoint", "inspect", str(sp_dir))
    assert inspected.returncode == 0, inspected.stderr
    assert f"  counts: {len(totals)} keys" in inspected.stdout
    assert "  words-repartition: 4 records\n" in inspected.stdout
    assert f"  {source}: [0] 30, [1] 30\n" in inspected.stdout

    # The original keeps processing.
    before = _by_key(kafka, out_a)
    _produce(kafka, source, SECOND, first=len(FIRST))
    assert run_bounded(topo_a, kafka, tmp_path / "a", until="end", static_membership=False) == 0
    after = _by_key(kafka, out_a)
    continued = {k: v[len(before.get(k, [])):] for k, v in after.items()
                 if len(v) > len(before.get(k, []))}

    # A second application from the savepoint: its own id, its own output topic.
    topo_b = wordcount.build(app_b, source, out_b)
    assert run_bounded(topo_b, kafka, tmp_path / "b", until="end", static_membership=False,
                       from_savepoint=sp_dir) == 0
    assert _by_key(kafka, out_b) == continued
    everything = totals + Counter(INFLIGHT) + Counter(w for ln in SECOND for w in ln.split())
    assert {k: v[-1] for k, v in continued.items()} == {
        k: everything[k] for k in continued}

    # Restarted with the same flag (as every container of a deployment is): nothing is
    # applied twice; new input is counted on from where it was.
    _produce(kafka, source, ["w0 late"], first=len(FIRST) + len(SECOND))
    assert run_bounded(topo_b, kafka, tmp_path / "b", until="end", static_membership=False,
                       from_savepoint=sp_dir) == 0
    final = _by_key(kafka, out_b)
    assert final == {**continued, "w0": [*continued["w0"], everything["w0"] + 1],
                     "late": [*continued["late"], everything["late"] + 1]}


def test_refusals_name_the_problem_and_drop_is_explicit(kafka: str, tmp_path: Path) -> None:
    u = unique("spr")
    source, sink = f"{u}-lines", f"{u}-counts"
    app = f"{u}-a"
    create_topics(kafka, (source, 2), (sink, 2))
    _produce(kafka, source, FIRST[:10])
    assert run_bounded(wordcount.build(app, source, sink), kafka, tmp_path / "a", until="end",
                       static_membership=False) == 0
    sp_dir = tmp_path / "sp"
    params = ["--param", f"app_id={app}", "--param", f"source={source}",
              "--param", f"sink={sink}"]
    made = cli(kafka, "savepoint", "create", "--app", app, "--topology",
                "topologies.wordcount:build", *params, "--to", str(sp_dir))
    assert made.returncode == 0, made.stderr
    again = cli(kafka, "savepoint", "create", "--app", app, "--topology",
                 "topologies.wordcount:build", *params, "--to", str(sp_dir))
    assert again.returncode == 2
    assert "already exists and is not empty" in again.stderr

    # A new version whose store is called differently: refused, naming the store and the way out.
    env = {"STREAMPROC_STATE_DIR": str(tmp_path / "b"), "STREAMPROC_COMMIT_INTERVAL_MS": "200",
           "STREAMPROC_UNTIL": "end", "STREAMPROC_STATIC_MEMBERSHIP": "false"}
    renamed_b = ["run", "tests.apps:renamed_wordcount", "--param", f"app_id={u}-b",
                 "--param", f"source={source}", "--param", f"sink={sink}",
                 "--from-savepoint", str(sp_dir)]
    renamed = cli(kafka, *renamed_b, **env)
    assert renamed.returncode == 2
    assert "store 'counts' (" in renamed.stderr and "savepoint_drop=counts" in renamed.stderr

    # The same app id again, with its state still there: refused (reset it first).
    same = cli(kafka, "run", "topologies.wordcount:build", *params, "--from-savepoint",
               str(sp_dir), **{**env, "STREAMPROC_STATE_DIR": str(tmp_path / "a")})
    assert same.returncode == 2
    assert "it already has state" in same.stderr and f"streamproc reset --app {app}" in \
        same.stderr

    # A savepoint whose store file is a symlink out of it (the same bytes, so only the place is
    # wrong): refused in one line by inspect and by a start, no traceback, nothing written.
    hostile = tmp_path / "hostile"
    shutil.copytree(sp_dir, hostile)
    secret = tmp_path / "secret.records"
    bad = hostile / "stores" / "counts" / "0.records"
    bad.rename(secret)
    bad.symlink_to(secret)
    refusal = (f"savepoint file {bad} resolves to {secret}, outside the savepoint {hostile}")
    inspected = cli(kafka, "savepoint", "inspect", str(hostile))
    assert (inspected.returncode, inspected.stdout, inspected.stderr) == (
        2, "", f"streamproc: savepoint inspect: {refusal}\n")
    started = cli(kafka, "run", "topologies.wordcount:build", "--param", f"app_id={u}-c",
                  "--param", f"source={source}", "--param", f"sink={sink}",
                  "--from-savepoint", str(hostile), **env)
    assert started.returncode == 2
    last = json.loads(started.stderr.splitlines()[-1])  # the run logs JSON lines
    assert (last["event"], last["error"]) == ("start.failed", refusal)
    assert "Traceback" not in started.stderr
    assert io.committed_offsets(kafka, f"{u}-c", source) == {0: -1001, 1: -1001}

    # Told to drop the store: the new version starts with an empty store of its own.
    dropped = cli(kafka, *renamed_b, "--savepoint-drop", "counts", **env)
    assert dropped.returncode == 0, dropped.stderr
    assert io.committed_offsets(kafka, f"{u}-b", source) == {0: 5, 1: 5}


def test_windows_and_watermarks_carry_over_to_a_new_application(
        kafka: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Event-time windows behind a repartition: the savepoint holds open windows and the
    downstream tasks' watermarks (keyed by the old application's repartition topic, renamed
    for the new one). The new application fires exactly the windows the original does."""
    u = unique("spw")
    source, out_a, out_b = f"{u}-events", f"{u}-win-a", f"{u}-win-b"
    app_a, app_b = f"{u}-a", f"{u}-b"
    create_topics(kafka, (source, 2), (out_a, 1), (out_b, 1))
    monkeypatch.setenv("T_IN", source)

    def events(start: int, n: int) -> list[tuple[bytes | None, bytes | None, int | None,
                                             int | None]]:
        # Ten events per 100 ms window, two groups, both source partitions in step.
        return [(f"k{i % 2}".encode(), orjson.dumps({"g": f"g{i % 3}", "ts": i * 10}), None,
                 i % 2) for i in range(start, start + n)]

    def windows(topic: str) -> dict[tuple[str, int], int]:
        out = {}
        for r in io.read_all(kafka, topic):
            v = orjson.loads(r.value or b"")
            out[((r.key or b"").decode(), v["start"])] = v["value"]
        return out

    def run(app: str, out: str, state: str, **settings: object) -> None:
        monkeypatch.setenv("T_APP", app)
        monkeypatch.setenv("T_OUT", out)

        with running(apps.windowed_counts(), kafka, tmp_path / state, static_membership=False,
                     **settings):
            assert io.wait_processed(kafka, app, [source, f"{app}-groups-repartition"], 60)

    io.produce_timed(kafka, source, events(0, 100))  # ts 0 .. 990
    run(app_a, out_a, "a")
    fired_before = windows(out_a)
    # The downstream watermark is the lower upstream one: 980 (partition 0's last event).
    # [800, 900) closed at 920; [900, 1000) needs 1020.
    groups = ("g0", "g1", "g2")
    assert set(fired_before) == {(g, s) for g in groups for s in range(0, 900, 100)}

    sp_dir = tmp_path / "sp"
    made = cli(kafka, "savepoint", "create", "--app", app_a, "--topology",
                "tests.apps:windowed_counts", "--to", str(sp_dir), "--wait-stopped", "5")
    assert made.returncode == 0, made.stderr
    m = Savepoint.open(sp_dir).manifest
    assert sorted(m.stores) == ["groups.source.time", "windows"]
    assert sorted(m.watermarks) == ["1_0", "1_1"]
    assert {t: w["watermark"] for t, w in m.watermarks.items()} == {"1_0": 980, "1_1": 980}

    io.produce_timed(kafka, source, events(100, 100))  # ts 1000 .. 1990
    run(app_a, out_a, "a")
    continued = {k: v for k, v in windows(out_a).items() if k not in fired_before}
    run(app_b, out_b, "b", from_savepoint=sp_dir)
    assert windows(out_b) == continued
    # Every window of 100 ms after the savepoint's fired ones that the watermark passed holds
    # exactly the events of its group in it.
    expected = Counter((f"g{i % 3}", i * 10 // 100 * 100) for i in range(200))
    assert continued == {k: expected[k] for k in continued}
    # Watermark 1980 now: [1800, 1900) closed, [1900, 2000) still open.
    assert set(continued) == {(g, s) for g in groups for s in range(900, 1900, 100)}


@pytest.mark.parametrize("crash_at", ["mid_seed", "after_seed"])
def test_an_instance_killed_while_seeding_leaves_all_or_nothing(
        kafka: str, tmp_path: Path, crash_at: str) -> None:
    """kill -9 with the seed transaction open (nothing of it is visible; the next start seeds
    again) or right after its commit (the next start finds it applied and does not seed
    twice): either way the counts go on exactly from the savepoint's."""
    u = unique("spk")
    source, sink_a, sink_b = f"{u}-lines", f"{u}-counts-a", f"{u}-counts-b"
    app_a, app_b = f"{u}-a", f"{u}-b"
    create_topics(kafka, (source, 2), (sink_a, 2), (sink_b, 2))
    first = FIRST[:20]
    _produce(kafka, source, first)
    assert run_bounded(wordcount.build(app_a, source, sink_a), kafka, tmp_path / "a",
                       until="end", static_membership=False) == 0
    sp_dir = tmp_path / "sp"
    from streamproc.savepoints.create import create

    create(kafka, compile_topology(wordcount.build(app_a, source, sink_a)), sp_dir,
           topology_name="topologies.wordcount:build")
    _produce(kafka, source, SECOND, first=len(first))

    env = {"STREAMPROC_STATE_DIR": str(tmp_path / "b"), "STREAMPROC_LOG_FORMAT": "json",
           "STREAMPROC_COMMIT_INTERVAL_MS": "200", "STREAMPROC_UNTIL": "end",
           "STREAMPROC_STATIC_MEMBERSHIP": "false", "STREAMPROC_FROM_SAVEPOINT": str(sp_dir)}
    cmd = ["run", "topologies.wordcount:build", "--param", f"app_id={app_b}",
           "--param", f"source={source}", "--param", f"sink={sink_b}"]
    killed = cli(kafka, *cmd, **env, STREAMPROC_TEST_CRASH_AT=crash_at)
    assert killed.returncode == -9, killed.stderr
    seeded = io.committed_offsets(kafka, app_b, source)
    assert seeded == ({0: -1001, 1: -1001} if crash_at == "mid_seed" else {0: 10, 1: 10})
    done = cli(kafka, *cmd, **env)
    assert done.returncode == 0, done.stderr
    assert ("savepoint.already_applied" in done.stderr) == (crash_at == "after_seed")

    saved = Counter(w for line in first for w in line.split())
    words = [w for line in SECOND for w in line.split()]
    expected = {w: list(range(saved[w] + 1, saved[w] + n + 1))
                for w, n in Counter(words).items()}
    assert _by_key(kafka, sink_b) == expected
