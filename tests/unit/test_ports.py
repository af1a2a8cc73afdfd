"""Port picks for the local brokers: below the ephemeral range, and claimed across processes
so that two brokers starting at once never get the same port."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from streamproc.kafka import ports


@pytest.fixture(autouse=True)
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "claims"
    monkeypatch.setattr(ports, "_CLAIMS", d)
    return d


def test_a_pick_is_claimed_and_not_picked_again(claims: Path) -> None:
    first = ports.free_port()
    assert (claims / str(first)).read_text() == str(os.getpid())
    assert ports._ephemeral_low() > first >= 20000
    # Another process's fresh claim on a port: not ours to take.
    (claims / "25000").write_text("1")
    assert ports.claim(25000) is False
    # Our own claim renews (a node restarted on its ports).
    assert ports.claim(first) is True


def test_a_stale_claim_is_taken_over(claims: Path) -> None:
    claims.mkdir()
    path = claims / "25001"
    path.write_text("1")
    old = time.time() - ports._CLAIM_S - 1
    os.utime(path, (old, old))
    assert ports.claim(25001) is True
    assert path.read_text() == str(os.getpid())


def test_picks_skip_claimed_ports(monkeypatch: pytest.MonkeyPatch, claims: Path) -> None:
    claims.mkdir()
    low = ports._ephemeral_low()
    for port in range(20000, 20010):
        (claims / str(port)).write_text("1")
    picks = iter([20003, 20007, 20011])
    monkeypatch.setattr(ports, "_PORTS_FROM", 20000)
    monkeypatch.setattr(ports.random.SystemRandom, "randrange", lambda self, a, b: next(picks))
    monkeypatch.setattr(ports, "port_free", lambda port: True)
    assert low > 20011
    assert ports.free_port() == 20011


def test_without_a_usable_claims_dir_the_bind_probe_decides(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(ports, "_CLAIMS", blocker / "claims")  # a file in the way
    assert ports.claim(25002) is True
