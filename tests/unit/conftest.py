"""Unit-test setup: keep Hypothesis' local files out of the working tree; a fixture that
undoes what a test (or a CLI command it runs) did to the process's logging."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "streamproc-unit-tests-hypothesis")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Every unit test leaves logging as it found it: a test that runs a CLI command (which
    configures logging for the process) would otherwise change what later tests capture."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    config = structlog.get_config()
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)
