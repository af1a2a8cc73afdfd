"""Every expected failure of a command is one error line on stderr (structlog) and a non-zero
exit code, never a Python traceback: bad flags, bad settings, a topology module that does not
import or build, an unreachable broker, a missing Java. ``python3 -m streamproc`` runs as a
user runs it; nothing here needs a broker (127.0.0.1:1 refuses connections)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.harness import ROOT, cli

NOWHERE = "127.0.0.1:1"
NAME_RULE = ("letters, digits, '.', '_' and '-' only, starting with a letter or digit, "
             "at most 200 characters")


def one_error(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The single line the command printed to stderr, parsed; anything more fails."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = orjson.loads(lines[0])
    assert line["level"] == "error", line
    return {k: v for k, v in line.items() if k not in ("level", "timestamp")}


@pytest.fixture
def modules(tmp_path: Path) -> dict[str, str]:
    """Topology modules on PYTHONPATH: one per way of not importing or not building."""
    (tmp_path / "syntax_bad.py").write_text('from streamproc import Topology\n'
                                            'topology = Topology("x"\n')
    (tmp_path / "raises_bad.py").write_text('import json\nraise RuntimeError("no config")\n')
    (tmp_path / "store_bad.py").write_text(
        'from streamproc import Topology\nt = Topology("app")\n'
        't.source("in").group_by_key().count(store="/abs/../../x").to("out")\ntopology = t\n')
    (tmp_path / "fine.py").write_text('from streamproc import Topology\n'
                                      'topology = Topology("app")\n'
                                      'topology.source("in").to("out")\n')
    return {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "dir": str(tmp_path)}


@pytest.mark.parametrize(("args", "error"), [
    (["run", "--nope", "x"], {"event": "cli.invalid_arguments", "command": "streamproc",
                              "error": "unrecognized arguments: --nope"}),
    (["dlq", "replay"], {"event": "cli.invalid_arguments", "command": "streamproc dlq replay",
                         "error": "the following arguments are required: --app"}),
    (["kafka", "start", "--port", "abc"], {
        "event": "cli.invalid_arguments", "command": "streamproc kafka",
        "error": "argument --port: invalid int value: 'abc'"}),
    (["demo", "--lines", "many"], {"event": "cli.invalid_arguments", "command": "streamproc demo",
                                   "error": "argument --lines: invalid int value: 'many'"}),
    ([], {"event": "cli.invalid_arguments", "command": "streamproc",
          "error": "the following arguments are required: command"}),
])
def test_a_bad_flag_is_one_line(args: list[str], error: dict[str, object]) -> None:
    proc = cli(NOWHERE, *args)
    assert proc.returncode == 2
    assert one_error(proc) == error


def test_a_bad_setting_is_one_line() -> None:
    proc = cli(NOWHERE, "run", "topologies.wordcount", "--commit-interval-ms", "abc")
    assert proc.returncode == 2
    setting = "commit_interval_ms (env STREAMPROC_COMMIT_INTERVAL_MS, flag --commit-interval-ms)"
    assert one_error(proc) == {
        "event": "config.invalid", "setting": setting,
        "error": f"invalid setting {setting!r}: Input should be a valid integer, unable to parse "
                 "string as an integer"}


@pytest.mark.parametrize(("args", "setting", "problem"), [
    (["dlq", "inspect", "--app", "a/b"], "--app",
     f"application id 'a/b' is not a valid name ({NAME_RULE})"),
    (["dlq", "replay", "--app", "x", "--chunk-size", "0"], "--chunk-size",
     "must be 1..100000, got 0"),
    (["dlq", "replay", "--app", "x", "--stall-timeout", "nan"], "--stall-timeout",
     "must be more than 0 seconds, not nan"),
    (["dlq", "inspect", "--app", "x", "--limit", "0"], "--limit", "must be at least 1, not 0"),
    (["run", "topologies.wordcount", "--instance-id", "../x"],
     "instance_id (env STREAMPROC_INSTANCE_ID, flag --instance-id)",
     f"Value error, '../x' is not a valid name ({NAME_RULE})"),
])
def test_a_bad_option_value_is_one_line(args: list[str], setting: str, problem: str) -> None:
    proc = cli(NOWHERE, *args)
    assert proc.returncode == 2
    assert one_error(proc) == {"event": "config.invalid", "setting": setting,
                               "error": f"invalid setting {setting!r}: {problem}"}


@pytest.mark.parametrize(("command", "module", "error"), [
    ("run", "syntax_bad", "cannot import topology syntax_bad: '(' was never closed "
                          "(at {dir}/syntax_bad.py:2)"),
    ("run", "raises_bad", "cannot load topology raises_bad: RuntimeError: no config "
                          "(at {dir}/raises_bad.py:2)"),
    ("run", "no_such_module_z", "cannot import topology module 'no_such_module_z': No module "
                                "named 'no_such_module_z'"),
    ("run", "store_bad", f"store '/abs/../../x' is not a valid name ({NAME_RULE}) "
                         "(at {dir}/store_bad.py:3)"),
    ("reset", "store_bad", f"store '/abs/../../x' is not a valid name ({NAME_RULE}) "
                           "(at {dir}/store_bad.py:3)"),
])
def test_a_topology_that_does_not_import_or_build_is_one_line_naming_the_users_line(
        modules: dict[str, str], command: str, module: str, error: str) -> None:
    args = [module] if command == "run" else ["--app", "app", "--topology", module]
    proc = cli(NOWHERE, command, *args, PYTHONPATH=modules["PYTHONPATH"])
    assert proc.returncode == 2
    assert one_error(proc) == {"event": "start.failed", "command": command,
                               "error": error.format(dir=modules["dir"])}


@pytest.mark.parametrize("action", ["inspect", "replay"])
def test_dlq_with_an_unreachable_broker_is_one_line(action: str) -> None:
    proc = cli(NOWHERE, "dlq", action, "--app", "x", "--stall-timeout", "2")
    assert proc.returncode == 2
    assert one_error(proc) == {
        "event": "start.failed", "command": "dlq",
        "error": "cannot read the metadata of 'x-dlq': KafkaError{code=_TRANSPORT,val=-195,"
                 'str="Failed to get metadata: Local: Broker transport failure"} (is Kafka '
                 f"reachable at {NOWHERE}? check STREAMPROC_BROKERS)"}


def test_reset_with_an_unreachable_broker_is_one_line(modules: dict[str, str]) -> None:
    proc = cli(NOWHERE, "reset", "--app", "app", "--topology", "fine", "--timeout", "2",
               PYTHONPATH=modules["PYTHONPATH"])
    assert proc.returncode == 2
    assert one_error(proc) == {
        "event": "start.failed", "command": "reset",
        "error": "reset: Kafka did not answer within 2 s (is it reachable? check "
                 "STREAMPROC_BROKERS, or give --timeout)"}


def test_kafka_start_without_java_is_one_line(tmp_path: Path) -> None:
    proc = cli(NOWHERE, "kafka", "start", "--data-dir", str(tmp_path),
               PATH=str(tmp_path / "no-bin"), JAVA_HOME="")
    assert proc.returncode == 2
    error = one_error(proc)
    assert error["event"] == "start.failed" and str(error["error"]).startswith(
        "Java not found (checked $JAVA_HOME/bin/java and PATH)")


def test_kafka_start_on_an_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    proc = cli(NOWHERE, "kafka", "start", "--data-dir", str(blocked / "kafka"))
    assert proc.returncode == 1
    assert one_error(proc) == {
        "event": "command.failed", "command": "kafka",
        "error": f"NotADirectoryError: [Errno 20] Not a directory: '{blocked / 'kafka'}'"}


def test_kafka_status_of_no_broker_is_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = cli(NOWHERE, "kafka", "status", "--data-dir", str(tmp_path))
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "not running\n", "")


def test_a_bug_still_shows_its_traceback() -> None:
    """Only expected failures are one line: an engine bug must stay debuggable."""
    code = ("import sys\nfrom streamproc import cli\n"
            "def boom(args): raise ZeroDivisionError('bug')\n"
            "cli.cmd_kafka = boom\n"
            "sys.exit(cli.main(['kafka', 'status']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError: bug" in proc.stderr
