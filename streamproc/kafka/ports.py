"""Ports for the local brokers: free ones on 127.0.0.1, picked below the ephemeral range.

Shared by the single broker (kafka/broker.py), the cluster (kafka/cluster.py) and the tests
that need a port nothing listens on.
"""

from __future__ import annotations

import random
import socket
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


def free_port(exclude: int | None = None) -> int:
    low = _ephemeral_low()
    if low - _PORTS_FROM >= 1000:
        rng = random.SystemRandom()
        for _ in range(_PORT_PICKS):
            port = rng.randrange(_PORTS_FROM, low)
            if port != exclude and port_free(port):
                return port
    while True:  # no room below the ephemeral range, or all taken: any free port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != exclude:
            return int(port)
