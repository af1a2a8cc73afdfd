"""Network namespaces for scenario 3: each instance in one of its own, behind a fault proxy.

Inside a fresh namespace 127.0.0.1 is a loopback of its own, so the brokers (advertised as
127.0.0.1:<port>) are unreachable from there, except through what listens on those ports
inside it: the instance's :class:`~reliability.proxy.FaultProxy`. The proxy's listening
sockets are created by a short-lived thread that entered the namespace (``setns`` changes
only the calling thread's namespace, and a socket stays in the namespace it was created in);
every other socket of the harness, including the proxy's connections to the brokers, is made
in the host namespace. All traffic stays on 127.0.0.1.

An instance runs under ``ip netns exec NAME``, which enters the namespace and execs (no fork:
the pid the harness holds is the Python process's, so SIGKILL/SIGTERM/SIGSTOP reach it).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")  # where ``ip netns add`` mounts a namespace


class NetnsUnavailable(RuntimeError):
    """This machine does not let the harness create network namespaces."""


def _ip(*args: str) -> None:
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the network scenario needs `ip` (iproute2) to create network "
                               "namespaces; it is not on PATH")
    r = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise NetnsUnavailable(
            f"`ip {' '.join(args)}` failed ({r.stderr.strip() or r.returncode}): the network "
            "scenario needs network namespaces (root or CAP_SYS_ADMIN + CAP_NET_ADMIN)")


class Netns:
    """One named network namespace with its loopback up; :meth:`delete` removes it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = NETNS_DIR / name
        if self.path.exists():  # a leftover of a run killed hard: the name is ours
            _ip("netns", "del", name)
        _ip("netns", "add", name)
        try:
            _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    @property
    def prefix(self) -> list[str]:
        """The command an instance runs under to live in this namespace."""
        return ["ip", "netns", "exec", self.name]

    def listen(self, host: str, port: int, backlog: int = 64) -> socket.socket:
        """A listening TCP socket on ``host:port`` inside the namespace (made by a thread
        that enters it, so the caller's thread stays in the host namespace)."""
        result: list[socket.socket | BaseException] = []

        def inside() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise NetnsUnavailable(f"setns into {self.name}: {os.strerror(err)}")
                finally:
                    os.close(fd)
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(backlog)
                s.setblocking(False)
                result.append(s)
            except BaseException as exc:  # re-raised in the caller's thread
                result.append(exc)

        # The thread ends in the namespace and dies with it: nothing else runs there.
        t = threading.Thread(target=inside, name=f"listen-{self.name}", daemon=True)
        t.start()
        t.join(30)
        if not result:
            raise NetnsUnavailable(f"listening in {self.name} did not finish")
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def delete(self) -> None:
        """Remove the namespace (processes still in it keep it alive until they exit)."""
        if self.path.exists():
            subprocess.run(["ip", "netns", "del", self.name], check=False,
                           capture_output=True, timeout=30)


def broker_ports(bootstrap: str) -> list[int]:
    """The ports of a bootstrap list of 127.0.0.1 brokers (our local cluster advertises each
    node at the address it is listed under, so these are every port a client connects to)."""
    ports = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            raise RuntimeError(f"the network scenario proxies only 127.0.0.1 brokers, not {item}")
        ports.append(int(port))
    return ports
