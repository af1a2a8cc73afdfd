"""Expected failures of commands against a real broker (a topic that does not exist) are one
error line and exit code 2, never a traceback. The failures that need no broker are in
tests/unit/test_cli_errors.py."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.harness import cli, unique

pytestmark = pytest.mark.kafka


def errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    lines = [orjson.loads(ln) for ln in stderr.splitlines()]  # every line is structlog's
    return [ln["error"] for ln in lines if ln["level"] == "error"]


def test_run_and_reset_with_a_missing_source_topic(kafka: str, tmp_path: Path) -> None:
    app, src, out = unique("missing"), unique("no-such-in"), unique("no-such-out")
    env = {"T_APP": app, "T_IN": src, "T_OUT": out, "STREAMPROC_STATE_DIR": str(tmp_path)}
    run = cli(kafka, "run", "tests.apps:wordcount", **env)
    assert run.returncode == 2
    assert errors(run.stderr) == [
        f"source topic(s) {src} of {app!r} do not exist: create them first (streamproc never "
        "creates user topics; on a cluster with ACLs a topic the principal may not Describe "
        "looks missing too: see streamproc acls)"]

    reset = cli(kafka, "reset", "--app", app, "--topology", "tests.apps:wordcount", **env)
    assert reset.returncode == 2
    assert errors(reset.stderr) == [f"cannot reset {app!r}: source topic(s) {src} do not exist"]
