"""Session fixtures: one real Kafka broker (KRaft) for the whole run, started by the project's
own tooling unless STREAMPROC_BROKERS points at an existing cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from streamproc.kafka import broker


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("STREAMPROC_BROKERS")
    if existing:
        yield existing
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    b = broker.start(data_dir=data_dir)
    try:
        yield b.bootstrap
    finally:
        broker.stop(data_dir=data_dir)
