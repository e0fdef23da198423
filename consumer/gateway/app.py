"""The OpenAI-compatible HTTP gateway: a plain ASGI 3 application, served by hypercorn's trio worker
in the same trio loop as the consumer's libp2p node (consumer.gateway.serve).

Routes
    GET  /                           the market explorer (explorer/index.html, .js, .css, favicon)
    GET  /api/market                 JSON snapshot for the explorer (Backend.market + spending)
    GET  /v1/models                  OpenAI model list; GET /v1/models/{id} one model
    POST /v1/chat/completions        chat, streamed (SSE) or not
    POST /v1/completions             raw-prompt completion, streamed or not
    GET  /v1/meshmarket/jobs/{id}    a job's state on-chain now (follow a contested receipt)

Why plain ASGI and no framework: what matters is *when* the response starts. A streamed request
keeps its HTTP status open until the market releases its first text, so a refusal (unknown model,
over budget, too few providers) is still a proper 4xx/5xx that the openai client maps to its
exception classes; only a failure after the first text becomes an SSE error event. That, the SSE
framing, body limits and auth are a few hundred lines; a framework would add a layer (anyio for
Starlette) between trio and the app for routing a handful of paths.

Security defaults: the gateway spends its account's tokens, so besides the API key (required for a
non-loopback bind, compared in constant time) POST bodies must be application/json (a page on
another origin cannot send that without a CORS preflight, which is never granted), requests with a
foreign Origin are refused, and without a key the Host header must be a loopback name (DNS
rebinding).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import trio

from meshmarket.consumer.gateway.backend import Backend, Completion, CompletionRequest, GatewayError
from meshmarket.consumer.gateway.config import GatewayConfig
from meshmarket.consumer.gateway.http import (SSE_DONE, ClientGone, Exchange, Receive, Scope, Send, host_of, internal,
                                   is_loopback_host, json_safe, sse)
from meshmarket.consumer.gateway.schema import ChunkMaker, full_response, new_id, parse_chat, parse_completion, parse_json_body
from meshmarket.consumer.gateway.spending import SpendingGuard

log = logging.getLogger("meshmarket.gateway")

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/explorer.js": ("explorer.js", "text/javascript; charset=utf-8"),
    "/explorer.css": ("explorer.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_JOBS_PREFIX = "/v1/meshmarket/jobs/"


def fingerprint_of(model_entry: dict) -> str:
    """A model's system_fingerprint before any receipt: its entry's, else one from its hash."""
    fp = model_entry.get("system_fingerprint")
    if isinstance(fp, str) and fp:
        return fp
    h = str(model_entry.get("model_hash", "")).removeprefix("0x")
    if h:
        return "fp_" + h[:10].lower()
    return "fp_" + hashlib.sha256(str(model_entry.get("id", "")).encode()).hexdigest()[:10]


class Gateway:
    """The ASGI app: `Gateway(backend, GatewayConfig(...))`."""

    def __init__(self, backend: Backend, config: GatewayConfig, *, clock: Callable[[], float] = time.time,
                 spending_path: Path | None = None) -> None:
        self.backend = backend
        self.config = config
        self.clock = clock
        self.guard = SpendingGuard(config.request_cap, config.daily_cap, clock, spending_path)
        self._key_digest = hashlib.sha256(config.api_key.encode()).digest() if config.api_key else None
        self._models: dict[str, dict] = {}
        self._models_at = -math.inf
        self._static = self._load_static()
        self._routes: dict[str, dict[str, Callable[[Exchange], Awaitable[None]]]] = {
            "/api/market": {"GET": self._market},
            "/v1/models": {"GET": self._list_models},
            "/v1/chat/completions": {"POST": lambda x: self._completion(x, "chat")},
            "/v1/completions": {"POST": lambda x: self._completion(x, "completion")},
        }
        for path in _STATIC:
            self._routes[path] = {"GET": self._static_file}

    @staticmethod
    def _load_static() -> dict[str, tuple[bytes, str, str]]:
        out = {}
        root = resources.files("meshmarket.consumer.gateway").joinpath("explorer")
        for path, (name, ctype) in _STATIC.items():
            data = root.joinpath(name).read_bytes()
            out[path] = (data, ctype, '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
        return out

    # -------------------------------------------------------------------------- ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":  # not offered: refuse the handshake
            msg = await receive()
            if msg["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:  # warm the model cache; a market that is down now may be up later
                    with trio.move_on_after(5):
                        await self._refresh_models()
                except Exception as e:  # noqa: BLE001 - startup must not fail on a slow market
                    log.warning("gateway: could not list models at startup: %s", e)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _route(self, x: Exchange) -> Callable[[Exchange], Awaitable[None]]:
        methods = self._routes.get(x.path)
        if methods is None and x.path.startswith("/v1/models/"):
            methods = {"GET": self._get_model}
        if methods is None and x.path.startswith(_JOBS_PREFIX):
            methods = {"GET": self._job}
        if methods is None:
            raise GatewayError(404, "invalid_request_error", None, f"Invalid URL ({x.method} {x.path})", None)
        handler = methods.get("GET" if x.method == "HEAD" else x.method)
        if handler is None:
            raise GatewayError(405, "invalid_request_error", "method_not_allowed",
                               f"{x.method} is not allowed on {x.path}; use {', '.join(sorted(methods))}.", None)
        return handler

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        x = Exchange(scope, receive, send, "req_" + secrets.token_hex(12))
        try:
            self._check_origin(x)
            self._check_auth(x)
            await self._route(x)(x)
        except GatewayError as e:
            if not x.started:
                await x.drain()
                await x.error(e, self._error_headers(x, e))
        except ClientGone:
            pass
        except Exception:
            log.exception("gateway: %s %s failed (%s)", x.method, x.path, x.request_id)
            if not x.started:
                await x.error(internal(x.request_id))

    def _error_headers(self, x: Exchange, e: GatewayError) -> list[tuple[str, str]]:
        if e.status == 401:
            browser = not x.path.startswith("/v1/")
            return [("www-authenticate", 'Basic realm="meshmarket", charset="UTF-8"' if browser
                     else 'Bearer realm="meshmarket"')]
        if e.status == 405:
            return [("allow", ", ".join(sorted(self._routes.get(x.path, {"GET": None}))))]
        if e.status == 413 or not x.body_done:
            return [("connection", "close")]
        return []

    # -------------------------------------------------------------------------- guards

    def _check_origin(self, x: Exchange) -> None:
        host = x.headers.get("host", "")
        if self._key_digest is None and host and not is_loopback_host(host_of(host)):
            raise GatewayError(403, "permission_error", "invalid_host",
                               f"Host {host!r} is not a loopback name. Without an API key this gateway only answers "
                               "requests for 127.0.0.1/localhost (protection against DNS rebinding).", None)
        origin = x.headers.get("origin")
        if origin is not None:
            authority = origin.split("://", 1)[-1].rstrip("/")
            if not host or authority.lower() != host.lower():
                raise GatewayError(403, "permission_error", "cross_origin",
                                   f"Requests from origin {origin!r} are not allowed.", None)

    def _check_auth(self, x: Exchange) -> None:
        if self._key_digest is None:
            return
        given = ""
        scheme, _, cred = x.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer":
            given = cred.strip()
        elif scheme.lower() == "basic":  # browsers: the explorer page behind the key
            try:
                given = base64.b64decode(cred.strip(), validate=True).decode("utf-8").partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                given = ""
        # compare fixed-length digests: constant time, and the key's length does not leak either
        if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._key_digest) or not given:
            raise GatewayError(401, "invalid_request_error", "invalid_api_key",
                               "Missing or incorrect API key: send 'Authorization: Bearer <key>'.", None, spent=0)

    # -------------------------------------------------------------------------- static and JSON routes

    async def _static_file(self, x: Exchange) -> None:
        data, ctype, etag = self._static[x.path]
        headers = [("etag", etag), ("cache-control", "no-cache"), ("x-content-type-options", "nosniff"),
                   ("referrer-policy", "no-referrer")]
        if x.path == "/":
            headers.append(("content-security-policy", _CSP))
        if x.headers.get("if-none-match") == etag:
            await x.start(304, headers)
            await x.body(b"")
            return
        await x.respond(200, data, ctype, headers)

    async def _market(self, x: Exchange) -> None:
        try:
            snap = await self.backend.market()
        except GatewayError:
            raise
        except Exception as e:
            log.warning("gateway: market snapshot failed: %s", e)
            raise GatewayError(503, "market_unavailable", "market_unavailable",
                               f"The market snapshot is unavailable: {e}", None, retryable=True) from None
        out = dict(snap)
        out["gateway"] = {**self.guard.snapshot(), "max_price": self.config.max_price,
                          "poll_ms": self.config.explorer_poll_ms, "time": int(self.clock())}
        await x.json(200, json_safe(out))

    async def _job(self, x: Exchange) -> None:
        await x.json(200, await self.backend.job(x.path[len(_JOBS_PREFIX):]))

    async def _refresh_models(self) -> list[dict]:
        models = await self.backend.models()
        self._models = {m["id"]: m for m in models}
        self._models_at = trio.current_time()
        return models

    @staticmethod
    def _model_object(m: dict) -> dict:
        created = m.get("created")
        extra = {k: v for k, v in m.items() if k not in ("id", "created", "object", "owned_by")}
        return {"id": m["id"], "object": "model", "created": created if isinstance(created, int) else 0,
                "owned_by": m.get("owned_by", "meshmarket"), "meshmarket": extra}

    async def _list_models(self, x: Exchange) -> None:
        models = await self._refresh_models()
        await x.json(200, {"object": "list", "data": [self._model_object(m) for m in models]})

    async def _get_model(self, x: Exchange) -> None:
        model_id = x.path[len("/v1/models/"):]
        await self._refresh_models()
        m = self._models.get(model_id) or next((v for v in self._models.values()
                                                if v.get("model_hash") == model_id), None)
        if m is None:
            raise GatewayError(404, "invalid_request_error", "model_not_found",
                               f"The model '{model_id}' does not exist on the market.", "model")
        await x.json(200, self._model_object(m))

    async def _fingerprint(self, model: str) -> str:
        """The model's fingerprint for streamed chunks, from the cached model list (refreshed when
        stale, for at most 2 s; the backend says anyway whether the model exists)."""
        m = self._models.get(model)
        if m is None or trio.current_time() - self._models_at > self.config.models_ttl:
            try:
                with trio.move_on_after(2):
                    await self._refresh_models()
            except Exception as e:  # noqa: BLE001 - a fingerprint is not worth failing a request
                log.warning("gateway: could not list models: %s", e)
            m = self._models.get(model)
        return fingerprint_of(m if m is not None else {"id": model})

    # -------------------------------------------------------------------------- completions

    async def _completion(self, x: Exchange, kind: str) -> None:
        ctype = x.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise GatewayError(415, "invalid_request_error", "unsupported_media_type",
                               "The request body must be JSON sent with 'Content-Type: application/json'.", None,
                               spent=0)
        body = parse_json_body(await x.read_body(self.config.max_body_bytes))
        req = (parse_chat if kind == "chat" else parse_completion)(body, self.config, x.request_id)
        x.reservation = self.guard.reserve(req.max_cost)  # 402/429 before any work
        t0 = time.perf_counter()
        try:
            await (self._stream if req.stream else self._unary)(x, req)
        finally:
            self.guard.settle(x.reservation, req.max_cost)  # a no-op unless the request died unbooked
            log.info("gateway: %s %s model=%s stream=%s status=%s spent=%s in %.0f ms", x.request_id, kind,
                     req.model, req.stream, x.status, x.reservation.spent, (time.perf_counter() - t0) * 1000)

    def _book(self, x: Exchange, req: CompletionRequest, outcome: Completion | GatewayError, streamed: bool) -> None:
        """Book what the request took against the daily cap (GatewayError.spent says how), before
        the last bytes go out: a client that has its answer also sees the spending booked."""
        spent = req.max_cost
        if isinstance(outcome, Completion):
            value = outcome.receipt.get("spent")
            if isinstance(value, int) and not isinstance(value, bool):
                spent = value
        elif outcome.spent is not None:
            spent = outcome.spent
        elif not streamed and 400 <= outcome.status < 500:
            spent = 0
        self.guard.settle(x.reservation, spent)

    def _receipt(self, x: Exchange, req: CompletionRequest, c: Completion) -> dict:
        r = dict(c.receipt)
        r["gateway"] = {"request_id": x.request_id, "estimate": req.max_cost, **r.get("gateway", {})}
        return r

    async def _unary(self, x: Exchange, req: CompletionRequest) -> None:
        try:
            c = await self.backend.complete(req, lambda piece: None)
        except GatewayError as e:
            self._book(x, req, e, False)
            await x.error(e)
            return
        except Exception:
            log.exception("gateway: backend failed (%s)", x.request_id)
            await x.error(internal(x.request_id))  # booked as the whole estimate
            return
        obj = full_response(req.kind, new_id(req.kind), int(self.clock()), req.model, c.text, c.finish_reason, c,
                            self._receipt(x, req, c))
        self._book(x, req, c, False)
        await x.json(200, obj)

    async def _stream(self, x: Exchange, req: CompletionRequest) -> None:
        """A streamed completion. The backend runs in its own task and hands pieces over an
        unbounded channel (it never waits for the client); this task writes them, and pieces that
        queued during a write go out as one chunk. The response starts with the first piece (or
        the end), so an early refusal keeps its status code."""
        events_in, events_out = trio.open_memory_channel[tuple[str, Any]](math.inf)

        def on_token(piece: str) -> None:
            if piece:
                try:
                    events_in.send_nowait(("piece", piece))
                except trio.ClosedResourceError:  # a backend calling after it returned
                    pass

        async def run_backend() -> None:
            with events_in:
                try:
                    events_in.send_nowait(("done", await self.backend.complete(req, on_token)))
                except GatewayError as e:
                    events_in.send_nowait(("error", e))
                except Exception:
                    log.exception("gateway: backend failed (%s)", x.request_id)
                    events_in.send_nowait(("error", internal(x.request_id)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_backend)
            await _StreamWriter(self, x, req, events_out).run()

    async def open_stream(self, x: Exchange, req: CompletionRequest) -> ChunkMaker:
        maker = ChunkMaker(req.kind, new_id(req.kind), int(self.clock()), req.model,
                           await self._fingerprint(req.model), req.include_usage)
        await x.start(200, [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
                            ("x-accel-buffering", "no")])
        return maker


class _StreamWriter:
    """Writes one SSE response from the backend's events: pieces, then "done" or "error"."""

    def __init__(self, app: Gateway, x: Exchange, req: CompletionRequest,
                 events: trio.MemoryReceiveChannel) -> None:
        self.app, self.x, self.req, self.events = app, x, req, events
        self.maker: ChunkMaker | None = None
        self.streamed = False

    async def _batch(self) -> tuple[str, tuple[str, Any] | None]:
        batch = [await self.events.receive()]
        while True:  # take whatever else is already queued
            try:
                batch.append(self.events.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        text = "".join(v for k, v in batch if k == "piece")
        final = next(((k, v) for k, v in batch if k != "piece"), None)
        return text, final

    async def run(self) -> None:
        async with self.events:
            while True:
                text, final = await self._batch()
                out: list[bytes] = []
                if self.maker is None:
                    if final is not None and final[0] == "error" and not text:
                        self.app._book(self.x, self.req, final[1], False)
                        await self.x.error(final[1])  # nothing streamed yet: a plain HTTP error
                        return
                    self.maker = await self.app.open_stream(self.x, self.req)
                    first = self.maker.first()
                    if first is not None:
                        out.append(sse(first))
                if text:
                    self.streamed = True
                    out.append(sse(self.maker.text(text)))
                if final is None:
                    await self.x.body(b"".join(out), more=True)
                    continue
                await self._end(out, *final)
                return

    async def _end(self, out: list[bytes], kind: str, value: Any) -> None:
        x, req, maker = self.x, self.req, self.maker
        if kind == "error":
            out.append(sse(value.body()))
            self.app._book(x, req, value, self.streamed)
            await x.body(b"".join(out))  # the stream ends without [DONE]: clients raise
            return
        c: Completion = value
        receipt = self.app._receipt(x, req, c)
        fp = c.system_fingerprint or maker.fingerprint
        out.append(sse(maker.finish(c.finish_reason, fp, None if req.include_usage else receipt)))
        if req.include_usage:
            out.append(sse(maker.usage(c, receipt)))
        out.append(SSE_DONE)
        self.app._book(x, req, c, self.streamed)
        await x.body(b"".join(out))
