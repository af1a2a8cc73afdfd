"""The ``{app}-instances`` registry is input: anyone who can write the topic can write any
record into it. Entries are taken only with an instance's URL form, claims of this plan's
tasks and (with ``http_registry_signing_key``) a valid signature; everything else is ignored,
logged and counted, and never replaces an instance's previous entry."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from streamproc.ops.endpoint import BadEndpoint, Endpoint, parse_endpoint
from streamproc.ops.instances import (
    MAC_HEADER,
    STALE_AFTER_S,
    InstanceRegistry,
    Rejected,
    advertised_url,
    decode_entry,
    encode_entry,
    entry_mac,
    registry_key,
)
from streamproc.types import TaskId

PLAN = {0: 4, 1: 2}  # sub-topology 0 has 4 tasks, 1 has 2
TOPIC = "app-instances"


@pytest.mark.parametrize(("url", "why"), [
    ("http://169.254.169.254/", "not http"),  # metadata service: a path, no port
    ("http://169.254.169.254:80", "link-local"),
    ("http://[fe80::1]:80", "link-local"),
    ("http://[fd00:ec2::254]:80", "metadata"),
    ("http://0.0.0.0:80", "unspecified"),
    ("http://224.0.0.1:80", "multicast"),
    ("http://[::ffff:169.254.169.254]:80", "IPv4-mapped"),
    ("http://[::ffff:10.0.0.1]:80", "IPv4-mapped"),
    ("http://a@b:1", "not http"),  # userinfo
    ("http://h:1/#", "not http"),  # a fragment would swallow the appended path
    ("http://h:1#", "not http"),
    ("http://h:1/x?y", "not http"),
    ("http://h:1?y", "not http"),
    ("http://h:1/", "not http"),
    ("file:///etc/passwd", "not http"),
    ("gopher://h:70", "not http"),
    ("HTTP://h:1", "not http"),  # instances advertise lower case
    ("http://h", "not http"),  # no port
    ("http://h:0", "out of range"),
    ("http://h:65536", "out of range"),
    ("http://h:99999", "out of range"),
    ("http://h:١٢", "not http"),  # Arabic-Indic digits
    ("http://bücher.example:80", "ASCII host name"),
    ("http://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com:80", "ASCII host name"),  # fullwidth
    ("http://exa mple:80", "not http"),
    ("http://-a.example:80", "ASCII host name"),
    ("http://a..b:80", "ASCII host name"),
    ("http://1.2.3:80", "looks like an IP"),
    ("http://0177.0.0.1:80", "looks like an IP"),  # octal 127.0.0.1
    ("http://2130706433:80", "looks like an IP"),  # decimal 127.0.0.1
    ("http://[::1:80", "not http"),
    ("http://[zz::1]:80", "not http"),
    ("http://h:1\n", "not http"),
    (" http://h:1", "not http"),
    ("http://h:1\\@evil:2", "not http"),
    ("http://" + "a" * 300 + ":1", "longer than"),
    (42, "not a string"),
    (None, "not a string"),
])
def test_hostile_urls_are_refused(url: Any, why: str) -> None:
    with pytest.raises(BadEndpoint, match=why):
        parse_endpoint(url)


def test_instance_urls_are_taken_in_canonical_form() -> None:
    assert parse_endpoint("http://127.0.0.1:8080") == Endpoint("http", "127.0.0.1", 8080)
    assert parse_endpoint("https://Node-1.Example.com:443") == Endpoint(
        "https", "node-1.example.com", 443)
    assert parse_endpoint("http://xn--bcher-kva.example:80").host == "xn--bcher-kva.example"
    assert parse_endpoint("http://[::1]:9").base == "http://[::1]:9"
    assert parse_endpoint("http://[2001:DB8::1]:9").base == "http://[2001:db8::1]:9"
    # A request goes to the parsed host and port, with the path and query given: nothing
    # the registry wrote can move it elsewhere.
    e = parse_endpoint("http://10.1.2.3:8080")
    assert str(e.url("/state/counts/a%2Fb", "scope=local&x=%23")) == \
        "http://10.1.2.3:8080/state/counts/a%2Fb?scope=local&x=%23"
    assert str(e.url("/state")) == "http://10.1.2.3:8080/state"


def test_advertised_urls_always_name_their_port() -> None:
    assert advertised_url("http://svc", "0.0.0.0", 1) == "http://svc:80"
    assert advertised_url("https://svc/", "0.0.0.0", 1) == "https://svc:443"
    assert advertised_url("https://[::1]", "0.0.0.0", 1) == "https://[::1]:443"
    assert advertised_url(None, "127.0.0.1", 8443, tls=True) == "https://127.0.0.1:8443"


def _value(**over: Any) -> bytes:
    d: dict[str, Any] = {"instance": "i1", "url": "http://h:1", "tasks": [[0, 1], [1, 0]],
                         "restoring": [[1, 0]], "started_at": 5, "at": 1000}
    d.update(over)
    return orjson.dumps(d)


def _reason(key: bytes | None, value: bytes | None) -> str:
    with pytest.raises(Rejected) as err:
        decode_entry(key, value, 1000, PLAN)
    return err.value.reason


def test_entries_are_checked_field_by_field() -> None:
    instance, entry = decode_entry(b"i1", _value(url="http://H:1"), 1000, PLAN)
    assert entry is not None
    assert (instance, entry.url, entry.tasks, entry.restoring) == (
        "i1", "http://h:1", frozenset({TaskId(0, 1), TaskId(1, 0)}), frozenset({TaskId(1, 0)}))
    assert {
        "no key": _reason(None, _value()),
        "key not UTF-8": _reason(b"\xff", _value()),
        "key not a name": _reason(b"../x", _value(instance="../x")),
        "not JSON": _reason(b"i1", b"{"),
        "not an object": _reason(b"i1", b"[1]"),
        "another instance": _reason(b"i1", _value(instance="i2")),
        "metadata URL": _reason(b"i1", _value(url="http://169.254.169.254:80")),
        "fragment": _reason(b"i1", _value(url="http://h:1/#")),
        "no URL": _reason(b"i1", _value(url=None)),
        "task beyond the partitions": _reason(b"i1", _value(tasks=[[0, 4]])),
        "unknown sub-topology": _reason(b"i1", _value(tasks=[[7, 0]])),
        "negative partition": _reason(b"i1", _value(tasks=[[0, -1]])),
        "task as text": _reason(b"i1", _value(tasks=[["0", "1"]])),
        "task as bool": _reason(b"i1", _value(tasks=[[True, 0]])),
        "task of three": _reason(b"i1", _value(tasks=[[0, 1, 2]])),
        "tasks not a list": _reason(b"i1", _value(tasks={"0": 1})),
        "restoring not claimed": _reason(b"i1", _value(restoring=[[0, 2]])),
        "at as float": _reason(b"i1", _value(at=1.5)),
        "at too large": _reason(b"i1", _value().replace(b'"at":1000', b'"at":1e30')),
        "too large": _reason(b"i1", _value(pad="x" * 300_000)),
    } == {
        "no key": "bad_key", "key not UTF-8": "bad_key", "key not a name": "bad_key",
        "not JSON": "bad_value", "not an object": "bad_value",
        "another instance": "bad_value", "metadata URL": "bad_url", "fragment": "bad_url",
        "no URL": "bad_url", "task beyond the partitions": "unknown_task",
        "unknown sub-topology": "unknown_task", "negative partition": "unknown_task",
        "task as text": "bad_value", "task as bool": "bad_value",
        "task of three": "bad_value", "tasks not a list": "bad_value",
        "restoring not claimed": "bad_value", "at as float": "bad_value",
        "at too large": "bad_value", "too large": "bad_value",
    }


class Msg:
    """A consumed registry record, as confluent-kafka gives it."""

    def __init__(self, key: bytes | None, value: bytes | None, ts: int,
                 headers: list[tuple[str, bytes]] | None = None, broken: bool = False) -> None:
        self._k, self._v, self._ts, self._h, self._broken = key, value, ts, headers, broken

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def timestamp(self) -> tuple[int, int]:
        return (2, self._ts)

    def headers(self) -> list[tuple[str, bytes]] | None:
        if self._broken:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad header name")
        return self._h

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


class Feed:
    """The registry's consumer: hands out the queued records once."""

    def __init__(self) -> None:
        self.queue: list[Msg] = []

    def consume(self, n: int, timeout: float) -> list[Msg]:
        out, self.queue = self.queue, []
        return out


def _registry(secret: str | None) -> tuple[InstanceRegistry, Feed, Counter[str]]:
    counted: Counter[str] = Counter()
    reg = InstanceRegistry("app", "me", "http://127.0.0.1:1", "unused", plan=PLAN,
                           signing_key=registry_key(secret) if secret else None,
                           count=lambda name, n=1, **labels: counted.update(
                               {f"{name}{{{labels['reason']}}}": n}))
    feed = Feed()
    reg._consumer = feed  # type: ignore[assignment]
    return reg, feed, counted


SECRET = "a-shared-secret-0123456789"


def _signed(key: bytes, value: bytes | None, secret: str = SECRET) -> list[tuple[str, bytes]]:
    return [(MAC_HEADER, entry_mac(registry_key(secret), TOPIC, key, value))]


def test_signed_entries_only_when_a_signing_key_is_set() -> None:
    reg, feed, counted = _registry(SECRET)
    good = encode_entry("i1", "http://h:1", [TaskId(0, 1)], [], 0, 1000)
    feed.queue = [
        Msg(b"i1", good, 1000, _signed(b"i1", good)),  # taken
        Msg(b"i2", good.replace(b"i1", b"i2"), 1001),  # unsigned
        Msg(b"i3", good, 1002, _signed(b"i3", good, "another-secret-0123456789")),
        Msg(b"i4", good, 1003, _signed(b"i1", good)),  # i1's signature under another key
        Msg(b"i5", good, 1004, _signed(b"i5", good) + _signed(b"i5", good)),  # two MACs
        Msg(b"i1", None, 1005),  # an unsigned tombstone cannot remove i1
        Msg(b"i1", None, 1006, _signed(b"i1", good)),  # a value's MAC on a tombstone
        Msg(b"i6", good, 1007, broken=True),  # headers that cannot be read
        # A signed record written again long after it was made (a replay).
        Msg(b"i1", good, 1000 + int(STALE_AFTER_S * 1000) + 1, _signed(b"i1", good)),
    ]
    reg._read()
    assert list(reg.view.entries) == ["i1"]
    assert reg.view.entries["i1"].ts == 1000
    assert reg.view.owners == {TaskId(0, 1): reg.view.entries["i1"]}
    assert counted == Counter({
        "registry_records_rejected_total{unsigned}": 2,
        "registry_records_rejected_total{bad_signature}": 4,
        "registry_records_rejected_total{bad_headers}": 1,
        "registry_records_rejected_total{replayed}": 1})
    # A signed tombstone does remove it.
    feed.queue = [Msg(b"i1", None, 2000, _signed(b"i1", None))]
    reg._read()
    assert dict(reg.view.entries) == {}


def test_without_a_signing_key_entries_are_still_validated() -> None:
    reg, feed, counted = _registry(None)
    good = encode_entry("i1", "http://h:1", [TaskId(1, 1)], [], 0, 0)
    feed.queue = [
        Msg(b"i1", good, 10),
        Msg(b"i1", _value(url="file:///etc/passwd"), 11),  # does not replace i1's entry
        Msg(b"i2", _value(instance="i2", tasks=[[1, 2]], restoring=[]), 12),
        Msg(b"i3", b"\x00garbage", 13),
    ]
    reg._read()
    assert [(e.instance, e.url, e.ts) for e in reg.view.entries.values()] == [
        ("i1", "http://h:1", 10)]
    assert counted == Counter({"registry_records_rejected_total{bad_url}": 1,
                               "registry_records_rejected_total{unknown_task}": 1,
                               "registry_records_rejected_total{bad_value}": 1})


def test_published_entries_are_signed_and_read_back() -> None:
    reg, feed, _ = _registry(SECRET)
    sent: list[tuple[Any, ...]] = []

    class Producer:
        def produce(self, topic: str, value: bytes | None, key: bytes, headers: Any,
                    on_delivery: Any) -> None:
            sent.append((topic, key, value, headers))

        def poll(self, timeout: float) -> int:
            return 0

    reg._producer = Producer()  # type: ignore[assignment]
    reg.tick(0.0, {TaskId(0, 0): True, TaskId(1, 1): False})
    (topic, key, value, headers), = sent
    assert (topic, key, headers) == (TOPIC, b"me", _signed(b"me", value))
    at = orjson.loads(value)["at"]
    feed.queue = [Msg(key, value, at, headers)]
    reg._read()
    me = reg.view.entries["me"]
    assert (me.tasks, me.restoring) == (frozenset({TaskId(0, 0), TaskId(1, 1)}),
                                        frozenset({TaskId(1, 1)}))
