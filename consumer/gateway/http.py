"""One HTTP exchange over ASGI, and the small helpers the routes need (JSON, SSE, host checks).

Pitfalls this handles (each seen with hypercorn 0.18 under trio):
- hypercorn closes an HTTP/1.1 connection as soon as a response ends if the request body was not
  read to its end, and a client still uploading then sees "broken pipe" instead of the error:
  `drain` reads the rest (bounded) before an early error response;
- after a client left, sends are dropped silently or raise; `body` never lets that escape, so the
  request's bookkeeping (spending) still runs.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from meshmarket.consumer.gateway.backend import GatewayError
from meshmarket.consumer.gateway.schema import bad
from meshmarket.consumer.gateway.spending import Reservation

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

SSE_DONE = b"data: [DONE]\n\n"
#: Largest integer a JavaScript Number (IEEE double) holds exactly.
JS_MAX_SAFE_INTEGER = 2**53 - 1


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(obj: Any) -> bytes:
    return json_dumps(obj).encode("utf-8")


def sse(obj: dict) -> bytes:
    """One server-sent event. JSON never contains a raw newline, so one `data:` line suffices."""
    return b"data: " + dumps(obj) + b"\n\n"


def json_safe(obj: Any) -> Any:
    """A copy where integers a browser would round (beyond 2^53-1) become decimal strings.

    The token caps supply at 2^64-1, so stakes and sums can exceed what JSON.parse keeps exactly;
    the explorer formats amounts from their digits, never through a float."""
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return str(obj) if abs(obj) > JS_MAX_SAFE_INTEGER else obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def is_loopback_host(host: str) -> bool:
    """'127.0.0.1', '::1', 'localhost' (also in brackets) -> True; '0.0.0.0', '' -> False."""
    h = host.strip().strip("[]").lower()
    if h in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_of(value: str) -> str:
    """A Host header or an Origin's authority -> its host part (brackets removed)."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    return v.rsplit(":", 1)[0] if v.count(":") == 1 else v


class ClientGone(Exception):
    """The client disconnected while its request was being read."""


def too_large(size: int, limit: int) -> GatewayError:
    return GatewayError(413, "invalid_request_error", "request_too_large",
                        f"The request body is {size:,} bytes; the limit is {limit:,} bytes.", None, spent=0)


def internal(request_id: str) -> GatewayError:
    return GatewayError(500, "server_error", "internal_error",
                        f"The gateway failed while handling your request (request id {request_id}); see its log.",
                        None)


class Exchange:
    """One HTTP request and its response, with the few helpers the routes need."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        self.scope = scope
        self.receive = receive
        self._send = send
        self.request_id = request_id
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        # header names are lower-case bytes in ASGI; a repeated header: the last one wins
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        self.started = False
        self.gone = False
        self.status = 0
        #: the spending reservation of a completion request
        self.reservation: Reservation | None = None
        #: whether the request body was read to its end (see `drain`)
        self.body_done = self.method in ("GET", "HEAD", "OPTIONS") and "content-length" not in self.headers \
            and "transfer-encoding" not in self.headers

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.started, self.status = True, status
        hs = [(b"x-request-id", self.request_id.encode())]
        hs += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await self._send({"type": "http.response.start", "status": status, "headers": hs})

    async def body(self, data: bytes, more: bool = False) -> None:
        """Send body bytes; once the client has left, do nothing (the caller keeps its bookkeeping)."""
        if self.gone:
            return
        try:
            await self._send({"type": "http.response.body", "body": data, "more_body": more})
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone = True

    async def respond(self, status: int, data: bytes, content_type: str, headers=()) -> None:
        await self.start(status, [("content-type", content_type), ("content-length", str(len(data))), *headers])
        await self.body(b"" if self.method == "HEAD" else data)

    async def json(self, status: int, obj: Any, headers=()) -> None:
        await self.respond(status, dumps(obj), "application/json", [("cache-control", "no-store"), *headers])

    async def error(self, e: GatewayError, headers=()) -> None:
        extra = [("x-should-retry", "true" if e.retryable else "false"), *headers]
        await self.json(e.status, e.body(), extra)

    async def read_body(self, limit: int) -> bytes:
        """The whole request body, or GatewayError 413 as soon as it is known to exceed `limit`."""
        cl = self.headers.get("content-length")
        if cl is not None:
            if not cl.strip().isdigit():
                raise bad("Invalid Content-Length header.", None, "invalid_request")
            if int(cl) > limit:
                raise too_large(int(cl), limit)
        chunks, total = [], 0
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect":
                raise ClientGone()
            chunk = msg.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise too_large(total, limit)
            chunks.append(chunk)
            if not msg.get("more_body", False):
                self.body_done = True
                return b"".join(chunks)

    async def drain(self, max_bytes: int = 16 * 1024 * 1024, seconds: float = 2.0) -> None:
        """Read and drop the rest of the request body before an early error response (bounded in
        bytes and time: beyond that the client may see a reset)."""
        if self.body_done:
            return
        cl = self.headers.get("content-length", "").strip()
        if cl.isdigit() and int(cl) > max_bytes:
            return
        seen = 0
        with trio.move_on_after(seconds):
            while seen <= max_bytes:
                msg = await self.receive()
                if msg["type"] == "http.disconnect" or not msg.get("more_body", False):
                    self.body_done = True
                    return
                seen += len(msg.get("body", b""))
