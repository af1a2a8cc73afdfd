"""Queryable state over HTTP: ``GET /state``, ``/state/{store}`` and ``/state/{store}/{key}``
(docs/queryable-state.md).

A key's partition is Kafka's default partitioner over its key bytes; the task of that
partition answers. If this instance holds it, the value comes from the task's RocksDB:
committed state, as of the last checkpoint. If another instance holds it (the registry,
streamproc/ops/instances.py, says which), the request is proxied there once (a header marks it,
so it is never forwarded twice) or, with ``?redirect=1``, answered with a 307 to it.

Threads: :class:`QueryState` is built by the monitor; :meth:`QueryState.tick` and
:meth:`QueryState.close` run on the loop's thread. Handlers run on the HTTP thread and only
read what ``tick`` publishes (whole objects swapped in), the tasks' ``state`` and the stores'
thread-safe read methods; blocking work (scans, proxying) goes to the thread pool so probes
stay fast.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import orjson
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from streamproc.config import parse_instant
from streamproc.ops.http import HttpContext, register_routes
from streamproc.ops.instances import InstanceRegistry, RegistryView, instances_topic
from streamproc.ops.stores import (
    BadQuery,
    StoreInfo,
    TimeRange,
    catalog,
    decode_key,
    encode_key,
    encode_prefix,
    list_partition,
    partition_of,
    read_windows,
    row_order,
    to_json,
)
from streamproc.runtime.task import Task, TaskState
from streamproc.state.store import KeyValueStore, StoreNotOpen
from streamproc.types import TaskId

if TYPE_CHECKING:
    from streamproc.runtime.app import Application

log = structlog.get_logger(__name__)

FORWARDED = "x-streamproc-forwarded-by"  # set on a proxied request: never forward it again
SERVED_BY = "x-streamproc-served-by"
PROXY_TIMEOUT_S = 5.0
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
RETRY_AFTER_S = 1

Local = Mapping[str, Mapping[int, tuple[Task, KeyValueStore]]]


class QueryState:
    """The instance's queryable state: its catalogue of stores, the stores of the tasks it
    holds (republished by :meth:`tick` whenever the tasks change) and the registry."""

    def __init__(self, app: Application) -> None:
        assert app.plan is not None
        self.app_id = app.app_id
        self.catalog = catalog(app.compiled)
        self.tasks_per_subtopology = dict(app.plan.partitions)
        self.local: Local = MappingProxyType({})
        self.instance = ""
        self.url = ""
        self.registry: InstanceRegistry | None = None
        self._app = app
        self._signature: tuple[tuple[TaskId, int], ...] = ()

    @property
    def view(self) -> RegistryView:
        return self.registry.view if self.registry is not None else RegistryView()

    # -- the loop's thread ---------------------------------------------------------------------
    def start(self, instance: str, url: str) -> None:
        app, s = self._app, self._app.settings
        self.instance, self.url = instance, url
        # The registry's clients connect like every other client (streamproc/connection.py).
        from streamproc.connection import kafka_connection

        conn = kafka_connection(s, app.bootstrap)
        registry = InstanceRegistry(app.app_id, instance, url, app.bootstrap, conn, conn)
        from streamproc.kafka.admin import TopicAdmin

        registry.start(app.admin or TopicAdmin(app.bootstrap))
        self.registry = registry
        log.info("state.queryable", url=url, registry=registry.topic)

    def tick(self, now: float, tasks: Mapping[TaskId, Task]) -> None:
        """Republish the local stores if the tasks changed; read and write the registry."""
        signature = tuple((tid, id(t)) for tid, t in sorted(tasks.items()))
        if signature != self._signature:
            self._signature = signature
            local: dict[str, dict[int, tuple[Task, KeyValueStore]]] = {}
            for tid, task in tasks.items():
                for name, store in task.stores.items():
                    local.setdefault(name, {})[tid.partition] = (task, store)
            self.local = MappingProxyType({k: MappingProxyType(v) for k, v in local.items()})
        if self.registry is not None:
            self.registry.tick(now, {tid: t.running for tid, t in tasks.items()})

    def close(self) -> None:
        self.local = MappingProxyType({})
        if self.registry is not None:
            self.registry.close()

    # -- the HTTP thread -----------------------------------------------------------------------
    def store(self, name: str) -> StoreInfo:
        info = self.catalog.get(name)
        if info is None:
            raise _Unknown(name)
        return info

    def partitions(self, info: StoreInfo) -> int:
        return self.tasks_per_subtopology[info.subtopology]


class _Unknown(LookupError):
    pass


@dataclass(frozen=True)
class _Params:
    limit: int
    scope: str
    redirect: bool
    span: TimeRange
    key_text: str | None
    key_json: str | None


def _params(request: Request) -> _Params:
    q = request.query_params
    raw = q.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        raise BadQuery(f"limit must be an integer, not {raw!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    scope = q.get("scope", "local")
    if scope not in ("local", "all"):
        raise BadQuery(f"scope must be local or all, not {scope!r}")
    redirect = q.get("redirect", "0").lower()
    if redirect not in ("0", "1", "true", "false"):
        raise BadQuery(f"redirect must be 1 or 0, not {redirect!r}")
    span = TimeRange()
    try:
        if "from" in q:
            span = TimeRange(parse_instant(q["from"]), span.end)
        if "to" in q:
            span = TimeRange(span.start, parse_instant(q["to"]))
    except ValueError as exc:
        raise BadQuery(f"from/to: {exc}") from None
    return _Params(limit, scope, redirect in ("1", "true"), span, q.get("key"), q.get("key_json"))


def _answer(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(to_json(body), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store", **(headers or {})})


def _retry(body: dict[str, Any], status: int = 503) -> Response:
    return _answer(body, status, {"retry-after": str(RETRY_AFTER_S)})


def _fetch(url: str, headers: Mapping[str, str],
           timeout_s: float = PROXY_TIMEOUT_S) -> tuple[int, bytes]:
    """GET ``url`` (another instance's endpoint, from the registry); any HTTP status is an
    answer, a connection failure raises OSError."""
    if not url.startswith(("http://", "https://")):
        raise OSError(f"not an http(s) URL: {url!r}")
    req = urllib.request.Request(url, headers=dict(headers))  # noqa: S310 - scheme checked
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def _query_string(request: Request, **override: str | None) -> str:
    items = [(k, v) for k, v in request.query_params.multi_items() if k not in override]
    items += [(k, v) for k, v in override.items() if v is not None]
    return urlencode(items)


# -- handlers ---------------------------------------------------------------------------------
def _state_of(ctx: HttpContext) -> QueryState | None:
    query: QueryState | None = getattr(ctx.app.ops, "query", None)
    return query


async def _overview(qs: QueryState) -> Response:
    stores = []
    for name in sorted(qs.catalog):
        info = qs.catalog[name]
        parts = qs.local.get(name, {})
        stores.append({**info.describe(), "partitions": qs.partitions(info),
                       "served": sorted(p for p, (t, _) in parts.items()
                                        if t.state is TaskState.RUNNING),
                       "restoring": sorted(p for p, (t, _) in parts.items()
                                           if t.state is TaskState.RESTORING)})
    view = qs.view
    return _answer({"application_id": qs.app_id, "instance": qs.instance, "url": qs.url,
                    "stores": stores, "registry": {"topic": instances_topic(qs.app_id),
                                                   "caught_up": view.caught_up},
                    "instances": view.to_json()})


async def _lookup(request: Request, qs: QueryState, info: StoreInfo, p: _Params,
                  path_key: str | None) -> Response:
    if not info.queryable:
        raise BadQuery(f"store {info.name!r} is internal ({info.kind}): list it with "
                       f"GET /state/{info.name}, it has no keys of its own")
    key = encode_key(info, path_key if p.key_json is None else None, p.key_json)
    partition = partition_of(key, qs.partitions(info))
    shown = decode_key(info, key)
    base = {"store": info.name, "key": shown, "partition": partition}
    held = qs.local.get(info.name, {}).get(partition)
    if held is not None:
        task, store = held
        if task.state is TaskState.RESTORING:
            return _retry({"status": "restoring", **base, "served_by": qs.instance})
        try:
            if info.kind == "window":
                rows = await run_in_threadpool(read_windows, info, store, key, p.span, p.limit)
                for r in rows:
                    del r["key"]
                return _answer({**base, "windows": rows, "served_by": qs.instance},
                               headers={SERVED_BY: qs.instance})
            value = store.read_committed(key)
        except StoreNotOpen:
            held = None  # revoked or recovering since the map was published
        else:
            if value is None:
                return _answer({"status": "not_found", **base, "served_by": qs.instance}, 404,
                               {SERVED_BY: qs.instance})
            return _answer({**base, "value": value, "served_by": qs.instance},
                           headers={SERVED_BY: qs.instance})
    owner = qs.view.owners.get(TaskId(info.subtopology, partition))
    if request.headers.get(FORWARDED) is not None or owner is None \
            or owner.instance == qs.instance:
        # Forwarded here by a stale view, or nobody claims the partition yet (a rebalance,
        # a restart): the caller retries shortly.
        return _retry({"status": "owner_unknown", **base, "served_by": qs.instance})
    path = f"/state/{quote(info.name, safe='')}/{quote(path_key or '-', safe='')}"
    target = f"{owner.url}{path}"
    query = _query_string(request, redirect=None)
    if p.redirect:
        return Response(status_code=307, headers={
            "location": f"{target}?{query}" if query else target, "cache-control": "no-store"})
    try:
        status, body = await run_in_threadpool(
            _fetch, f"{target}?{query}" if query else target, {FORWARDED: qs.instance})
    except OSError as exc:
        return _retry({"status": "owner_unreachable", **base, "owner": owner.instance,
                       "url": owner.url, "error": str(exc)}, 502)
    return Response(body, status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store", SERVED_BY: owner.instance,
                             "x-streamproc-proxied-by": qs.instance})


def _list_local(qs: QueryState, info: StoreInfo, p: _Params, start: bytes | None,
                stop: bytes | None, prefix: bytes | None) -> dict[str, Any]:
    served: list[int] = []
    restoring: list[int] = []
    rows: list[dict[str, Any]] = []
    for partition, (task, store) in sorted(qs.local.get(info.name, {}).items()):
        if task.state is not TaskState.RUNNING:
            restoring.append(partition)
            continue
        try:
            rows.extend(list_partition(info, store, partition, p.limit + 1, start=start,
                                       stop=stop, prefix=prefix, span=p.span))
        except StoreNotOpen:
            continue  # revoked since the map was published: another instance has it
        served.append(partition)
    return {"partitions": served, "restoring": restoring, "items": rows}


def _merge(info: StoreInfo, answers: list[tuple[str, dict[str, Any]]], limit: int
           ) -> tuple[list[dict[str, Any]], list[int], list[int], bool, Any]:
    """Rows of every answer in store order, each partition from the first answer serving it;
    ``(rows, served, restoring, truncated, next key)``."""
    taken: set[int] = set()
    restoring: set[int] = set()
    rows: list[dict[str, Any]] = []
    for _, a in answers:
        mine = set(a["partitions"]) - taken
        taken |= mine
        restoring |= set(a.get("restoring", ()))
        rows.extend(r for r in a["items"] if r["partition"] in mine)
    rows.sort(key=lambda r: row_order(info, r))
    truncated = len(rows) > limit or any(a.get("truncated") for _, a in answers)
    nexts = [r["key"] for r in rows[limit:limit + 1]]
    nexts += [a["next"] for _, a in answers if a.get("next") is not None]
    nxt = (min(nexts, key=lambda k: row_order(info, {"key": k}))
           if nexts and info.kind != "window" else None)
    return rows[:limit], sorted(taken), sorted(restoring - taken), truncated, nxt


async def _listing(request: Request, qs: QueryState, info: StoreInfo, p: _Params) -> Response:
    q = request.query_params
    start = stop = prefix = None
    if info.kind == "window":
        if "from_key" in q or "to_key" in q:
            raise BadQuery("a window store is listed by time (from, to) and key prefix")
    else:
        if "from_key" in q:
            start = encode_key(info, q["from_key"])
        if "to_key" in q:
            stop = encode_key(info, q["to_key"])
    if "prefix" in q:
        prefix = encode_prefix(info, q["prefix"])
    local = await run_in_threadpool(_list_local, qs, info, p, start, stop, prefix)
    answers: list[tuple[str, dict[str, Any]]] = [(qs.instance, local)]
    errors: list[dict[str, Any]] = []
    if p.scope == "all" and request.headers.get(FORWARDED) is None:
        others = sorted({(e.instance, e.url) for e in qs.view.owners.values()
                         if e.instance != qs.instance})
        query = _query_string(request, scope="local", redirect=None)
        path = f"/state/{quote(info.name, safe='')}"
        results = await asyncio.gather(*(
            run_in_threadpool(_fetch, f"{url}{path}?{query}", {FORWARDED: qs.instance})
            for _, url in others), return_exceptions=True)
        for (instance, url), res in zip(others, results, strict=True):
            if isinstance(res, BaseException):
                errors.append({"instance": instance, "url": url, "error": str(res)})
                continue
            status, raw = res
            try:
                answer = orjson.loads(raw)
            except orjson.JSONDecodeError:
                answer = None
            if status != 200 or not isinstance(answer, dict) or "items" not in answer:
                errors.append({"instance": instance, "url": url, "status": status})
                continue
            answers.append((instance, answer))
    rows, served, restoring, truncated, nxt = _merge(info, answers, p.limit)
    total = qs.partitions(info)
    missing = sorted(set(range(total)) - set(served) - set(restoring)) \
        if p.scope == "all" else []
    body: dict[str, Any] = {
        "store": info.name, "kind": info.kind, "scope": p.scope, "partitions": served,
        "restoring": restoring, "items": rows, "truncated": truncated, "next": nxt,
        "served_by": qs.instance}
    if p.scope == "all":
        body.update(complete=not missing and not restoring and not errors, missing=missing,
                    instances=[i for i, _ in answers], errors=errors)
    return _answer(body, headers={SERVED_BY: qs.instance})


@register_routes
def state_routes(ctx: HttpContext) -> list[BaseRoute]:
    """The ``/state`` routes (registered when this module is imported)."""

    async def guarded(request: Request, key: str | None) -> Response:
        qs = _state_of(ctx)
        if qs is None or qs.registry is None:
            return _retry({"status": "starting"})
        started = time.monotonic()
        try:
            p = _params(request)
            name = request.path_params.get("store")
            if name is None:
                return await _overview(qs)
            info = qs.store(name)
            if key is not None or p.key_text is not None or p.key_json is not None:
                return await _lookup(request, qs, info, p,
                                     key if key is not None else p.key_text)
            return await _listing(request, qs, info, p)
        except BadQuery as exc:
            return _answer({"status": "bad_request", "error": str(exc)}, 400)
        except _Unknown as exc:
            return _answer({"status": "unknown_store", "store": exc.args[0],
                            "stores": sorted(qs.catalog)}, 404)
        except Exception as exc:  # a value that no longer decodes, a store error
            log.warning("state.query_failed", path=request.url.path, error=str(exc),
                        seconds=round(time.monotonic() - started, 4))
            return _answer({"status": "error", "error": str(exc)}, 500)

    async def overview(request: Request) -> Response:
        return await guarded(request, None)

    async def one(request: Request) -> Response:
        return await guarded(request, request.path_params["key"])

    return [Route("/state", overview), Route("/state/{store}", overview),
            Route("/state/{store}/{key:path}", one)]
