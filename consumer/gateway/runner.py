"""The whole HTTP gateway in one trio task: the consumer's libp2p node, the dispatcher
(consumer.gateway.dispatch) and its background tasks, and hypercorn serving the ASGI app, until a
graceful stop.

    await run_gateway(chain, account, GatewayConfig(...), DispatchSettings(...), host="127.0.0.1",
                      port=8000, shutdown_trigger=stop_event.wait)

`task_status` reports (the bound URLs, the Gateway app) once requests are served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio
from eth_account.signers.local import LocalAccount

from meshmarket.consumer.gateway.app import Gateway
from meshmarket.consumer.gateway.config import GatewayConfig
from meshmarket.consumer.gateway.dispatch import DispatchSettings, Dispatcher
from meshmarket.consumer.gateway.serve import check_bind, serve
from meshmarket.consumer.journal import Journal
from meshmarket.consumer.selection import Selector
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.p2p import Node


async def run_gateway(chain: Chain, account: LocalAccount, config: GatewayConfig, settings: DispatchSettings, *,
                      host: str = "127.0.0.1", port: int = 8000, selector: Selector | None = None,
                      journal: Journal | None = None, spending_path: Path | None = None,
                      shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                      task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    check_bind(host, config.api_key)  # before anything starts
    async with Node.start(bytes(account.key)) as node:
        backend = Dispatcher(chain, account, node, settings=settings, selector=selector, journal=journal)
        app = Gateway(backend, config, spending_path=spending_path)
        async with trio.open_nursery() as n:
            await n.start(backend.run)

            async def http(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
                await serve(app, host, port, shutdown_trigger=shutdown_trigger, task_status=task_status)
                n.cancel_scope.cancel()  # a graceful stop ends the background tasks too

            urls = await n.start(partial(http))
            task_status.started((urls, app))
