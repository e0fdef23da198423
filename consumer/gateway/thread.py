"""The gateway in a background thread with its own trio loop: for a Python program that embeds it
(an application, the tests, the benchmark) without running trio itself.

    with GatewayThread(chain, account, GatewayConfig(max_price=20)) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused")
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import trio

from meshmarket.consumer.gateway.config import GatewayConfig
from meshmarket.consumer.gateway.dispatch import DispatchSettings
from meshmarket.consumer.gateway.runner import run_gateway


class GatewayThread:
    """run_gateway(...) on 127.0.0.1 (port 0: a free one) until `close()`; `url` once started."""

    def __init__(self, chain, account, config: GatewayConfig, settings: DispatchSettings = DispatchSettings(), *,
                 host: str = "127.0.0.1", port: int = 0, start_timeout: float = 60.0, **kwargs: Any) -> None:
        self._args = (chain, account, config, settings)
        self._kwargs = dict(kwargs, host=host, port=port)
        self._timeout = start_timeout
        self.url = ""
        self.app = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="meshmarket-gateway", daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as e:  # noqa: BLE001 - reported to the caller's thread
            self._error = e
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            urls, self.app = await nursery.start(partial(run_gateway, *self._args, shutdown_trigger=self._stop.wait,
                                                         **self._kwargs))
            self.url = urls[0]
            self._ready.set()

    def start(self) -> GatewayThread:
        if self._thread.is_alive() or self.url:
            return self
        self._thread.start()
        if not self._ready.wait(self._timeout) or self._error is not None or not self.url:
            raise RuntimeError(f"the gateway did not start: {self._error!r}")
        return self

    def run_sync(self, fn, *args):
        """fn(*args) in the gateway's trio thread (to read its state without races)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def close(self, timeout: float = 20.0) -> None:
        if self._token is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the gateway did not stop")

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
