"""Serve the gateway with hypercorn's trio worker, inside the caller's trio loop (so the HTTP side,
the libp2p node and the market's tasks share one loop).

    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve, gateway, "127.0.0.1", 8000)

`serve` refuses a non-loopback bind without an API key. Port 0 picks a free port; `nursery.start`
returns the URLs hypercorn bound.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from meshmarket.consumer.gateway.app import Gateway
from meshmarket.consumer.gateway.http import is_loopback_host
from meshmarket.mesh.errors import ConfigError

log = logging.getLogger("meshmarket.gateway")


def check_bind(host: str, api_key: str | None) -> None:
    if not is_loopback_host(host) and not api_key:
        raise ConfigError(f"binding the gateway to {host!r} without an API key exposes your wallet to the network",
                          "set an API key (every request must then carry it), or bind to 127.0.0.1",
                          code="api_key_required")


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None          # the gateway logs one line per completion itself
    config.errorlog = log            # hypercorn's errors go to our logger, not to stderr
    config.include_server_header = False
    config.graceful_timeout = 5.0    # streams in flight get this long at shutdown
    config.keep_alive_timeout = 75.0  # hypercorn's 5 s default drops idle pooled client connections
    return config


async def serve(app: Gateway, host: str = "127.0.0.1", port: int = 8000, *,
                shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Run until cancelled (or until `shutdown_trigger` returns: a graceful stop)."""
    check_bind(host, app.config.api_key)
    await hypercorn_serve(app, hypercorn_config(host, port), shutdown_trigger=shutdown_trigger,
                          task_status=task_status, mode="asgi")
