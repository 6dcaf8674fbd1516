"""A fast path for the search endpoints: the routes' own work, without FastAPI's per-request machinery.

For a search that takes half a millisecond, FastAPI's generic request handling (dependency
solving, body reading and content negotiation, response building) costs about as much again.
This pure ASGI middleware answers the well-formed requests of the hot routes itself: it
reads the body once, checks the API key, validates the body with the very model the route
declares, runs the same handler and sends the JSON the handler made.

Everything else is replayed, byte for byte, to the FastAPI app behind it: another path or
method, a content type other than JSON, a missing or wrong key, a body that is not JSON or
does not validate. So every error a client can provoke before the search starts, and the
OpenAPI schema, stay exactly those of the routes; the fast path itself answers only 200s, the
errors the handler raises (which the routes answer the same way) and a streamed body that
outgrows the size limit (413, as the routes would).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from pydantic import BaseModel, ValidationError

from serving.errors import ApiError

log = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[bytes]]


@dataclass(frozen=True)
class FastRoute:
    """``POST path``: validate the JSON body as ``model``, answer ``await handler(body)`` (JSON bytes)."""

    model: type[BaseModel]
    handler: Handler


class FastPath:
    """Pure ASGI middleware in front of the FastAPI router (see the module docstring).

    ``authorized(scope)`` says whether the request carries the API key; ``error_response(scope,
    exc)`` turns an exception the handler raised into the app's JSON error response.
    """

    def __init__(self, app, routes: Mapping[str, FastRoute], authorized: Callable[[dict], bool],
                 error_response: Callable[[dict, BaseException], Any]):
        self.app = app
        self.routes = dict(routes)
        self.authorized = authorized
        self.error_response = error_response

    async def __call__(self, scope, receive, send):
        route = self.routes.get(scope.get("path")) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or scope.get("root_path") or not _is_json(scope) \
                or not self.authorized(scope):
            return await self.app(scope, receive, send)
        messages: list[dict] = []
        try:
            body = await _read_body(receive, messages)
        except ApiError as exc:         # the body-size limit tripped while the body streamed in
            return await self.error_response(scope, exc)(scope, receive, send)
        parsed = _validate(route.model, body) if body is not None else None
        if parsed is None:
            return await self.app(scope, _replay(messages, receive), send)
        try:
            payload = await route.handler(parsed)
        except Exception as exc:  # noqa: BLE001 - answered as the routes' error handlers would
            if not isinstance(exc, ApiError):
                log.error("unhandled error on POST %s", scope["path"], exc_info=exc)
            return await self.error_response(scope, exc)(scope, receive, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(payload)).encode("latin-1")),
                                (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})


def _is_json(scope) -> bool:
    """``application/json`` or ``application/*+json`` (parameters allowed), as FastAPI reads JSON bodies."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))
    return False


async def _read_body(receive, messages: list[dict]) -> bytes | None:
    """The whole body, keeping each message for a replay; None if the client went away first."""
    chunks = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _validate(model: type[BaseModel], body: bytes) -> BaseModel | None:
    """The validated request, or None when FastAPI should answer (it parses JSON with ``json.loads``
    too, so both paths accept exactly the same bodies)."""
    try:
        return model.model_validate(json.loads(body))
    except (ValueError, ValidationError, RecursionError):   # JSONDecodeError, UnicodeDecodeError are ValueErrors
        return None


def _replay(messages: list[dict], receive):
    """A ``receive`` that hands out the messages already read, then the client's own."""
    pending = list(messages)

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()
    return replay
