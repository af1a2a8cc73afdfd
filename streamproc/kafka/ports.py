"""Ports for the local brokers: free ones on 127.0.0.1, picked below the ephemeral range.

Shared by the single broker (kafka/broker.py), the cluster (kafka/cluster.py) and the tests
that need a port nothing listens on.
"""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like the JVM's server sockets, so TIME_WAIT leftovers of
        # the previous broker run don't count as "busy".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Where broker ports are picked: below the kernel's ephemeral range, from which it hands out
# the local ports of outgoing connections. A port picked in that range (bind to port 0) could be
# taken by any client's connection while the broker restarts, and a restart reuses its ports.
_PORTS_FROM = 20000
_PORT_PICKS = 200


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; elsewhere the fallback below still applies


# Claims across processes: a port is free when nothing listens on it, but a broker binds it
# only seconds later (tens of seconds when a parallel suite starts twenty JVMs at once), and
# another process picking meanwhile would see it free too (CI: a cluster node died on "Unable
# to start acceptor"). Each pick leaves a file here; a port claimed less than _CLAIM_S ago is
# not picked again. A fixed path, not the temp dir: tests run brokers with their own TMPDIR.
_CLAIMS = Path("/tmp/streamproc-port-claims")  # noqa: S108 (only steers which port we pick)
_CLAIM_S = 900.0


def claim(port: int) -> bool:
    """Claim ``port`` for this process's broker (or renew the claim, for a restart on the same
    port): False when another process claimed it less than a quarter of an hour ago. Without a
    usable claims dir the bind probe alone decides (True)."""
    path = _CLAIMS / str(port)
    try:
        _CLAIMS.mkdir(mode=0o1777, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        try:
            owner = int(path.read_text() or 0)
            fresh = time.time() - path.stat().st_mtime < _CLAIM_S
        except (OSError, ValueError):
            return False  # being written or removed right now: someone else's
        if fresh and owner != os.getpid():
            return False
        path.write_text(str(os.getpid()))  # stale, or our own: renew
        return True
    except OSError:
        return True
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def free_port(exclude: int | None = None) -> int:
    low = _ephemeral_low()
    if low - _PORTS_FROM >= 1000:
        rng = random.SystemRandom()
        for _ in range(_PORT_PICKS):
            port = rng.randrange(_PORTS_FROM, low)
            if port != exclude and port_free(port) and claim(port):
                return port
    while True:  # no room below the ephemeral range, or all taken: any free port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != exclude:
            return int(port)
