"""In-process providers for the middle tier of the suite: the real provider service (job gate,
served-once, streaming, signing) on a real libp2p host in the test's own process, the real
llama.cpp engine (one per session, shared), and the session's Anvil reverted around each test.
No subprocesses: a refusal test costs milliseconds, not a process start.

    with providers(served_market, engine, tmp_path, [1, 2, 3]) as run:
        answers = run(lambda node, ps: ...)        # an async body given the consumer's node

End-to-end tests that need the real `mesh provider start` processes use the devnet instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from eth_account.signers.local import LocalAccount

from meshmarket.consumer.client import run_job
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import ProviderFailed
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.market import MarketClient
from meshmarket.mesh.p2p import Node
from meshmarket.mesh.protocol import PROTOCOL_VERSION, Hardware, InferRequest, Job, Manifest, Sampling
from meshmarket.provider.claims import ClaimKeeper
from meshmarket.provider.engine import EngineSlot, build_of
from meshmarket.provider.modelfile import manifest_for, model_info
from meshmarket.provider.node import JobGate, ProviderService, ServedJobs

CONSUMER = dev_account(5)
PRICE = 10
#: The providers of the served deployment (dev accounts), all in the open pool of the real model.
PROVIDERS = (1, 2, 3, 4)
#: What each of them stakes (tests/conftest.py served_session), and restakes to be drawn again.
STAKE = 10**9


class OwnSlot:
    """The session's engine seen by one provider: its own capacity slot (so three in-process
    providers do not answer each other "busy"); generation itself stays serialised by the
    engine's lock, as in one process."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.slot = EngineSlot(1)

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


@dataclass
class Served:
    """A deployment where dev:1..dev:4 offer the real model (its sha256) at PRICE, staked, in the
    open pool."""

    chain: Chain
    mc: MarketClient
    model_hash: bytes
    manifests: dict[int, Manifest]

    def rpc(self, method: str, params: list | None = None):
        return self.chain.w3.provider.make_request(method, params or [])["result"]

    def advance(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", [seconds])
        self.rpc("evm_mine")

    def open(self, sampling: Sampling, pool: Sequence[int] = (1, 2, 3), consumer: LocalAccount = CONSUMER,
             price_cap: int = 20) -> tuple[bytes, Job]:
        """Open and draw a job for `sampling` whose seats are exactly the providers dev:i, i in
        `pool` (three of them: the others' stake is set thawing first, so the draw cannot pick
        them, and a member of `pool` whose stake thaws from an earlier call stakes again; the
        session is reverted after the test). Seat order is the draw's: use `job.seat_of(address)`
        or `request(job, i, sampling)`."""
        job_id, job = self.open_undrawn(sampling, pool, consumer, price_cap)
        job, _ = self.mc.draw_seats(consumer, job)
        assert {job.seat_of(dev_account(i).address) for i in pool} == {0, 1, 2}, job.seats
        return job_id, job

    def open_undrawn(self, sampling: Sampling, pool: Sequence[int] = (1, 2, 3), consumer: LocalAccount = CONSUMER,
                     price_cap: int = 20) -> tuple[bytes, Job]:
        """`open` without the draw: the job as openJob stored it (no seats yet); the pool is set
        so that `mc.draw_seats` seats exactly `pool`."""
        self.only(pool)
        job_id, job, _ = self.mc.open_job(consumer, self.model_hash, sampling.prompt_hash(self.model_hash),
                                          sampling.max_tokens, price_cap, approve=False)
        return job_id, job

    def only(self, pool: Sequence[int]) -> None:
        """Make dev:i, i in `pool`, the only providers the draw can pick (free stake for them, all
        stake thawing for the others)."""
        for i in PROVIDERS:
            acct = self.mc.account(dev_account(i).address)
            free = acct["stake"] - acct["locked"]
            if i not in pool and free > 0:
                self.mc.request_unstake(dev_account(i), free)
            elif i in pool and free == 0:
                self.mc.stake(dev_account(i), STAKE)

    def request(self, job: Job, index: int, sampling: Sampling) -> InferRequest:
        """The request for provider dev:index's seat in `job`."""
        seat = job.seat_of(dev_account(index).address)
        assert seat is not None, f"dev:{index} is not a seat of this job"
        return InferRequest(job.job_id, job, seat, sampling)


def signed_manifest(account: LocalAccount, model_path: str) -> Manifest:
    from meshmarket.mesh.p2p import peer_id_for_key

    return manifest_for(model_info(model_path), price_per_token=PRICE, peer_id=peer_id_for_key(bytes(account.key)),
                        multiaddrs=("/ip4/127.0.0.1/tcp/1",), protocol_version=str(PROTOCOL_VERSION),
                        hardware=Hardware(cpu_threads=1, gpu_name="", gpu_memory_mb=0, gpu_layers=0),
                        build=build_of(), provider=account.address, issued_at=1).sign(account)


@dataclass
class Running:
    """One in-process provider: its account, node and service."""

    index: int
    account: LocalAccount
    node: Node
    service: ProviderService
    log: list

    @property
    def claims(self) -> ClaimKeeper:
        """What it keeps of every job it served (provider.claims), on disk in its state directory."""
        assert self.service.claims is not None
        return self.service.claims

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    @property
    def addrs(self) -> list[str]:
        return self.node.listen_addrs


Body = Callable[[Node, dict[int, Running]], Awaitable[object]]


@contextmanager
def providers(served: Served, engine, state: Path, idx: Sequence[int] = (1, 2, 3, 4),
              consumer: LocalAccount = CONSUMER, own_slots: bool = True) -> Iterator[Callable[[Body], object]]:
    """`run(body)` starts providers dev:i (i in idx) and the consumer's node in one trio run,
    awaits `body(consumer_node, {i: Running})` and stops everything. Each provider keeps its state
    (served.log, claims.json) in `state`/p<i>: a second `providers(...)` on the same `state` is the
    same providers restarted. `own_slots=False` gives the engine itself (and its slots) to the one
    provider it serves (a batched engine's test)."""
    engines = {i: OwnSlot(engine) if own_slots else engine for i in idx}

    def run(body: Body) -> object:
        async def main():
            async with _started(served, engines, state, list(idx)) as running:
                async with Node.start(bytes(consumer.key)) as node:
                    with trio.fail_after(120):
                        return await body(node, running)

        return trio.run(main)

    yield run


class _started:
    def __init__(self, served: Served, engines: dict, state: Path, idx: list[int]) -> None:
        self.served, self.engines, self.state, self.idx = served, engines, state, idx

    async def __aenter__(self) -> dict[int, Running]:
        from contextlib import AsyncExitStack

        self._exit = AsyncExitStack()
        running = {}
        for i in self.idx:
            acct = dev_account(i)
            node = await self._exit.enter_async_context(Node.start(bytes(acct.key), max_connections_per_peer=4))
            log: list = []
            home = self.state / f"p{i}"
            home.mkdir(parents=True, exist_ok=True)
            service = ProviderService(acct, self.engines[i], JobGate(self.served.chain, acct.address,
                                                                     self.served.model_hash),
                                      self.served.manifests[i], served=ServedJobs(home / "served.log"),
                                      on_job=log.append,
                                      claims=ClaimKeeper(self.served.chain, acct, path=home / "claims.json"))
            service.attach(node)
            running[i] = Running(i, acct, node, service, log)
        return running

    async def __aexit__(self, *exc) -> None:
        await self._exit.aclose()


async def ask(node: Node, served: Served, p: Running, req: InferRequest, **kw):
    """run_job against one in-process provider; the answer, or the ProviderFailed it raised."""
    try:
        return await run_job(node, p.peer_id, p.addrs, req, chain_id=served.chain.chain_id,
                             market=served.chain.market.address, **kw)
    except ProviderFailed as exc:
        return exc


async def first_frame(node: Node, p: Running, wire: dict) -> dict:
    """Send a request as is (no client-side checks) and return the provider's first frame."""
    from meshmarket.mesh.protocol import INFER_PROTOCOL

    async with node.open_session(p.peer_id, p.addrs, INFER_PROTOCOL) as session:
        await session.send(wire)
        return await session.recv(timeout=30)
