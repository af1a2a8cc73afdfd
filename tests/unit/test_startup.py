"""The wait for the cluster at start (runtime/startup.py): its backoff, its lines, its bounds.
A fake clock and a scripted cluster; the real broker-down runs are in
tests/integration/test_broker_down.py."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from structlog.testing import capture_logs

from streamproc.kafka.probe import ClusterProbe, CredentialsRefused
from streamproc.runtime.startup import Backoff, ClusterUnreachable, wait_for_cluster
from tests.harness import cli
from tests.unit.test_cli_errors import NOWHERE, one_error


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Stop:
    """A stop flag on the fake clock; ``after`` waits it is set (a SIGTERM)."""

    def __init__(self, clock: Clock, after: int | None = None) -> None:
        self.clock, self.after, self.waits = clock, after, []

    def is_set(self) -> bool:
        return self.after is not None and len(self.waits) >= self.after

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        self.clock.now += timeout
        return self.is_set()


class Cluster:
    """Answers from its ``n``-th request on; each failed request takes the whole budget."""

    def __init__(self, clock: Clock, answers_from: int | None) -> None:
        self.clock, self.answers_from, self.requests = clock, answers_from, []

    def __call__(self, timeout_s: float) -> str | None:
        self.requests.append(timeout_s)
        if self.answers_from is not None and len(self.requests) >= self.answers_from:
            self.clock.now += 0.01
            return None
        self.clock.now += timeout_s
        return "Connect to ipv4#127.0.0.1:9 failed: Connection refused"


def test_backoff_doubles_to_its_cap() -> None:
    assert [Backoff().delay(n) for n in range(1, 10)] == \
        [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert [Backoff(first_s=1, factor=3, max_s=10).delay(n) for n in (1, 2, 3, 4)] == \
        [1, 3, 9, 10]


def test_waits_with_one_line_per_retry_until_the_cluster_answers() -> None:
    clock = Clock()
    cluster, stop = Cluster(clock, answers_from=5), Stop(clock)
    with capture_logs() as logs:
        assert wait_for_cluster(cluster, bootstrap="k:9092", timeout_ms=None, stop=stop,
                                clock=clock) is True
    assert cluster.requests == [2.0] * 5
    assert stop.waits == [0.5, 1.0, 2.0, 4.0]
    assert [(e["event"], e["attempt"], e["waited_s"], e["retry_in_s"]) for e in logs
            if e["event"] == "kafka.unreachable"] == [
        ("kafka.unreachable", 1, 2.0, 0.5), ("kafka.unreachable", 2, 4.5, 1.0),
        ("kafka.unreachable", 3, 7.5, 2.0), ("kafka.unreachable", 4, 11.5, 4.0)]
    assert all(e["log_level"] == "warning" and e["bootstrap"] == "k:9092"
               and e["error"].endswith("Connection refused") and e["startup_timeout_ms"] is None
               for e in logs if e["event"] == "kafka.unreachable")
    assert logs[-1] == {"event": "kafka.reachable", "log_level": "info", "bootstrap": "k:9092",
                        "attempts": 5, "waited_s": 15.5}


def test_a_cluster_that_answers_at_once_says_nothing() -> None:
    clock = Clock()
    with capture_logs() as logs:
        assert wait_for_cluster(Cluster(clock, 1), bootstrap="k:9092", timeout_ms=None,
                                stop=Stop(clock), clock=clock) is True
    assert logs == []


def test_an_unbounded_wait_settles_at_one_line_per_30_s() -> None:
    clock = Clock()
    cluster, stop = Cluster(clock, answers_from=None), Stop(clock, after=40)
    with capture_logs() as logs:
        assert wait_for_cluster(cluster, bootstrap="k:9092", timeout_ms=None, stop=stop,
                                clock=clock) is False
    lines = [e for e in logs if e["event"] == "kafka.unreachable"]
    assert len(lines) == 40 and stop.waits[-30:] == [30.0] * 30
    gaps = [b["waited_s"] - a["waited_s"] for a, b in zip(lines[-10:], lines[-9:], strict=False)]
    assert gaps == [32.0] * 9  # 30 s pause + one 2 s request


def test_a_stop_ends_the_wait_without_announcing_a_retry() -> None:
    clock = Clock()
    cluster, stop = Cluster(clock, answers_from=None), Stop(clock, after=2)
    with capture_logs() as logs:
        assert wait_for_cluster(cluster, bootstrap="k:9092", timeout_ms=None, stop=stop,
                                clock=clock) is False
    assert len(cluster.requests) == 2 and stop.waits == [0.5, 1.0]
    assert [e["attempt"] for e in logs] == [1, 2]


def test_startup_timeout_bounds_the_wait_exactly() -> None:
    clock = Clock()
    cluster, stop = Cluster(clock, answers_from=None), Stop(clock)
    with capture_logs(), pytest.raises(ClusterUnreachable) as raised:
        wait_for_cluster(cluster, bootstrap="k:9092", timeout_ms=10_000, stop=stop, clock=clock)
    # 2 + 0.5 + 2 + 1 + 2 + 2 = 9.5 s, then a last request cut to the 0.5 s left.
    assert cluster.requests == [2.0, 2.0, 2.0, 0.5]
    assert stop.waits == [0.5, 1.0, 2.0]
    assert clock.now == 110.0
    assert str(raised.value) == (
        "Kafka at k:9092 did not answer within startup_timeout_ms=10000 (4 attempts): Connect "
        "to ipv4#127.0.0.1:9 failed: Connection refused. Check STREAMPROC_BROKERS and that the "
        "cluster is up, or raise STREAMPROC_STARTUP_TIMEOUT_MS (unset waits as long as it "
        "takes)")


@pytest.mark.parametrize(("value", "problem"), [
    ("abc", "Input should be a valid integer, unable to parse string as an integer"),
    ("999", "Input should be greater than or equal to 1000"),
])
def test_a_bad_startup_timeout_fails_fast_naming_the_setting(value: str, problem: str) -> None:
    proc = cli(NOWHERE, "run", "topologies.wordcount", STREAMPROC_STARTUP_TIMEOUT_MS=value,
               timeout_s=30)
    assert proc.returncode == 2
    setting = "startup_timeout_ms (env STREAMPROC_STARTUP_TIMEOUT_MS, flag --startup-timeout-ms)"
    assert one_error(proc) == {"event": "config.invalid", "setting": setting,
                               "error": f"invalid setting {setting!r}: {problem}"}


def test_the_probe_says_why_and_keeps_librdkafka_quiet() -> None:
    """A real client against a port that refuses: the reason comes back, and librdkafka's
    reconnect lines (dozens a second) stay at debug level."""
    probe = ClusterProbe({"bootstrap.servers": NOWHERE})
    with capture_logs() as logs:
        why = probe.answer(0.5)
    probe.close()
    assert why is not None and "Connection refused" in why, why
    assert {e["log_level"] for e in logs} <= {"debug"}, logs


def test_refused_credentials_fail_at_once() -> None:
    probe = ClusterProbe({"bootstrap.servers": NOWHERE})

    class Refusing:
        def list_topics(self, timeout: float) -> None:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "no metadata"))

        def poll(self, timeout: float) -> int:
            probe._on_error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication "
                                       "error: Authentication failed (invalid credentials)"))
            return 1

    probe._admin = Refusing()  # type: ignore[assignment]
    with pytest.raises(CredentialsRefused, match="refused this instance's credentials: SASL "
                       "authentication error: Authentication failed"):
        probe.answer(0.5)
