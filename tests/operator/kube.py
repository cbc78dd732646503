"""A Kubernetes API for tests: kmock's emulator with the gaps that matter to kopf filled in.

kmock's `KubernetesEmulator` stores objects and streams watch events, but it
stamps no uid/resourceVersion/generation, knows no status subresource, enforces no schema and
names no objects created with `generateName`. `Emulator` adds, on every write:

- uid, creationTimestamp, generation=1 and a fresh resourceVersion on create; `generateName`;
- a new resourceVersion on every write that changes the object (a no-op write changes nothing and
  emits no event, like the API server), generation+1 when `spec` changes;
- status-subresource semantics: writes to the object ignore `status`, writes to `/status` only touch it;
- optimistic concurrency: a merge patch or PUT carrying another resourceVersion gets 409, a failed
  JSON-patch `test` gets 422 (what kopf's finalizer patch expects);
- structural-schema validation of every write of a resource that has a schema (our generated CRD),
  where an unknown field is an ERROR (the API server would silently prune it): 422, recorded in
  `rejections` so a test fails on it;
- the API server's size limits: annotations over 256 KiB in all (422, as ObjectMeta validation says),
  a request body over 3 MiB (413) and a stored object over etcd's 1.5 MiB (500, "request is too large");
- deletion with finalizers marks `deletionTimestamp` (a write like any other);
- `watch=True` (the kubernetes client's spelling), a watch's `timeoutSeconds`, PUT, lists with
  `kind`/`apiVersion`, and a list and
  watch of `/api/v1/namespaces` (a fixed set) so that kopf can serve named namespaces;
- a create answers 201 (the kubernetes client only decodes a created object from a 201);
- programmable faults (`inject`, `Fault`): the next N requests matching a method and a path answer an
  error (409, 429 with Retry-After, 500, ...) instead of being served, or are served late (past the
  client's timeout: the client gives up, the write still happens), or a watch stream is cut in the
  middle of an event line.

It does no garbage collection through ownerReferences: a test sees exactly what the operator deletes.

`KubeServer` runs the emulator on 127.0.0.1 in a thread of its own, so that tests stay synchronous
and the operator (`OperatorThread`) runs in another thread, as it would in its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import attrs
import jsonpatch
import kmock
import kubernetes
import pytest
from kmock._internal import dicts as kmock_dicts

from olmo_operator.__main__ import operate
from olmo_operator.metrics import Metrics
from olmo_operator.settings import Settings

OLMORUNS = kmock.resource("olmorun.dev", "v1alpha1", "olmoruns")
VCJOBS = kmock.resource("batch.volcano.sh", "v1alpha1", "jobs")
EVENTS = kmock.resource("", "v1", "events")
NAMESPACES = kmock.resource("", "v1", "namespaces")
SECRETS = kmock.resource("", "v1", "secrets")
PODS = kmock.resource("", "v1", "pods")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")

_VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
ANNOTATIONS_LIMIT = 256 * 1024
"""Bytes of all of an object's annotations, keys and values (apimachinery TotalAnnotationSizeLimitB)."""
REQUEST_LIMIT = 3 * 1024 * 1024
"""The API server's largest request body (apiserver MaxRequestBodyBytes, 3 MiB)."""
ETCD_LIMIT = 1536 * 1024
"""etcd's default --max-request-bytes (1.5 MiB): a larger object cannot be stored."""
SERVER_VERSION = "v1.30.0"
"""What the emulator reports at /version: the oldest Kubernetes the README and the chart support."""

TEST_AGENT = "olmorun-tests"
"""User-Agent of the clients the tests use (playing kubectl or Volcano): not the operator's requests."""
REQUEST_LOG: list[list[Call]] = []
"""The requests of every emulator of this test session, one list per server, appended when it stops: the
RBAC test (tests/e2e/test_rbac_from_requests.py) derives the verbs the operator really uses from it."""
_NAMESPACE_LIST = re.compile(r"^/api/v1/namespaces/?$")


# ---------------------------------------------------------------------------------------------
# Structural schema validation (the subset of OpenAPI v3 that CRDs use), pruning made an error
# ---------------------------------------------------------------------------------------------

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def validate_structural(value: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Every way `value` breaks a structural schema; fields the schema lacks are errors, not pruned.

    CEL rules (`x-kubernetes-validations`) are not evaluated: pydantic checks the same in the operator.
    """
    where = path or "<root>"
    if value is None:
        return [] if schema.get("nullable") else [f"{where}: null is not allowed"]
    if schema.get("x-kubernetes-int-or-string"):
        ok = _TYPES["integer"](value) or _TYPES["string"](value)
        # A string is still checked against `pattern` (a Kubernetes quantity, say), as the API server does.
        return (
            _scalar_problems(value, schema, where)
            if ok
            else [f"{where}: must be an integer or a string, got {type(value).__name__}"]
        )
    kind = schema.get("type")
    if kind is not None and not _TYPES[kind](value):
        return [f"{where}: must be {kind}, got {type(value).__name__}"]
    errors = _scalar_problems(value, schema, where)
    if isinstance(value, dict):
        errors += _object_problems(value, schema, path)
    elif isinstance(value, list):
        for bound, ok in (
            ("minItems", len(value) >= schema.get("minItems", 0)),
            ("maxItems", len(value) <= schema.get("maxItems", len(value))),
        ):
            if not ok:
                errors.append(f"{where}: {len(value)} items breaks {bound}={schema[bound]}")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += validate_structural(item, schema["items"], f"{path}[{i}]")
    return errors


def _scalar_problems(value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{where}: length {len(value)} is out of bounds")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
    if _TYPES["number"](value):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and (value < low or (schema.get("exclusiveMinimum") is True and value == low)):
            errors.append(f"{where}: {value} is below the minimum {low}")
        if high is not None and (value > high or (schema.get("exclusiveMaximum") is True and value == high)):
            errors.append(f"{where}: {value} is above the maximum {high}")
    return errors


def _object_problems(value: dict[str, Any], schema: Mapping[str, Any], path: str) -> list[str]:
    errors = []
    props: Mapping[str, Any] = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in value:
            errors.append(f"{path + '.' if path else ''}{key}: required field is missing")
    for key, item in value.items():
        child = f"{path}.{key}" if path else key
        if key in props:
            errors += validate_structural(item, props[key], child)
        elif isinstance(schema.get("additionalProperties"), Mapping):
            errors += validate_structural(item, schema["additionalProperties"], child)
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            errors.append(f"{child}: field not declared in the schema (the API server would prune it)")
    return errors


def crd_schemas(crd: Mapping[str, Any]) -> dict[kmock.resource, dict[str, Any]]:
    """The openAPIV3Schema of each served version of a CRD, by resource."""
    spec = crd["spec"]
    return {
        kmock.resource(spec["group"], version["name"], spec["names"]["plural"]): version["schema"][
            "openAPIV3Schema"
        ]
        for version in spec["versions"]
        if version.get("served", True)
    }


def crd_info(crd: Mapping[str, Any]) -> dict[kmock.resource, kmock.ResourceInfo]:
    """Discovery entries of a CRD (what the API server would serve once it is registered)."""
    spec = crd["spec"]
    names = spec["names"]
    return {
        kmock.resource(spec["group"], version["name"], names["plural"]): kmock.ResourceInfo(
            kind=names["kind"],
            singular=names.get("singular"),
            shortnames=names.get("shortNames", []),
            categories=names.get("categories", []),
            namespaced=spec["scope"] == "Namespaced",
            verbs=_VERBS,
            subresources=set(version.get("subresources", {})),
        )
        for version in spec["versions"]
    }


# ---------------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """A write the emulator refused: invalid content (`rejections`) or a lost race (`conflicts`)."""

    status: int
    resource: str
    name: str | None
    reasons: tuple[str, ...]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={"causes": []})


@dataclass
class Fault:
    """What the emulator does to the next `times` requests matching `method` and `path`.

    `method`: GET, POST, PATCH, PUT, DELETE, or WATCH (a GET with watch=true). `path`: a regular
    expression searched in the URL path (`/status$`, `/jobs$`, ...). Then, in this order: wait `delay`
    seconds (the request is still served: a client that timed out meanwhile does not know it was);
    answer `status` instead of serving it (with `Retry-After: retry_after` when given); for a watch,
    cut the stream after `drop_after` events, in the middle of the next event's line.
    """

    method: str
    path: str
    times: int = 1
    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    drop_after: int | None = None
    hits: int = 0
    """How many requests it has hit so far."""

    def matches(self, method: str, path: str) -> bool:
        return self.hits < self.times and method == self.method and re.search(self.path, path) is not None


@dataclass(frozen=True)
class Call:
    """One request as the emulator saw it (kept for counting: who asked what, when)."""

    action: str
    resource: str
    namespace: str | None
    name: str | None
    subresource: str | None
    agent: str
    at: float
    method: str = "GET"
    """The HTTP method: kmock's action UPDATE is a PATCH or a PUT, which RBAC tells apart (patch/update)."""
    group: str | None = None
    """The API group of the resource ("" for the core group; None for a non-resource URL such as /apis)."""
    fault: int | None = None
    """The status an injected fault answered instead of serving the request (None: served)."""

    @classmethod
    def of(cls, request: kmock.Request) -> Call:
        action = request.action.value if request.action is not None else str(request.method.value)
        if request.method == kmock.method.GET and request.params.get("watch", "").lower() == "true":
            action = "WATCH"
        name = request.name
        if name is None and isinstance(request.data, dict):  # a create names its object in the body
            name = (request.data.get("metadata") or {}).get("name")
        return cls(
            action=action,
            resource=str(request.resource.plural)
            if request.resource and request.resource.plural
            else request.url.path,
            namespace=request.namespace,
            name=name,
            subresource=request.subresource,
            agent=request.headers.get("User-Agent", ""),
            at=time.monotonic(),
            method=str(request.method.value),
            group=str(request.resource.group or "") if request.resource and request.resource.plural else None,
        )


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with uid/resourceVersion/generation, status subresource and schema checks."""

    schemas: dict[kmock.resource, dict[str, Any]] = attrs.field(factory=dict)
    rejections: list[Rejection] = attrs.field(factory=list)
    conflicts: list[Rejection] = attrs.field(factory=list)
    namespaces: set[str] = attrs.field(factory=lambda: {"default"})
    """What `GET /api/v1/namespaces` lists (a fixed set)."""
    log: list[Call] = attrs.field(factory=list)
    faults: list[Fault] = attrs.field(factory=list)
    _revisions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    def declare(self, resource: kmock.resource, info: kmock.ResourceInfo) -> None:
        self.resources[resource] = info

    async def _serve_version(self, request: Any) -> Any:
        """/api/v1 and /apis/<group>/<version>: kmock writes the core group's groupVersion as "/v1", which
        a REST mapper (Helm's) cannot parse, so it finds no core kind; a cluster says "v1"."""
        payload = await super()._serve_version(request)
        payload["groupVersion"] = str(payload["groupVersion"]).removeprefix("/")
        return payload

    async def _serve_server_version(self, request: Any) -> dict[str, str]:
        """/version: the oldest Kubernetes the chart supports (kmock says 1.26, which Helm then refuses
        against the chart's kubeVersion)."""
        return {"major": "1", "minor": "30", "gitVersion": SERVER_VERSION, "platform": "linux/amd64"}

    def declare_crd(self, crd: Mapping[str, Any]) -> None:
        """Register a CRD: discovery, status subresource and its schema (validated on every write)."""
        for resource, info in crd_info(crd).items():
            self.declare(resource, info)
        self.schemas.update(crd_schemas(crd))

    def _has_status(self, resource: kmock.resource) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    def inject(self, method: str, path: str, **fault: Any) -> Fault:
        """Add a fault (see Fault); returns it, so a test can read its `hits`."""
        added = Fault(method.upper(), path, **fault)
        self.faults.append(added)
        return added

    def _fault(self, method: str, path: str) -> Fault | None:
        found = next((f for f in self.faults if f.matches(method, path)), None)
        if found is not None:
            found.hits += 1
        return found

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        watch = raw_request.method == "GET" and raw_request.query.get("watch", "").lower() == "true"
        fault = None if watch else self._fault(raw_request.method, raw_request.path)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            self.log.append(
                Call(
                    raw_request.method,
                    raw_request.path,
                    None,
                    None,
                    None,
                    raw_request.headers.get("User-Agent", ""),
                    time.monotonic(),
                    method=raw_request.method,
                    fault=fault.status,
                )
            )
            reason = {
                409: "Conflict",
                429: "TooManyRequests",
                500: "InternalError",
                503: "ServiceUnavailable",
                504: "Timeout",
            }.get(fault.status, "Error")
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            body = {
                "apiVersion": "v1",
                "kind": "Status",
                "status": "Failure",
                "code": fault.status,
                "reason": reason,
                "message": f"injected fault: {reason}",
            }
            return aiohttp.web.json_response(body, status=fault.status, headers=headers)
        # kmock's URL parser reads `/api/v1/namespaces` as "a namespace with no name" and fails with
        # a 500 before any handler runs; kopf lists and watches it when it serves named namespaces.
        if raw_request.method == "GET" and _NAMESPACE_LIST.match(raw_request.path):
            return await self._serve_namespaces(raw_request)
        return await super().__call__(raw_request)

    async def _serve_namespaces(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        watch = raw_request.query.get("watch", "").lower() == "true"
        self.log.append(
            Call(
                "WATCH" if watch else "LIST",
                "namespaces",
                None,
                None,
                None,
                raw_request.headers.get("User-Agent", ""),
                time.monotonic(),
                group="",
            )
        )
        items = [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "uid": ns, "resourceVersion": "1"},
                "status": {"phase": "Active"},
            }
            for ns in sorted(self.namespaces)
        ]
        if not watch:
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "NamespaceList",
                    "metadata": {"resourceVersion": "1"},
                    "items": items,
                }
            )
        response = aiohttp.web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(raw_request)
        for item in items:
            await response.write(json.dumps({"type": "ADDED", "object": item}).encode() + b"\n")
        # The set of namespaces never changes: hold the stream open until its timeout or the shutdown.
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await asyncio.sleep(float(raw_request.query.get("timeoutSeconds") or 3600))
        return response

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self.log.append(Call.of(request))
        try:
            return await self._dispatch(request)
        finally:
            # kmock matches a request to its reactions by scanning every request ever served (O(n) per
            # request): keep only those in flight, so that 200 runs' worth of traffic stays fast.
            self._forget(request)

    async def _dispatch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.method == kmock.method.GET and request.params.get("watch", "").lower() == "true":
            request = self._swap(request, attrs.evolve(request, action=kmock.action.WATCH))
        if request.action == kmock.action.WATCH and request.resource is not None:
            return await self._stream_watch(request)
        writes = (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE)
        is_put = request.method == kmock.method.PUT and request.name is not None
        if request.resource is None or not (request.action in writes or is_put):
            return await super()._handle(request)
        async with self._write_lock:  # every write sees the state the previous one left
            key = (request.resource, request.namespace, request.name)
            current = self.objects[key] if key in self.objects and not self.objects[key].deleted else None
            if request.action == kmock.action.CREATE:
                response = await super()._handle(self._swap(request, self._prepare_create(request)))
                if response.status == 200 and not response.prepared:
                    response.set_status(201)  # "Created", as the API server answers (clients expect it)
                return response
            if current is None:
                raise kmock.KubernetesObjectNotFoundError()
            if request.action == kmock.action.DELETE:
                return await self._delete(request, current)
            return await self._update(request, current)

    async def _stream_watch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """A watch streamed as the API server does: JSON lines, `Content-Type: application/json`.

        kmock's generic stream is sent as application/octet-stream, which kopf and the Python client
        accept but kubectl refuses (`kubectl get -w`, `kubectl wait`).
        """
        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request._raw_request)
        stream = self._serve_watch(request)
        fault = self._fault("WATCH", request._raw_request.path)
        sent = 0
        try:
            async for event in stream:
                if not isinstance(event, dict):  # kmock opens its stream with an empty bytes chunk
                    continue
                line = json.dumps(event).encode() + b"\n"
                if fault is not None and fault.drop_after is not None and sent >= fault.drop_after:
                    await response.write(line[: len(line) // 2])  # cut in the middle of an event
                    if request._raw_request.transport is not None:
                        request._raw_request.transport.close()
                    break
                await response.write(line)
                sent += 1
        except (asyncio.CancelledError, ConnectionError):
            pass  # the client went away, or the server is stopping
        finally:
            await stream.aclose()
        return response

    def _swap(self, old: kmock.Request, new: kmock.Request) -> kmock.Request:
        """kmock finds reactions for requests it recorded (by identity): record the rewritten one."""
        self._requests[:] = [new if r is old else r for r in self._requests]
        return new

    def _forget(self, request: kmock.Request) -> None:
        self._requests[:] = [r for r in self._requests if r.id != request.id]

    def _prepare_create(self, request: kmock.Request) -> kmock.Request:
        assert request.resource is not None
        body = copy.deepcopy(request.data) if isinstance(request.data, dict) else {}
        meta = body.setdefault("metadata", {})
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        if not meta.get("name"):
            raise self._reject(422, request, ["metadata.name: required (or metadata.generateName)"])
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            generation=1,
            resourceVersion=str(next(self._revisions)),
        )
        if self._has_status(request.resource):
            body.pop("status", None)  # the API server ignores status on create when it is a subresource
        self._validate(request, body)
        return attrs.evolve(request, data=body, name=meta["name"], namespace=meta.get("namespace"))

    async def _update(self, request: kmock.Request, current: kmock.Object) -> aiohttp.web.StreamResponse:
        assert request.resource is not None
        old = copy.deepcopy(current.raw)
        new = self._apply(request, old)
        if new == old:  # the API server neither bumps resourceVersion nor emits an event on a no-op
            return aiohttp.web.json_response(old)
        new["metadata"]["resourceVersion"] = str(next(self._revisions))
        if new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self._validate(request, new)
        return await self._store(request, current, new)

    def _apply(self, request: kmock.Request, old: dict[str, Any]) -> dict[str, Any]:
        """The object a PATCH/PUT would produce, with status-subresource rules and preconditions."""
        assert request.resource is not None
        data = request.data
        status_only = request.subresource == "status"
        keep_status = self._has_status(request.resource) and not status_only
        current_rv = old["metadata"].get("resourceVersion")
        if isinstance(data, list):  # JSON patch (kopf: finalizers, guarded by a `test` of resourceVersion)
            try:
                new = jsonpatch.apply_patch(old, data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                # kopf's optimistic concurrency at work (a `test` of resourceVersion): not a test failure.
                raise self._reject(422, request, [f"JSON patch failed: {error}"], conflict=True) from None
        elif isinstance(data, dict):
            wanted_rv = (data.get("metadata") or {}).get("resourceVersion")
            if wanted_rv is not None and wanted_rv != current_rv:
                raise self._reject(
                    409, request, [f"resourceVersion {wanted_rv} is stale (now {current_rv})"], conflict=True
                )
            if request.method == kmock.method.PUT:
                new = copy.deepcopy(data)
                new.setdefault("metadata", {}).update(
                    {
                        k: old["metadata"][k]
                        for k in ("uid", "creationTimestamp", "generation")
                        if k in old["metadata"]
                    }
                )
            else:
                try:
                    new = dict(kmock_dicts.patch_dict(old, data))
                except ValueError as error:
                    raise self._reject(422, request, [str(error)]) from None
        else:
            raise self._reject(400, request, ["the body must be a JSON object or a JSON patch"])
        new = copy.deepcopy(new)
        if keep_status:  # writes to the main resource cannot change status
            new.pop("status", None)
            if "status" in old:
                new["status"] = old["status"]
        if status_only:  # writes to /status cannot change anything else
            new = (
                {**old, "status": new.get("status")}
                if new.get("status") is not None
                else {k: v for k, v in old.items() if k != "status"}
            )
        new.setdefault("metadata", {})["resourceVersion"] = current_rv
        return new

    async def _store(
        self, request: kmock.Request, current: kmock.Object, new: dict[str, Any]
    ) -> aiohttp.web.StreamResponse:
        assert request.resource is not None
        meta = new["metadata"]
        released = bool(meta.get("deletionTimestamp")) and not meta.get("finalizers")
        async with self._lock:
            current.create(new)  # a new version of the object (kmock keeps the history)
            event = "DELETED" if released else "MODIFIED"
            if released:
                current.delete()
            await self._buses[request.resource].put({"type": event, "object": copy.deepcopy(new)})
        return aiohttp.web.json_response(new)

    async def _delete(self, request: kmock.Request, current: kmock.Object) -> aiohttp.web.StreamResponse:
        assert request.resource is not None
        old = copy.deepcopy(current.raw)
        meta = old["metadata"]
        if meta.get("finalizers") and not meta.get("deletionTimestamp"):
            new = copy.deepcopy(old)
            new["metadata"].update(deletionTimestamp=_now(), resourceVersion=str(next(self._revisions)))
            new["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
            return await self._store(request, current, new)
        if meta.get("deletionTimestamp"):
            return aiohttp.web.json_response(old)  # already being deleted: wait for the finalizers
        async with self._lock:
            current.delete()
            await self._buses[request.resource].put({"type": "DELETED", "object": old})
        return aiohttp.web.json_response(
            {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": request.name}}
        )

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        """kmock's watch, ended after `timeoutSeconds` like the API server's (clients then re-watch)."""
        timeout = float(request.params.get("timeoutSeconds") or 0)
        stream = super()._serve_watch(request)
        if not timeout:
            async for item in stream:
                yield item
            return
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    item = await asyncio.wait_for(anext(stream), timeout=left)
                except (StopAsyncIteration, TimeoutError):
                    break
                yield item
        finally:
            await stream.aclose()

    async def _serve_list(self, request: kmock.Request) -> Any:
        payload = await super()._serve_list(request)
        assert request.resource is not None
        info = self.resources.get(request.resource, None)
        group, version = request.resource.group, request.resource.version
        payload["apiVersion"] = f"{group}/{version}" if group else str(version)
        payload["kind"] = f"{info.kind}List" if info is not None and info.kind else "List"
        payload["metadata"] = {"resourceVersion": str(next(self._revisions))}
        return payload

    def _validate(self, request: kmock.Request, body: dict[str, Any]) -> None:
        assert request.resource is not None
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        total = sum(len(k.encode()) + len(str(v).encode()) for k, v in annotations.items())
        if total > ANNOTATIONS_LIMIT:  # apimachinery's ValidateAnnotationsSize, TotalAnnotationSizeLimitB
            raise self._reject(
                422, request, [f"metadata.annotations: Too long: must have at most {ANNOTATIONS_LIMIT} bytes"]
            )
        size = len(json.dumps(body).encode())
        if size > REQUEST_LIMIT:
            raise self._reject(413, request, [f"Request entity too large: limit is {REQUEST_LIMIT}"])
        if size > ETCD_LIMIT:
            raise self._reject(500, request, ["etcdserver: request is too large"])
        schema = self.schemas.get(request.resource)
        if schema is None:
            return
        # The API server checks metadata as ObjectMeta, not against the CRD schema.
        problems = validate_structural({**body, "metadata": {}}, schema)
        if problems:
            raise self._reject(422, request, problems)

    def _reject(
        self, status: int, request: kmock.Request, reasons: list[str], *, conflict: bool = False
    ) -> kmock.KubernetesError:
        """An API error to raise; refused content (not lost races) is recorded in `rejections`."""
        name = request.name or (
            (request.data or {}).get("metadata", {}).get("name") if isinstance(request.data, dict) else None
        )
        res = request.resource
        where = f"{res.group}/{res.version}/{res.plural}" if res is not None else request.url.path
        (self.conflicts if conflict else self.rejections).append(
            Rejection(status, where, name, tuple(reasons))
        )
        reason = {409: "Conflict", 422: "Invalid", 400: "BadRequest"}.get(status, "Error")
        return _error(status, reason, "; ".join(reasons))


# ---------------------------------------------------------------------------------------------
# Running it: a server thread, and the kopf operator in another
# ---------------------------------------------------------------------------------------------


class _ApiServerBodies(aiohttp.test_utils.RawTestServer):
    """kmock's HTTP server taking request bodies up to the API server's limit (aiohttp's default is
    1 MiB); Emulator._validate answers a larger one as the API server does."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web.ServerRunner:
        loop = self._loop

        def request(*args: Any) -> aiohttp.web.BaseRequest:
            return aiohttp.web.BaseRequest(*args, loop, client_max_size=2 * REQUEST_LIMIT)

        server = aiohttp.web.Server(self._handler, loop=loop, debug=debug, request_factory=request, **kwargs)
        return aiohttp.web.ServerRunner(server, debug=debug, **kwargs)


class KubeServer:
    """The emulator served on 127.0.0.1:<random port> from a background event loop."""

    def __init__(
        self, crds: Sequence[Mapping[str, Any]] = (), namespaces: tuple[str, ...] = ("default",)
    ) -> None:
        self.emulator = Emulator(namespaces=set(namespaces))
        for resource in (NAMESPACES, EVENTS, SECRETS, PODS):
            kind = {"namespaces": "Namespace", "events": "Event", "secrets": "Secret", "pods": "Pod"}[
                str(resource.plural)
            ]
            self.emulator.declare(
                resource, kmock.ResourceInfo(kind=kind, verbs=_VERBS, namespaced=resource is not NAMESPACES)
            )
        self.emulator.declare(
            VCJOBS,
            kmock.ResourceInfo(
                kind="Job", singular="job", namespaced=True, verbs=_VERBS, subresources={"status"}
            ),
        )
        # The CRDs are served as objects too, as a cluster does: kopf watches them to follow resource changes.
        self.emulator.declare(
            CRDS,
            kmock.ResourceInfo(
                kind="CustomResourceDefinition",
                namespaced=False,
                verbs=_VERBS,
                shortnames=["crd", "crds"],
                singular="customresourcedefinition",
            ),
        )
        self._crds = list(crds)
        for crd in crds:
            self.emulator.declare_crd(crd)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kube-emulator", daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self.url = ""

    def __enter__(self) -> KubeServer:
        self._thread.start()
        self.url = str(self.call(self._start()))
        client = kubernetes.client.CustomObjectsApi(self.api_client())
        for crd in self._crds:  # applied as `kubectl apply -f manifests/crd/` would
            client.create_cluster_custom_object(
                "apiextensions.k8s.io", "v1", "customresourcedefinitions", dict(crd)
            )
        return self

    def __exit__(self, *exc: object) -> None:
        REQUEST_LOG.append(list(self.emulator.log))
        self.call(self._stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _start(self) -> str:
        # The lock of kmock's emulator binds to the loop that first awaits it: create them here.
        self.emulator._lock = asyncio.Lock()
        self.emulator._write_lock = asyncio.Lock()
        await self._stack.enter_async_context(self.emulator)
        server = await self._stack.enter_async_context(
            kmock.Server(self.emulator, server_cls=_ApiServerBodies)
        )
        return str(server.url).rstrip("/")

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # --- for assertions (read from the emulator's memory, no request recorded) ---

    def objects(self, resource: kmock.resource, namespace: str | None = None) -> dict[str, dict[str, Any]]:
        """Live objects of a resource by name (a snapshot)."""

        async def snapshot() -> dict[str, dict[str, Any]]:
            async with self.emulator._lock:
                return {
                    name: copy.deepcopy(obj.raw)
                    for (res, ns, name), obj in self.emulator.objects.items()
                    if res == resource and not obj.deleted and (namespace is None or ns == namespace)
                }

        return dict(self.call(snapshot()))

    def get(self, resource: kmock.resource, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects(resource, namespace).get(name)

    def ever_created(self, resource: kmock.resource) -> list[str]:
        """Names of every object of a resource ever created, deleted ones included, one per creation."""
        names = []
        for (res, _, name), obj in list(self.emulator.objects.items()):
            if res == resource:
                history = list(obj.history)
                names += [
                    name
                    for prev, cur in zip([None, *history], history, strict=False)
                    if prev is None and cur is not None
                ]
        return names

    @property
    def calls(self) -> list[Call]:
        """Every request served so far (a snapshot)."""
        return list(self.emulator.log)

    # --- a client, as kubectl or the Volcano controller would use it ---

    def api_client(self) -> kubernetes.client.ApiClient:
        config = kubernetes.client.Configuration()
        config.host = self.url
        client = kubernetes.client.ApiClient(config)
        client.user_agent = TEST_AGENT
        return client


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll until `predicate()` is truthy; returns its value or fails with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class OperatorThread:
    """The real operator (`olmo_operator.__main__.operate`: kopf + our handlers) in a thread.

    It talks to the emulator over HTTP like the real one talks to a cluster; stopping it and starting
    a new one is an operator restart (its in-memory state is lost, the cluster's is not).
    """

    def __init__(
        self,
        kube: KubeServer,
        *,
        resync_seconds: float = 0.3,
        health_port: int = 0,
        namespaces: tuple[str, ...] = (),
        metrics: Metrics | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        self.settings = Settings(
            namespaces=namespaces,
            resync_seconds=resync_seconds,
            error_delay_seconds=0.5,
            metrics_port=0,
            health_port=health_port,
            kube_server=kube.url,
            max_workers=4,
            log_level="INFO",
            request_timeout_seconds=request_timeout,
        )
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="olmo-operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(
                operate(
                    self.settings,
                    metrics=self.metrics,
                    clock=self.clock,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                )
            )
        except BaseException as error:  # surfaced by __enter__/__exit__: a crashed operator fails the test
            self._error = error
            self._ready.set()

    def __enter__(self) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(timeout=30) or self._error is not None:
            raise RuntimeError(f"the operator did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise RuntimeError("the operator did not stop within 30s")
        if self._error is not None:
            raise RuntimeError(f"the operator crashed: {self._error!r}") from self._error


# ---------------------------------------------------------------------------------------------
# pytest fixtures (tests/conftest.py exposes them to every test)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(name="kube")
def kube_fixture() -> Iterator[KubeServer]:
    """An emulated cluster that knows the OlmoRun CRD (schema enforced) and Volcano Jobs.

    Fails the test at teardown if any write was refused that the test did not clear from
    `kube.emulator.rejections` (a status field missing from the CRD schema ends up here).
    """
    from olmo_operator.crd import build_crd

    with KubeServer([build_crd()]) as server:
        yield server
        refused = server.emulator.rejections
        assert refused == [], f"writes refused by the emulated API server: {refused}"


@pytest.fixture(name="kubectl")
def kubectl_fixture(kube: KubeServer) -> kubernetes.client.CustomObjectsApi:
    """A client of the emulated cluster, as kubectl (or the Volcano controller) would use it."""
    return kubernetes.client.CustomObjectsApi(kube.api_client())
