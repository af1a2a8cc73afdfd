"""A fault-injecting TCP forwarder between one instance and the brokers.

It listens on each broker port inside the instance's network namespace and forwards every
connection to the same port on 127.0.0.1 of the host namespace. One thread serves all of an
instance's connections (non-blocking sockets, ``poll``), so faults apply to all of them at
once and the fault controls are commands that thread runs between two polls:

- ``delay(s)``: every byte read from now on is held ``s`` seconds before it is written on,
  both ways (a slow network: round trips that outlast the session and transaction timeouts);
- ``drop()``: every open connection reset (RST both ways) at once;
- ``drop_at_commit()``: armed until the instance's next ``EndTxn`` request goes through, and
  then its *response* (the commit's outcome) is swallowed and every connection reset: the
  commit happened on the broker, the instance cannot know it. The proxy reads the Kafka
  request and response frame headers to see it: cheaper and more precise than timing a
  random drop against a checkpoint;
- ``partition()``: a blackhole: nothing accepted, read or written until ``heal()`` (TCP keeps
  what was sent in its buffers, so held requests arrive late after the heal, as after a real
  partition that TCP rode out);
- ``heal()``: back to a plain forwarder.
"""

from __future__ import annotations

import contextlib
import errno
import math
import queue
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reliability.netns import Netns

END_TXN = 26  # Kafka API key of EndTxn (commit or abort a transaction)
CHUNK = 65536
HELD_MAX = 8 << 20  # bytes held per direction before the proxy stops reading (backpressure)


class _Frames:
    """Frame starts in one direction of a Kafka connection: every frame is a 4-byte size and
    a header (request: api key, version, correlation id; response: correlation id). Bodies
    are skipped without being looked at."""

    def __init__(self, head: int) -> None:
        self._head_len = head
        self._left = 0  # body bytes of the current frame still to come
        self._head = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """(offset in ``data`` where a frame starts, its header) for each header completed in
        ``data``; the offset is 0 for a header begun in an earlier chunk."""
        out = []
        i, n = 0, len(data)
        while i < n:
            if self._left:
                step = min(self._left, n - i)
                self._left -= step
                i += step
                continue
            start = i if not self._head else 0
            take = min(self._head_len - len(self._head), n - i)
            self._head += data[i:i + take]
            i += take
            if len(self._head) == self._head_len:
                size = struct.unpack_from(">i", self._head)[0]
                out.append((start, self._head))
                self._left = max(0, size + 4 - self._head_len)
                self._head = b""
        return out


@dataclass
class _Pipe:
    """One direction of a connection: what was read from ``src``, due to be written to
    ``dst``."""

    src: socket.socket
    dst: socket.socket
    frames: _Frames
    held: deque[tuple[float, bytes]] = field(default_factory=deque)
    held_bytes: int = 0
    eof: bool = False  # src closed its side: pass the FIN on once ``held`` is written
    shut: bool = False


class _Conn:
    def __init__(self, down: socket.socket, up: socket.socket) -> None:
        self.up = _Pipe(down, up, _Frames(12))  # client -> broker: requests
        self.down = _Pipe(up, down, _Frames(8))  # broker -> client: responses
        self.end_txn: set[int] = set()  # correlation ids of EndTxn requests sent on
        self.closed = False

    def pipes(self) -> tuple[_Pipe, _Pipe]:
        return self.up, self.down


def _reset(s: socket.socket) -> None:
    """Close with an RST, not a FIN: the peer sees ECONNRESET, as after a network fault."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class FaultProxy:
    """The proxy of one instance (see the module doc); :meth:`figures` counts its work."""

    def __init__(self, ns: Netns, ports: list[int]) -> None:
        self.ns, self.ports = ns, ports
        self._listeners = {p: ns.listen("127.0.0.1", p) for p in ports}
        self._conns: list[_Conn] = []
        self._latency = 0.0
        self._blackhole = False
        self._trap: threading.Event | None = None  # drop_at_commit armed
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop = False
        self.counts = {"connections": 0, "refused": 0, "resets": 0, "bytes_up": 0,
                       "bytes_down": 0, "commits_seen": 0, "commit_responses_lost": 0}
        self._thread = threading.Thread(target=self._loop, name=f"proxy-{ns.name}", daemon=True)
        self._thread.start()

    # -- controls (any thread) -------------------------------------------------------------
    def _do(self, fn: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()
        self._commands.put(run)
        self._wake_w.send(b"x")
        if not done.wait(10):
            raise RuntimeError(f"proxy {self.ns.name} did not run a command in 10 s")

    def delay(self, seconds: float) -> None:
        self._do(lambda: setattr(self, "_latency", seconds))

    def partition(self) -> None:
        self._do(lambda: setattr(self, "_blackhole", True))

    def heal(self) -> None:
        def run() -> None:
            self._latency, self._blackhole, self._trap = 0.0, False, None
        self._do(run)

    def drop(self) -> None:
        self._do(self._drop_all)

    def drop_at_commit(self) -> threading.Event:
        """Arm the commit trap; the event is set when it fired."""
        fired = threading.Event()
        self._do(lambda: setattr(self, "_trap", fired))
        return fired

    def close(self) -> None:
        self._do(lambda: setattr(self, "_stop", True))
        self._thread.join(10)

    def figures(self) -> dict[str, int]:
        return dict(self.counts)

    # -- the loop (its own thread; the only one touching sockets) ---------------------------
    def _drop_all(self) -> None:
        for c in self._conns:
            self._close(c, rst=True)
        self._conns = []

    def _close(self, c: _Conn, rst: bool) -> None:
        if c.closed:
            return
        c.closed = True
        if rst:
            self.counts["resets"] += 1
        for s in (c.up.src, c.up.dst):
            if rst:
                _reset(s)
            else:
                s.close()

    def _loop(self) -> None:
        try:
            while not self._stop:
                self._once()
        finally:
            self._drop_all()
            for s in self._listeners.values():
                s.close()
            self._wake_r.close()
            self._wake_w.close()

    def _once(self) -> None:
        now = time.monotonic()
        want: dict[int, int] = {self._wake_r.fileno(): select.POLLIN}
        owner: dict[int, Any] = {}
        due = now + 0.5
        if not self._blackhole:
            for port, s in self._listeners.items():
                want[s.fileno()] = select.POLLIN
                owner[s.fileno()] = port
            for c in self._conns:
                for p in c.pipes():
                    if not p.eof and p.held_bytes < HELD_MAX:
                        want[p.src.fileno()] = want.get(p.src.fileno(), 0) | select.POLLIN
                        owner[p.src.fileno()] = c
                    if p.held:
                        if p.held[0][0] <= now:
                            want[p.dst.fileno()] = want.get(p.dst.fileno(), 0) | select.POLLOUT
                            owner[p.dst.fileno()] = c
                        else:
                            due = min(due, p.held[0][0])
        poller = select.poll()
        for fd, mask in want.items():
            poller.register(fd, mask)
        for fd, ev in poller.poll(math.ceil(max(0.0, due - now) * 1000)):
            if fd == self._wake_r.fileno():
                self._commands_run()
                return  # the state changed: recompute what to wait for
            what = owner.get(fd)
            if isinstance(what, int):
                self._accept(what)
            elif isinstance(what, _Conn) and not what.closed:
                self._serve(what, fd, ev)
        self._conns = [c for c in self._conns if not c.closed]

    def _commands_run(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                self._commands.get_nowait()()
            except queue.Empty:
                return

    def _accept(self, port: int) -> None:
        while True:
            try:
                down, _ = self._listeners[port].accept()
            except BlockingIOError:
                return
            try:  # made by this thread: in the host namespace
                up = socket.create_connection(("127.0.0.1", port), timeout=3)
            except OSError:  # the broker is down (another scenario's fault): refuse too
                self.counts["refused"] += 1
                _reset(down)
                continue
            for s in (down, up):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.append(_Conn(down, up))
            self.counts["connections"] += 1

    def _serve(self, c: _Conn, fd: int, ev: int) -> None:
        for p in c.pipes():
            readable = ev & (select.POLLIN | select.POLLHUP | select.POLLERR)
            if p.src.fileno() == fd and readable and not self._read(c, p):
                return
            writable = not c.closed and p.dst.fileno() == fd and ev & select.POLLOUT
            if writable and not self._write(c, p):
                return

    def _read(self, c: _Conn, p: _Pipe) -> bool:
        try:
            data = p.src.recv(CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            self._close(c, rst=True)  # a reset on one side is passed on to the other
            return False
        if not data:
            p.eof = True
            return self._write(c, p)
        self.counts["bytes_up" if p is c.up else "bytes_down"] += len(data)
        if p is c.up:
            for _, head in p.frames.feed(data):
                key, _, corr = struct.unpack(">hhi", head[4:12])
                if key == END_TXN:
                    c.end_txn.add(corr)
                    self.counts["commits_seen"] += 1
        else:
            for at, head in p.frames.feed(data):
                corr = struct.unpack(">i", head[4:8])[0]
                if corr in c.end_txn:
                    c.end_txn.discard(corr)
                    if self._trap is not None:
                        return self._spring(c, data[:at])
        p.held.append((time.monotonic() + self._latency, data))
        p.held_bytes += len(data)
        return True

    def _spring(self, c: _Conn, before: bytes) -> bool:
        """An EndTxn response arrived while the trap is armed: pass on what came before it
        (other responses), swallow it, reset every connection."""
        trap, self._trap = self._trap, None
        try:
            for _, data in c.down.held:
                c.down.dst.send(data)
            c.down.dst.send(before)
        except OSError:
            pass  # a partial write: the client sees a reset mid-response, a drop all the same
        self.counts["commit_responses_lost"] += 1
        self._drop_all()
        assert trap is not None
        trap.set()
        return False

    def _write(self, c: _Conn, p: _Pipe) -> bool:
        now = time.monotonic()
        try:
            while p.held and p.held[0][0] <= now:
                _, data = p.held[0]
                n = p.dst.send(data)
                p.held_bytes -= n
                if n < len(data):
                    p.held[0] = (p.held[0][0], data[n:])
                    return True
                p.held.popleft()
        except BlockingIOError:
            return True
        except OSError as exc:
            self._close(c, rst=exc.errno != errno.EPIPE)
            return False
        if p.eof and not p.held and not p.shut:
            p.shut = True
            with contextlib.suppress(OSError):
                p.dst.shutdown(socket.SHUT_WR)
            if c.up.shut and c.down.shut:
                self._close(c, rst=False)
                return False
        return True
