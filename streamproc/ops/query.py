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
thread-safe read methods; store reads go to the thread pool so probes stay fast, requests to
other instances are awaited on the server's loop (streamproc/ops/peers.py).

Limits (every request is input): at most ``http_state_max_concurrent`` requests at once
(more answer ``503 busy``), ``limit`` at most ``http_state_max_rows``, at most
``http_state_max_scan`` entries read per request (split between the partitions it reads;
an answer that ran out says ``scan_limited`` and where to resume), at most
``http_state_max_fanout`` other instances asked by ``scope=all``, answers of other instances
at most ``http_proxy_max_response_bytes`` and checked before they are used.
"""

from __future__ import annotations

import asyncio
import time
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
from streamproc.graph.naming import instances_topic
from streamproc.ops.http import HttpContext, register_routes
from streamproc.ops.instances import (
    Entry,
    InstanceRegistry,
    RegistryView,
    registry_key,
)
from streamproc.ops.peers import PeerError, Peers
from streamproc.ops.stores import (
    BadQuery,
    Page,
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
    from streamproc.runtime.observe import InstanceView

log = structlog.get_logger(__name__)

FORWARDED = "x-streamproc-forwarded-by"  # set on a proxied request: never forward it again
SERVED_BY = "x-streamproc-served-by"
DEFAULT_LIMIT = 100
RETRY_AFTER_S = 1
# What another instance may answer (anything else, a redirect included, is a bad answer).
_PEER_STATUSES = frozenset({200, 400, 404, 500, 503})

Local = Mapping[str, Mapping[int, tuple[Task, KeyValueStore]]]


class QueryState:
    """The instance's queryable state: its catalogue of stores, the stores of the tasks it
    holds (republished by :meth:`tick` whenever the tasks change) and the registry."""

    def __init__(self, app: InstanceView) -> None:
        self.app_id = app.app_id
        self.catalog = catalog(app.compiled)
        self.tasks_per_subtopology = dict(app.tasks_per_subtopology)
        self.local: Local = MappingProxyType({})
        self.instance = ""
        self.url = ""
        self.registry: InstanceRegistry | None = None
        s = app.settings
        self.max_scan: int = s.http_state_max_scan
        self.max_rows: int = s.http_state_max_rows
        self.max_concurrent: int = s.http_state_max_concurrent
        self.max_fanout: int = s.http_state_max_fanout
        self.inflight = 0  # requests being served; only touched on the server's loop
        self.peers = Peers(token=s.secret("http_auth_token"),
                           timeout_s=s.http_proxy_timeout_ms / 1000,
                           max_bytes=s.http_proxy_max_response_bytes, ca_file=s.http_tls_ca_file)
        signing = s.http_registry_signing_key
        self.signed = signing is not None
        self._signing_key = registry_key(signing.get_secret_value()) if signing else None
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
        registry = InstanceRegistry(app.app_id, instance, url, app.bootstrap, conn, conn,
                                    plan=self.tasks_per_subtopology,
                                    signing_key=self._signing_key, count=app.metrics.inc)
        from streamproc.kafka.admin import TopicAdmin

        registry.start(app.admin or TopicAdmin(app.bootstrap, client_config=conn),
                       s.internal_replication_factor)
        self.registry = registry
        log.info("state.queryable", url=url, registry=registry.topic, signed=self.signed)
        if s.secret("http_auth_token") is not None and not self.signed:
            # The token goes to whatever URL the registry names: a writer of the topic could
            # collect it. Signed entries close that (docs/security.md, "HTTP surface").
            log.warning("state.token_sent_to_unsigned_registry", registry=registry.topic,
                        hint="set http_registry_signing_key")

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


def _params(request: Request, max_rows: int) -> _Params:
    q = request.query_params
    raw = q.get("limit", str(min(DEFAULT_LIMIT, max_rows)))
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise BadQuery(f"limit must be an integer between 1 and {max_rows}, not {raw[:20]!r}")
    limit = int(raw)
    if not 1 <= limit <= max_rows:
        raise BadQuery(f"limit must be between 1 and {max_rows} (http_state_max_rows), "
                       f"not {limit}")
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


async def _ask(qs: QueryState, owner: Entry, path: str, query: str) -> tuple[int, Any]:
    """Another instance's answer: a JSON object with one of the statuses an instance gives,
    or :class:`PeerError`. The URL is built from the entry's parsed endpoint."""
    status, raw = await qs.peers.get(owner.endpoint.url(path, query), {FORWARDED: qs.instance})
    if status not in _PEER_STATUSES:
        raise PeerError("owner_bad_answer", f"the owner answered HTTP {status}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise PeerError("owner_bad_answer", "the owner's answer is not JSON") from None
    if not isinstance(body, dict):
        raise PeerError("owner_bad_answer", "the owner's answer is not a JSON object")
    return status, body


def _query_string(request: Request, **override: str | None) -> str:
    items = [(k, v) for k, v in request.query_params.multi_items() if k not in override]
    items += [(k, v) for k, v in override.items() if v is not None]
    return urlencode(items)


# -- handlers ---------------------------------------------------------------------------------
def _state_of(ctx: HttpContext) -> QueryState | None:
    query: QueryState | None = ctx.query
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
                                                   "caught_up": view.caught_up,
                                                   "signed": qs.signed},
                    "instances": view.to_json()})


def _window_page(page: Page, limit: int) -> tuple[list[dict[str, Any]], bool, int | None]:
    """A window read of ``limit + 1`` rows cut to ``limit``: ``(rows, truncated, resume_from)``
    where every window starting before ``resume_from`` is in ``rows``."""
    rows = page.rows
    resumes = [page.resume] if page.resume is not None else []
    if page.resume is not None:
        rows = [r for r in rows if r["start"] < page.resume]
    if len(rows) > limit:
        resumes.append(rows[limit]["start"])
        rows = rows[:limit]
    resume = min(resumes) if resumes else None
    return rows, resume is not None, resume


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
                page = await run_in_threadpool(read_windows, info, store, key, p.span,
                                               p.limit + 1, qs.max_scan)
                rows, truncated, resume = _window_page(page, p.limit)
                for r in rows:
                    del r["key"]
                return _answer({**base, "windows": rows, "truncated": truncated,
                                "scan_limited": page.scan_limited, "resume_from": resume,
                                "served_by": qs.instance}, headers={SERVED_BY: qs.instance})
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
    query = _query_string(request, redirect=None)
    if p.redirect:
        return Response(status_code=307, headers={
            "location": str(owner.endpoint.url(path, query)), "cache-control": "no-store"})
    try:
        status, body = await _ask(qs, owner, path, query)
    except PeerError as exc:
        return _retry({"status": exc.status, **base, "owner": owner.instance,
                       "url": owner.url, "error": str(exc)}, 502)
    headers = {SERVED_BY: owner.instance, "x-streamproc-proxied-by": qs.instance}
    if status == 503:
        headers["retry-after"] = str(RETRY_AFTER_S)
    return _answer(body, status, headers)


def _list_local(qs: QueryState, info: StoreInfo, p: _Params, start: bytes | None,
                stop: bytes | None, prefix: bytes | None) -> dict[str, Any]:
    served: list[int] = []
    restoring: list[int] = []
    rows: list[dict[str, Any]] = []
    resumes: list[Any] = []
    held = sorted(qs.local.get(info.name, {}).items())
    # The request's scan budget, shared evenly: every partition makes progress.
    budget = max(1, qs.max_scan // max(1, len(held)))
    for partition, (task, store) in held:
        if task.state is not TaskState.RUNNING:
            restoring.append(partition)
            continue
        try:
            page = list_partition(info, store, partition, p.limit + 1, start=start,
                                  stop=stop, prefix=prefix, span=p.span, max_scan=budget)
        except StoreNotOpen:
            continue  # revoked since the map was published: another instance has it
        rows.extend(page.rows)
        if page.resume is not None:
            resumes.append(page.resume)
        served.append(partition)
    body: dict[str, Any] = {"partitions": served, "restoring": restoring, "items": rows,
                            "scan_limited": bool(resumes)}
    if resumes:
        # Where the earliest partition stopped: everything before it is in "items".
        body["resume"] = min(resumes, key=lambda r: _order(info, r))
    return body


def _order(info: StoreInfo, point: Any) -> tuple[Any, ...]:
    """The sort key of a resume point (a window start, or a decoded key)."""
    return (int(point),) if info.kind == "window" else row_order(info, {"key": point})


def _merge(info: StoreInfo, answers: list[tuple[str, dict[str, Any]]], limit: int
           ) -> tuple[list[dict[str, Any]], list[int], list[int], bool, Any]:
    """Rows of every answer in store order, each partition from the first answer serving it;
    ``(rows, served, restoring, truncated, next)``. ``next``: where the next page starts (a
    key for key-value stores, a window start for window stores); every row before it is in
    ``rows``. A partition that ran out of scan budget bounds it too (rows past its resume
    point are left out: that partition has not been read that far)."""
    taken: set[int] = set()
    restoring: set[int] = set()
    rows: list[dict[str, Any]] = []
    bounds: list[Any] = []
    for _, a in answers:
        mine = set(a["partitions"]) - taken
        taken |= mine
        restoring |= set(a.get("restoring", ()))
        rows.extend(r for r in a["items"] if r["partition"] in mine)
        if a.get("resume") is not None:
            bounds.append(a["resume"])
    rows.sort(key=lambda r: row_order(info, r))
    window = info.kind == "window"
    if bounds:
        bound = _order(info, min(bounds, key=lambda b: _order(info, b)))
        rows = [r for r in rows if row_order(info, r)[:1] < bound[:1]] if window else \
            [r for r in rows if row_order(info, r) < bound]
    truncated = len(rows) > limit or bool(bounds) or any(a.get("truncated")
                                                          for _, a in answers)
    nexts = [r["start"] if window else r["key"] for r in rows[limit:limit + 1]]
    nexts += bounds
    nexts += [a["next"] for _, a in answers if a.get("next") is not None]
    # Another instance's page of windows ended at its resume_from (its rows cut at limit).
    nexts += [a["resume_from"] for _, a in answers if window and a.get("resume_from") is not None]
    nxt = min(nexts, key=lambda k: _order(info, k)) if nexts else None
    return rows[:limit], sorted(taken), sorted(restoring - taken), truncated, nxt


def _answer_problem(info: StoreInfo, a: Any, partitions: int) -> str | None:
    """Why another instance's listing cannot be merged (None: it can): the shapes _merge
    relies on, partitions that exist, rows of the partitions the answer claims."""
    if not isinstance(a.get("items"), list) or not isinstance(a.get("partitions"), list) \
            or not isinstance(a.get("restoring", []), list):
        return "not a listing"
    parts = [*a["partitions"], *a.get("restoring", [])]
    if not all(type(x) is int and 0 <= x < partitions for x in parts):
        return "partitions that do not exist"
    claimed = set(a["partitions"])
    for r in a["items"]:
        if not isinstance(r, dict) or r.get("partition") not in claimed or "key" not in r:
            return "a row of no partition it serves"
        if info.kind == "window" and not (type(r.get("start")) is int
                                          and type(r.get("end")) is int):
            return "a window row without start and end"
    for name in ("resume", "resume_from"):
        point = a.get(name)
        if point is not None and info.kind == "window" and type(point) is not int:
            return f"a {name} that is not a window start"
    return None


async def _ask_listing(qs: QueryState, info: StoreInfo, owner: Entry, query: str
                       ) -> dict[str, Any]:
    status, answer = await _ask(qs, owner, f"/state/{quote(info.name, safe='')}", query)
    listing: dict[str, Any] = answer
    if status != 200:
        raise PeerError("owner_bad_answer", f"the owner answered HTTP {status}")
    problem = _answer_problem(info, answer, qs.partitions(info))
    if problem is not None:
        raise PeerError("owner_bad_answer", f"the owner's listing has {problem}")
    return listing


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
        owners = {e.instance: e for e in qs.view.owners.values() if e.instance != qs.instance}
        others = [owners[i] for i in sorted(owners)]
        asked, skipped = others[:qs.max_fanout], others[qs.max_fanout:]
        errors += [{"instance": e.instance, "url": e.url,
                    "error": f"not asked: more than {qs.max_fanout} other instances "
                             "(http_state_max_fanout)"} for e in skipped]
        query = _query_string(request, scope="local", redirect=None)
        results = await asyncio.gather(*(_ask_listing(qs, info, e, query) for e in asked),
                                       return_exceptions=True)
        for e, res in zip(asked, results, strict=True):
            if isinstance(res, PeerError):
                errors.append({"instance": e.instance, "url": e.url, "status": res.status,
                               "error": str(res)})
            elif isinstance(res, BaseException):
                raise res
            else:
                answers.append((e.instance, res))
    rows, served, restoring, truncated, nxt = _merge(info, answers, p.limit)
    total = qs.partitions(info)
    missing = sorted(set(range(total)) - set(served) - set(restoring)) \
        if p.scope == "all" else []
    scan_limited = any(a.get("scan_limited") for _, a in answers)
    body: dict[str, Any] = {
        "store": info.name, "kind": info.kind, "scope": p.scope, "partitions": served,
        "restoring": restoring, "items": rows, "truncated": truncated,
        "next": nxt if info.kind != "window" else None,
        "resume_from": nxt if info.kind == "window" else None,
        "scan_limited": scan_limited, "served_by": qs.instance}
    if p.scope == "local" and scan_limited:
        body["resume"] = local["resume"]  # for an instance merging this answer into its own
    if p.scope == "all":
        body.update(complete=not missing and not restoring and not errors, missing=missing,
                    instances=[i for i, _ in answers], errors=errors)
    return _answer(body, headers={SERVED_BY: qs.instance})


@register_routes
def state_routes(ctx: HttpContext) -> list[BaseRoute]:
    """The ``/state`` routes (registered when this module is imported)."""

    async def guarded(request: Request, key: str | None) -> Response:
        if ctx.settings is not None and not ctx.settings.http_state_enabled:
            return _answer({"status": "disabled", "error": "queryable state is off on this "
                            "instance (http_state_enabled)"}, 404)
        qs = _state_of(ctx)
        if qs is None or qs.registry is None:
            return _retry({"status": "starting"})
        if qs.inflight >= qs.max_concurrent:
            return _retry({"status": "busy", "error": f"{qs.max_concurrent} requests are "
                           "being served (http_state_max_concurrent)"})
        qs.inflight += 1  # the server's loop is one thread: no lock needed
        started = time.monotonic()
        try:
            p = _params(request, qs.max_rows)
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
        finally:
            qs.inflight -= 1

    async def overview(request: Request) -> Response:
        return await guarded(request, None)

    async def one(request: Request) -> Response:
        return await guarded(request, request.path_params["key"])

    return [Route("/state", overview), Route("/state/{store}", overview),
            Route("/state/{store}/{key:path}", one)]
