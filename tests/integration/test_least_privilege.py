"""The application on a secured broker (SASL_SSL with SCRAM-SHA-512, mTLS, StandardAuthorizer)
as a principal holding exactly the ACLs `streamproc acls` lists (#16 items 1 and 3): it runs
exactly as on PLAINTEXT, its tools (reset, dlq replay, savepoint create and apply) too, and
without any one of those ACLs it stops with one message naming the missing permission."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproc import Topology
from streamproc.config import load_settings
from streamproc.graph.compile import compile_topology
from streamproc.kafka import broker, io
from streamproc.kafka.acls import Acl, required_acls
from streamproc.kafka.admin import TopicAdmin, TopicSpec
from streamproc.kafka.broker_security import ADMIN_USER, APP_USER, SecuredBroker, grant
from streamproc.runtime.app import Application
from streamproc.service import application
from tests import apps
from tests.harness import ROOT, TEST_SETTINGS, unique
from topologies.wordcount import build

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    data_dir = tmp_path_factory.mktemp("secured-kafka")
    b = broker.start(data_dir=data_dir, security="sasl_ssl")
    assert b.security is not None
    try:
        yield b.security
    finally:
        broker.stop(data_dir=data_dir)


def app_settings(secured: SecuredBroker, mode: str = "sasl") -> dict[str, Any]:
    s = secured.client_settings(APP_USER, mode)  # type: ignore[arg-type]
    s.pop("brokers")
    return s


def admin_conf(secured: SecuredBroker) -> dict[str, Any]:
    return secured.client_config(ADMIN_USER, "sasl")


def grant_all(secured: SecuredBroker, acls: list[Acl], principal: str = f"User:{APP_USER}"
              ) -> None:
    for a in acls:
        grant(secured, principal, a.resource.upper().replace("TRANSACTIONALID",
                                                             "TRANSACTIONAL_ID"),
              a.name, a.pattern, _operation(a.operation))


def _operation(op: str) -> str:
    return {"DescribeConfigs": "DESCRIBE_CONFIGS", "IdempotentWrite": "IDEMPOTENT_WRITE"}.get(
        op, op.upper())


def topics(secured: SecuredBroker, *names: str) -> None:
    TopicAdmin(secured.sasl_bootstrap, client_config=admin_conf(secured)).create(
        [TopicSpec(n, 2) for n in names])


def lines_in(secured: SecuredBroker, topic: str, lines: list[str]) -> None:
    io.produce(admin_conf(secured), topic, [(None, ln.encode()) for ln in lines])


def counts(secured: SecuredBroker, topic: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in io.read_all(admin_conf(secured), topic):
        out[(r.key or b"").decode()] = orjson.loads(r.value or b"")  # the running count
    return out


def run_app(topology: Topology, secured: SecuredBroker, state_dir: Path, *, mode: str = "sasl",
            until: str | None = "end", **extra: Any
            ) -> tuple[int | None, str, Application]:
    """A bounded run (until=end: it processes what is there, commits and exits 0), or one that
    fails; returns (exit code or None if it did not stop within 90 s, why it failed, the
    app)."""
    settings = load_settings(**{**TEST_SETTINGS, "state_dir": state_dir,
                                **app_settings(secured, mode), "until": until, **extra})
    app = application(topology, settings, bootstrap=secured.sasl_bootstrap if mode == "sasl"
                      else secured.mtls_bootstrap)
    result: list[int] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(app.run())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(90)
    if t.is_alive():
        app.stop()
        t.join(30)
        return None, "", app
    if errors:  # a start that raised: the reason is the exception
        return 2, str(errors[0]), app
    return result[0], str(app.failure or ""), app


LINES = ["a b a", "c b a", "d"]
EXPECTED = {"a": 3, "b": 2, "c": 1, "d": 1}


def test_wordcount_restore_and_tools_as_a_least_privileged_principal(
        secured: SecuredBroker, tmp_path: Path) -> None:
    app_id, src, sink = unique("lp"), unique("lp-in"), unique("lp-out")
    topics(secured, src, sink)
    topology = build(app_id, src, sink)
    grant_all(secured, required_acls(compile_topology(topology), tools=True))
    lines_in(secured, src, LINES)
    code, why, _ = run_app(topology, secured, tmp_path / "a")
    assert code == 0, why
    assert counts(secured, sink) == EXPECTED
    # Restore on another "machine" (empty state dir), over mTLS this time: counts go on.
    lines_in(secured, src, ["a e"])
    code, why, _ = run_app(topology, secured, tmp_path / "b", mode="mtls")
    assert code == 0, why
    # "a" goes on from 3: the state was rebuilt from the changelog (the dir was empty).
    assert counts(secured, sink) == {**EXPECTED, "a": 4, "e": 1}

    env = {**os.environ, "PYTHONPATH": str(ROOT), "STREAMPROC_BROKERS": secured.sasl_bootstrap,
           **{f"STREAMPROC_{k.upper()}": v for k, v in app_settings(secured).items()}}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streamproc", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    # Savepoint of the stopped app, over SASL_SSL, as the same principal.
    sp = cli("savepoint", "create", "--app", app_id, "--topology", "topologies.wordcount:build",
             "--param", f"app_id={app_id}", "--param", f"source={src}", "--param",
             f"sink={sink}", "--to", str(tmp_path / "sp"), "--wait-stopped", "30")
    assert sp.returncode == 0, sp.stderr[-2000:]
    assert (tmp_path / "sp" / "manifest.json").is_file()
    # Reset to earliest and reprocess: the counts start again from 1.
    rst = cli("reset", "--app", app_id, "--topology", "topologies.wordcount:build", "--param",
              f"app_id={app_id}", "--param", f"source={src}", "--param", f"sink={sink}",
              "--state-dir", str(tmp_path / "b"))
    assert rst.returncode == 0, rst.stderr[-2000:]
    # dlq replay of an empty dead-letter topic: connects, finds nothing, commits nothing.
    rep = cli("dlq", "replay", "--app", app_id)
    assert rep.returncode == 0, rep.stderr[-2000:]


# Which ACL is missing -> what the one error line must say.
MISSING = {
    # Without Read (which implies Describe) the source is invisible to the principal.
    ("Topic", "in", "Read"): "may not Describe looks missing",
    ("Topic", "out", "Write"): "may not Describe looks missing",
    # Describe alone on the sink: visible, but every transaction that writes it is refused.
    ("Topic", "out", "Write", "Describe"): "not authorized while producing",
    ("Topic", "out", "DescribeConfigs"): "not authorized while describing topic",
    ("Topic", "{app}-", "All"): "not authorized while creating topic",
    ("Group", "{app}", "Read"): "not authorized",
    ("TransactionalId", "{app}-", "Write"): "not authorized while initialising transactions",
}


@pytest.mark.parametrize("missing", sorted(MISSING), ids=lambda m: "-".join(m))
def test_without_any_one_acl_the_app_stops_naming_it(secured: SecuredBroker, tmp_path: Path,
                                                     missing: tuple[str, ...]) -> None:
    app_id, src, sink = unique("np"), unique("np-in"), unique("np-out")
    topics(secured, src, sink)
    topology = build(app_id, src, sink)
    names = {"in": src, "out": sink, "{app}-": f"{app_id}-", "{app}": app_id}
    gone = (missing[0], names[missing[1]], missing[2])
    acls = [a for a in required_acls(compile_topology(topology))
            if (a.resource, a.name, a.operation) != gone]
    assert len(acls) == len(required_acls(compile_topology(topology))) - 1
    if len(missing) == 4:  # one operation instead of the missing one
        acls.append(Acl(missing[0], names[missing[1]], "LITERAL", missing[3]))
    grant_all(secured, acls)
    lines_in(secured, src, LINES)
    code, why, _ = run_app(topology, secured, tmp_path, until=None)
    assert code in (1, 2), "the app must stop by itself, not retry"
    assert MISSING[missing] in why, why
    # Refused before its first commit: no output at all.
    assert counts(secured, sink) == {}


def test_reset_without_delete_on_the_group_is_refused_naming_it(secured: SecuredBroker,
                                                                tmp_path: Path) -> None:
    app_id, src, sink = unique("rd"), unique("rd-in"), unique("rd-out")
    topics(secured, src, sink)
    topology = build(app_id, src, sink)
    grant_all(secured, [a for a in required_acls(compile_topology(topology), tools=True)
                        if a.operation != "Delete"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STREAMPROC_BROKERS": secured.sasl_bootstrap,
           **{f"STREAMPROC_{k.upper()}": v for k, v in app_settings(secured).items()}}
    lines_in(secured, src, LINES)
    code, why, _ = run_app(topology, secured, tmp_path)
    assert code == 0, why
    rst = subprocess.run([sys.executable, "-m", "streamproc", "reset", "--app", app_id,
                          "--topology", "topologies.wordcount:build", "--param",
                          f"app_id={app_id}", "--param", f"source={src}", "--param",
                          f"sink={sink}", "--state-dir", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert rst.returncode != 0 and "Traceback" not in rst.stderr
    assert "authorization failed" in rst.stderr.lower(), rst.stderr[-1000:]


def test_windows_dead_letters_a_savepoint_and_a_replay_over_mtls_and_sasl(
        secured: SecuredBroker, tmp_path: Path) -> None:
    import io as text_io

    from streamproc.connection import kafka_connection
    from streamproc.ops import dlq
    from streamproc.savepoints.create import create

    app_id, src, sink = unique("sw"), unique("sw-in"), unique("sw-out")
    topics(secured, src, sink)
    base = 1_764_547_200_000  # 2025-12-01
    events = [orjson.dumps({"g": g, "ts": base + t}) for g, t in
              (("a", 100), ("b", 200), ("a", 900), ("a", 1100), ("b", 1500))]
    io.produce(admin_conf(secured), src, [(b"k", e) for e in events[:2]] + [(b"k", b"{bad")]
               + [(b"k", e) for e in events[2:]])
    compiled = compile_topology(apps.regrouped_counts(app_id, src, sink))
    grant_all(secured, required_acls(compiled, tools=True))
    code, why, _ = run_app(apps.regrouped_counts(app_id, src, sink), secured, tmp_path / "a",
                           mode="mtls")
    assert code == 0, why
    got = sorted((r.key, orjson.loads(r.value or b"")) for r in
                 io.read_all(admin_conf(secured), sink))
    assert got == [(b"a", [base, 2]), (b"a", [base + 1000, 1]), (b"b", [base, 1]),
                   (b"b", [base + 1000, 1])]
    (letter,) = io.read_all(admin_conf(secured), f"{app_id}-dlq")
    assert letter.value == b"{bad" and letter.headers["streamproc.error.type"] == b"CodecError"

    # A savepoint of the stopped application, read as the application's principal over SASL.
    conn = kafka_connection(load_settings(**app_settings(secured)), secured.sasl_bootstrap)
    sp = create(secured.sasl_bootstrap, compiled, tmp_path / "sp", topology_name="windowed",
                client_config=conn)
    assert "per-second" in sp.stores  # the windows' state, read from its changelog
    # A second application started from it carries on where the first stopped: nothing new.
    app_b, sink_b = unique("swb"), unique("swb-out")
    topics(secured, sink_b)
    grant_all(secured, required_acls(compile_topology(
        apps.regrouped_counts(app_b, src, sink_b))))
    code, why, _ = run_app(apps.regrouped_counts(app_b, src, sink_b), secured, tmp_path / "b",
                           from_savepoint=tmp_path / "sp")
    assert code == 0, why
    assert io.read_all(admin_conf(secured), sink_b) == []
    assert io.committed_offsets(admin_conf(secured), app_b, src) == \
        io.committed_offsets(admin_conf(secured), app_id, src)
    # The dead letter goes back to its source partition, once.
    summary = dlq.replay(conn, app_id, out=text_io.StringIO())
    assert summary.replayed == 1
    assert [r.value for r in io.read_all(admin_conf(secured), src)].count(b"{bad") == 2
