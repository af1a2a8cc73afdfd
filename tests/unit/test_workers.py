"""The ``--workers`` supervisor (streamproc/workers.py) on real child processes: slots,
restarts with backoff, the crash-loop limit, errors a restart cannot fix, signal forwarding,
SIGKILL past the shutdown timeout, and workers that outlive a killed supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from streamproc.cli import _settings_from, build_parser
from streamproc.config import load_settings
from streamproc.workers import RestartPolicy, Slot, Supervisor, plan_slots, with_port

ROOT = Path(__file__).resolve().parents[2]
FAST = RestartPolicy(backoff_first_s=0.05, backoff_max_s=0.2, healthy_after_s=60.0,
                     max_failures=3, window_s=60.0, shutdown_margin_s=0.5)


def _slots(n: int, tmp_path: Path) -> list[Slot]:
    return [Slot(i, tmp_path / f"worker-{i}", None, None, None) for i in range(n)]


def _script(tmp_path: Path, body: str) -> list[str]:
    """A worker command: python running ``body``; the slot's flags land in sys.argv."""
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_slots_keep_state_ids_and_ports_apart() -> None:
    s = load_settings(workers=3, state_dir="/data", instance_id="pod-0", http_port=8080,
                      http_advertised_url="http://pod-0.app.svc:8080")
    slots = plan_slots(s)
    assert [(sl.index, str(sl.state_dir), sl.instance_id, sl.http_port, sl.advertised_url)
            for sl in slots] == [
        (0, "/data/worker-0", "pod-0-w0", 8081, "http://pod-0.app.svc:8081"),
        (1, "/data/worker-1", "pod-0-w1", 8082, "http://pod-0.app.svc:8082"),
        (2, "/data/worker-2", "pod-0-w2", 8083, "http://pod-0.app.svc:8083")]


def test_slots_without_http_or_instance_id() -> None:
    slots = plan_slots(load_settings(workers=2, state_dir="/s"))
    assert [(sl.instance_id, sl.http_port, sl.advertised_url) for sl in slots] == \
        [(None, None, None), (None, None, None)]
    # Port 0: each worker gets a free port picked by the supervisor, known to the front.
    picked = iter([40001, 40002])
    slots = plan_slots(load_settings(workers=2, http_port=0), lambda host: next(picked))
    assert [sl.http_port for sl in slots] == [40001, 40002]


def test_with_port_keeps_scheme_and_host() -> None:
    assert with_port("https://[::1]:9000/", 9003) == "https://[::1]:9003"
    assert with_port("http://example.test", 81) == "http://example.test:81"


def test_a_slots_flags_make_the_worker_settings() -> None:
    parent = ["run", "topologies.wordcount", "--workers", "4", "--state-dir", "/x",
              "--http-port", "9000", "--instance-id", "a"]
    slot = plan_slots(load_settings(workers=4, state_dir="/x", http_port=9000,
                                    instance_id="a"))[2]
    args = build_parser().parse_args([*parent, *slot.flags()])
    s = _settings_from(args)
    assert (s.workers, str(s.state_dir), s.instance_id, s.http_port) == \
        (1, "/x/worker-2", "a-w2", 9003)


def test_too_few_ports_for_the_workers_is_a_config_error() -> None:
    from streamproc.errors import ConfigError

    with pytest.raises(ConfigError, match="leaves no ports for 4 workers"):
        load_settings(workers=4, http_port=65533)


def test_workers_that_finish_make_a_clean_exit(tmp_path: Path) -> None:
    cmd = _script(tmp_path, "import sys; sys.exit(0)")
    sup = Supervisor(load_settings(workers=2), cmd, slots=_slots(2, tmp_path), policy=FAST)
    assert sup.run() == 0
    assert [(w.state, w.restarts, w.last_exit) for w in sup.workers] == \
        [("done", 0, 0), ("done", 0, 0)]


def test_a_dying_worker_is_restarted_with_its_slot_flags(tmp_path: Path) -> None:
    # Fails twice, then finishes: three starts, the same flags each time.
    cmd = _script(tmp_path, """
        import sys
        from pathlib import Path
        runs = Path(sys.argv[sys.argv.index("--state-dir") + 1] + ".runs")
        runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
        sys.exit(0 if len(runs.read_text()) == 3 else 9)
    """)
    sup = Supervisor(load_settings(workers=1), cmd, slots=_slots(1, tmp_path), policy=FAST)
    assert sup.run() == 0
    w = sup.workers[0]
    assert (w.state, w.restarts, w.last_exit) == ("done", 2, 0)
    assert (tmp_path / "worker-0.runs").read_text() == "xxx"


def test_a_crash_loop_fails_the_application(tmp_path: Path) -> None:
    cmd = _script(tmp_path, "import sys; sys.exit(9)")
    sup = Supervisor(load_settings(workers=1), cmd, slots=_slots(1, tmp_path), policy=FAST)
    started = time.monotonic()
    assert sup.run() == 1
    w = sup.workers[0]
    # max_failures=3: the fourth failure within the window ends it (four starts).
    assert (w.state, w.restarts, w.last_exit) == ("failed", 3, 9)
    assert time.monotonic() - started < 10


def test_an_error_a_restart_cannot_fix_stops_every_worker(tmp_path: Path) -> None:
    cmd = _script(tmp_path, """
        import signal, sys, time
        from pathlib import Path
        me = sys.argv[sys.argv.index("--state-dir") + 1]
        if me.endswith("worker-0"):
            sys.exit(2)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        Path(me + ".up").write_text("")
        time.sleep(60)
    """)
    sup = Supervisor(load_settings(workers=2), cmd, slots=_slots(2, tmp_path), policy=FAST)
    started = time.monotonic()
    assert sup.run() == 2
    assert time.monotonic() - started < 10
    assert [(w.state, w.restarts, w.last_exit) for w in sup.workers] == \
        [("failed", 0, 2), ("done", 0, 0)]


def test_stop_forwards_sigterm_and_kills_a_worker_that_ignores_it(tmp_path: Path) -> None:
    cmd = _script(tmp_path, """
        import signal, sys, time
        from pathlib import Path
        me = sys.argv[sys.argv.index("--state-dir") + 1]
        if me.endswith("worker-0"):
            def done(*_):
                Path(me + ".checkpointed").write_text("")
                sys.exit(0)
            signal.signal(signal.SIGTERM, done)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path(me + ".up").write_text("")
        while True:
            time.sleep(0.05)
    """)
    settings = load_settings(workers=2, shutdown_timeout_ms=1000)
    sup = Supervisor(settings, cmd, slots=_slots(2, tmp_path), policy=FAST)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(sup.run()))
    t.start()
    deadline = time.monotonic() + 20
    while not all((tmp_path / f"worker-{i}.up").exists() for i in range(2)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sup.stop()
    t.join(20)
    assert result == [1]  # worker 1 had to be killed
    assert (tmp_path / "worker-0.checkpointed").exists()
    assert [(w.state, w.last_exit) for w in sup.workers] == \
        [("done", 0), ("failed", -signal.SIGKILL)]


def test_workers_get_sigterm_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    # A real supervisor process, its worker a script that adopts it like `streamproc run`.
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent("""
        import os, signal, sys, time
        from pathlib import Path
        from streamproc.workers import adopt_supervisor
        me = Path(sys.argv[sys.argv.index("--state-dir") + 1])
        signal.signal(signal.SIGTERM, lambda *_: (me.with_suffix(".term").write_text(""),
                                                  sys.exit(0)))
        adopt_supervisor()
        me.with_suffix(".pid").write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)
    """))
    sup = tmp_path / "sup.py"
    sup.write_text(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from streamproc.config import load_settings
        from streamproc.workers import Slot, Supervisor
        slot = Slot(0, Path({str(tmp_path / 'w0')!r}), None, None, None)
        Supervisor(load_settings(workers=1), [sys.executable, {str(worker)!r}],
                   slots=[slot]).run()
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(sup)], env=env)
    try:
        pid_file = tmp_path / "w0.pid"
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        worker_pid = int(pid_file.read_text())
        proc.kill()
        proc.wait(10)
        while not (tmp_path / "w0.term").exists():
            assert time.monotonic() < deadline, "the orphaned worker got no SIGTERM"
            time.sleep(0.05)
        while _alive(worker_pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"
