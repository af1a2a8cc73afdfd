"""The record collector: the one producer of an instance, and its transactions.

Everything an instance writes (sink records, repartition records, changelog records, dead
letters) goes through here, so under exactly-once it all lands in the current transaction.
Any transactional call that fails, times out or has an unknown outcome is never retried: the
producer is thrown away and a new one with the same transactional.id is initialised, which
fences the old epoch and aborts whatever it had open (design.md; librdkafka lacks KIP-890).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc.errors import TransactionAborted
from streamproc.kafka.acls import NotAuthorized, refusal
from streamproc.kafka.clients import new_producer, transaction_refusal
from streamproc.runtime import faults
from streamproc.types import Headers, TopicPartition

log = structlog.get_logger(__name__)


def bounded(what: str, call: Callable[[], None], timeout_s: float) -> None:
    """Run a blocking transactional call under our own deadline, on a helper thread.

    librdkafka does not always honour the timeout it is given: after a connection reset,
    ``send_offsets_to_transaction`` can wait forever for a coordinator request that was lost
    (librdkafka #5456, open in 2.16; seen in the network fault scenario). An instance stuck
    there never checkpoints again, holds its partitions until max.poll.interval.ms and never
    recovers. Past the deadline we raise :class:`TransactionAborted`: the caller throws the
    producer away (the unknown-outcome path); the stuck thread keeps the old producer
    alive until librdkafka returns, and the new producer's init_transactions fences it.
    """
    done = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # re-raised on the caller's thread
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"txn-{what}", daemon=True).start()
    # A margin past librdkafka's own timeout, so that its error (when it keeps to it) is the
    # one reported.
    limit = timeout_s + max(1.0, timeout_s / 4)
    if not done.wait(limit):
        log.warning("collector.call_stuck", call=what, seconds=round(limit, 1))
        raise TransactionAborted(f"{what} did not return within {limit:.1f}s (librdkafka "
                                 "ignored its timeout); the producer is abandoned")
    if failed:
        raise failed[0]


# What init_transactions may fail with while the cluster heals (besides what librdkafka marks
# retriable): the coordinator moving or loading, the previous epoch's transaction still being
# aborted, the brokers out of reach.
_INIT_TRANSIENT = frozenset({
    KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.CONCURRENT_TRANSACTIONS,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS,
})


def _init_retriable(err: KafkaError) -> bool:
    return not err.fatal() and (err.retriable() or err.code() in _INIT_TRANSIENT)


class Collector:
    def __init__(self, make_config: Callable[[], dict[str, Any]], *, transactional: bool,
                 op_timeout_s: float) -> None:
        self._make_config = make_config
        self.transactional = transactional
        self._op_timeout_s = op_timeout_s
        self._producer: Producer = self._new_producer()
        self._changelog_next: dict[TopicPartition, int] = {}
        self._errors: list[KafkaError] = []
        self._in_txn = False
        self.produced = 0
        # Written with every committed offset (savepoints/apply.py: marks the group as started
        # from a savepoint, so restarts with the same --from-savepoint do not apply it again).
        self.offset_metadata: str | None = None

    def _new_producer(self) -> Producer:
        # The default delivery callback only records failures; changelog records carry their
        # own (it tracks their offsets).
        conf = self._make_config()
        self._client_id = conf.get("client.id", "rdkafka")
        # A commit that outlasts the transaction timeout has lost the race against the
        # broker's own abort, or succeeded unseen: either way only a new producer can tell
        # (the unknown-outcome path), so waiting for it any longer only stalls the instance.
        # After a connection reset librdkafka can hang in send_offsets_to_transaction well
        # past any timeout (network scenario: 37.5 s, the operation timeout and its margin).
        txn_s = float(conf.get("transaction.timeout.ms", 60_000)) / 1000
        self._commit_timeout_s = min(self._op_timeout_s, txn_s)
        return new_producer({**conf, "on_delivery": self._on_delivery})

    # -- lifecycle ---------------------------------------------------------------------------
    def init(self) -> None:
        """Fence any earlier producer with our transactional.id and abort its open transaction,
        so read_committed consumers are not left waiting for its timeout.

        A transaction coordinator that is moving (its broker died, the new leader is loading
        __transaction_state) answers COORDINATOR_NOT_AVAILABLE for as long as that takes,
        which under load outlasts one call (CI: 30 s, in the broker failure scenario). That
        is retried, each time with a fresh producer, for up to ``4 * op_timeout_s`` (a quarter
        of max.poll.interval.ms each; twice at least) before the error is raised. Refusals
        and errors that waiting cannot cure are raised at once.
        """
        if not self.transactional:
            return
        deadline = time.monotonic() + 4 * self._op_timeout_s
        attempt = 0
        while True:
            attempt += 1
            timeout_s = max(1.0, min(self._op_timeout_s, deadline - time.monotonic()))
            try:
                bounded("init_transactions", functools.partial(
                    self._producer.init_transactions, timeout_s), timeout_s)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                refused = refusal(err, "initialising transactions")
                if refused is not None:
                    raise refused from None
                if not _init_retriable(err) or (attempt > 1 and time.monotonic() >= deadline):
                    raise
                reason = err.str()
            except TransactionAborted as exc:  # librdkafka ignored its timeout
                if attempt > 1 and time.monotonic() >= deadline:
                    raise
                reason = str(exc)
            log.warning("collector.init_retry", attempt=attempt, error=reason,
                        seconds_left=round(max(0.0, deadline - time.monotonic()), 1))
            # An error that came at once (no broker to ask) must not spin.
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            self._producer = self._new_producer()

    def begin(self) -> None:
        if self.transactional and not self._in_txn:
            self._producer.begin_transaction()
            self._in_txn = True

    def reset(self) -> None:
        """Throw the producer away and start a fresh one (same transactional.id)."""
        try:
            self._producer.purge(in_queue=True, in_flight=True)
        except Exception as exc:
            log.debug("collector.purge_failed", error=str(exc))
        self._producer = self._new_producer()
        self._changelog_next.clear()
        self._errors.clear()
        self._in_txn = False
        self.init()

    def close(self, timeout_s: float) -> None:
        try:
            remaining = self._producer.flush(timeout_s)
        except KafkaException as exc:  # a producer in a fatal state has nothing to flush
            log.warning("collector.close_failed", error=str(exc.args[0]))
            return
        if remaining:
            log.warning("collector.unflushed_at_close", messages=remaining)

    # -- producing ---------------------------------------------------------------------------
    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._errors.append(err)

    def send(self, topic: str, key: bytes | None, value: bytes | None, timestamp: int,
             headers: Headers | None, partition: int = -1) -> None:
        p = self._producer
        while True:
            try:
                p.produce(topic, value, key, partition, timestamp=timestamp, headers=headers)
                break
            except BufferError:
                self.wait_for_room()
        self.produced += 1

    def producer(self) -> tuple[Callable[..., None], Callable[[], None]]:
        """The current producer's ``produce`` (for sinks: one lookup per batch, then a direct
        C call per record) and what to call when it raises BufferError."""
        return self._producer.produce, self.wait_for_room

    def wait_for_room(self) -> None:
        """The local queue is full: serve delivery reports so that it drains a little."""
        self._producer.poll(0.05)

    def count_produced(self, n: int) -> None:
        self.produced += n

    def send_changelog(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        tp = TopicPartition(topic, partition)
        nexts = self._changelog_next

        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                self._errors.append(err)
            else:
                off = msg.offset() + 1
                if off > nexts.get(tp, -1):
                    nexts[tp] = off

        p = self._producer
        while True:
            try:
                p.produce(topic, value, key, partition, on_delivery=delivered)
                break
            except BufferError:
                self.wait_for_room()

    def poll(self) -> None:
        with _kafka_errors():
            self._producer.poll(0)

    def changelog_next(self, topic: str, partition: int) -> int | None:
        return self._changelog_next.get(TopicPartition(topic, partition))

    def refused(self) -> NotAuthorized | None:
        """An authorization refusal among the delivery failures since the last reset: once a
        transaction failed on one, librdkafka reports every later call as ``_STATE``, so the
        cause is only in the delivery reports."""
        # A failed transaction fails what it had queued with its error: wait (briefly, on
        # this failure path only) for those reports.
        try:
            self._producer.flush(min(self._op_timeout_s, 2.0))
        except KafkaException as exc:
            self._errors.append(exc.args[0])
        found = next((r for e in self._errors if (r := refusal(e, "producing"))), None)
        if found is None:
            text = transaction_refusal(str(self._client_id))
            if text is not None:
                found = NotAuthorized(
                    f"not authorized while producing in a transaction: {text} (the principal "
                    "needs Write on every topic the application writes; `streamproc acls "
                    "--app APP --topology MODULE` prints every ACL it needs)")
        return found

    # -- the barrier ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Wait until everything produced is acknowledged; raise if anything failed."""
        with _kafka_errors():
            remaining = self._producer.flush(self._op_timeout_s)
        if remaining:
            raise TransactionAborted(f"{remaining} records not delivered within "
                                     f"{self._op_timeout_s}s")
        if self._errors:
            first = self._errors[0]
            n = len(self._errors)
            refused = next((r for e in self._errors if (r := refusal(e, "producing"))), None)
            self._errors.clear()
            if refused is not None:
                raise refused  # a replay would be refused the same way: stop instead
            raise TransactionAborted(f"{n} records failed delivery, first: {first}")

    def commit_transaction(self, offsets: dict[TopicPartition, int], group_metadata: Any) -> None:
        """Flush, add the consumer positions to the transaction and commit it.

        Raises :class:`TransactionAborted` on any failure; the caller must then :meth:`reset`
        and resume from the committed offsets.
        """
        try:
            self.flush()
            p, timeout_s = self._producer, self._commit_timeout_s
            if offsets:
                positions = offset_list(offsets, self.offset_metadata)
                bounded("send_offsets_to_transaction", lambda: p.send_offsets_to_transaction(
                    positions, group_metadata, timeout_s), timeout_s)
            faults.hit("before_commit")
            bounded("commit_transaction", lambda: p.commit_transaction(timeout_s), timeout_s)
            self._in_txn = False
            faults.hit("after_commit")
        except KafkaException as exc:
            err = exc.args[0]
            refused = refusal(err, "committing a transaction")
            if refused is not None:
                raise refused from None
            raise TransactionAborted(
                f"transaction commit failed ({'fatal' if err.fatal() else 'non-fatal'}): "
                f"{err.str()}") from exc


def offset_list(offsets: dict[TopicPartition, int],
                metadata: str | None) -> list[KafkaTopicPartition]:
    """Offsets to commit, with ``metadata`` on each when there is one."""
    if metadata is None:
        return [KafkaTopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
    return [KafkaTopicPartition(tp.topic, tp.partition, o, metadata=metadata)
            for tp, o in offsets.items()]


@contextlib.contextmanager
def _kafka_errors() -> Iterator[None]:
    """A producer that went fatal (fenced) while serving delivery reports raises the error
    from inside the callback dispatch, which Python reports as a SystemError ("returned a
    result with an exception set") caused by the KafkaException: seen in the broker failure
    scenario, where it crashed the instance. The KafkaException is what the checkpoint
    coordinator recovers from (a new producer fences the old one), so it is raised as such."""
    try:
        yield
    except SystemError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, KafkaException):
            raise cause from None
        raise
