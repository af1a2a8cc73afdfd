"""Waiting for the cluster at start.

Instances and brokers start in any order (a container platform starts them together, a broker
restarts while an instance is deployed). An instance whose cluster does not answer yet waits
and retries instead of failing: failing would only turn into a supervisor's restart loop that
hides the cause. The policy:

- one metadata request per attempt (at most ``PROBE_S`` seconds, so a SIGTERM is served
  within that), then a pause that doubles from ``Backoff.first_s`` up to ``Backoff.max_s``;
- one ``kafka.unreachable`` warning per failed attempt, with the bootstrap servers, the
  attempt, how long it has waited, when it retries and librdkafka's reason: a few lines in
  the first minute, then one per ``max_s`` and a bit (the backoff is the rate limit);
- ``startup_timeout_ms`` unset (the default) waits as long as it takes; set, the start fails
  after that long with one line naming the setting;
- credentials the cluster refuses fail at once: retrying cannot fix them.

No jitter: it is one small request per instance every half a minute, not a load on anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from streamproc.errors import StreamprocError

log = structlog.get_logger(__name__)

PROBE_S = 2.0


class Stop(Protocol):
    """The instance's stop flag (a ``threading.Event``, set by SIGTERM)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class ClusterUnreachable(StreamprocError):
    """No answer within ``startup_timeout_ms``."""


@dataclass(frozen=True)
class Backoff:
    first_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return min(self.max_s, self.first_s * self.factor ** (attempt - 1))


def wait_for_cluster(answer: Callable[[float], str | None], *, bootstrap: str,
                     timeout_ms: int | None, stop: Stop,
                     backoff: Backoff = Backoff(), probe_s: float = PROBE_S,
                     clock: Callable[[], float] = time.monotonic) -> bool:
    """Wait until ``answer(timeout_s)`` (None: the cluster answered, else why not) succeeds.
    True once it did, False when ``stop`` was set first; raises :class:`ClusterUnreachable`
    after ``timeout_ms`` (None: never)."""
    started = clock()
    deadline = None if timeout_ms is None else started + timeout_ms / 1000
    attempt = 0
    while not stop.is_set():
        attempt += 1
        budget = probe_s if deadline is None else max(min(probe_s, deadline - clock()), 0.1)
        error = answer(budget)
        now = clock()
        if error is None:
            if attempt > 1:
                log.info("kafka.reachable", bootstrap=bootstrap, attempts=attempt,
                         waited_s=round(now - started, 1))
            return True
        if stop.is_set():
            break  # stopped during the attempt: no retry to announce
        if deadline is not None and now >= deadline:
            raise ClusterUnreachable(
                f"Kafka at {bootstrap} did not answer within startup_timeout_ms={timeout_ms} "
                f"({attempt} attempts): {error}. Check STREAMPROC_BROKERS and that the cluster "
                "is up, or raise STREAMPROC_STARTUP_TIMEOUT_MS (unset waits as long as it "
                "takes)")
        pause = backoff.delay(attempt)
        if deadline is not None:
            pause = min(pause, deadline - now)
        log.warning("kafka.unreachable", bootstrap=bootstrap, attempt=attempt,
                    waited_s=round(now - started, 1), retry_in_s=round(pause, 1),
                    startup_timeout_ms=timeout_ms, error=error)
        stop.wait(pause)  # a SIGTERM sets it: the wait ends at once
    return False
