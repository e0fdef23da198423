"""The local market launcher: Anvil, the contracts, and provider processes started through the
CLI (`mesh provider register` + `mesh provider start`), each with its own user directory.

It ships in the CLI because two user commands run on it: `mesh demo` (the product's first command:
a cheater is drawn, disputed, judged and slashed) and `mesh devnet up` (a market to develop
against, cli/localnet.py). What they need is here: `MeshNet.launch` (the chain and the providers,
some of them cheaters), funding dev accounts, moving the local clock, and `fast_forward_court`, a
contested job's court run to its end by moving that clock. The tests and the benchmarks start the
same market through tests/devnet.py, which adds the helpers only fixtures use (a fresh consumer per
test, a view of a devnet another process runs).

Demo code lives here and nowhere in the provider: a cheater is an ordinary provider process whose
engine is wrapped by `CheatingEngine` (it alters what the model says and signs that), started with
`python -m meshmarket.cli.devnet cheat --account dev:N` instead of `mesh provider start`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import click

from meshmarket.mesh.anvil import AnvilProcess, free_port, start_anvil
from meshmarket.contracts.deploy import deploy
from meshmarket.mesh.chain import Chain, connect
from meshmarket.mesh.config import MarketParams
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.market import MarketClient, group_id

MESH = 10**6


@dataclass
class ProviderProc:
    """One provider process of the local market: its dev account, user directory and output."""

    index: int  # dev account number
    home: Path
    port: int
    proc: subprocess.Popen | None = None
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def account(self):
        return dev_account(self.index)

    @property
    def address(self) -> str:
        return self.account.address

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class MeshNet:
    """One local market: its own Anvil (stopped by `close`), the contracts deployed by dev:0, and
    the provider processes it registered and started, by dev account number."""

    def __init__(self, root: Path, block_time: float | None = None) -> None:
        self.root = root
        self.anvil: AnvilProcess | None = start_anvil(block_time=block_time)
        self.url = self.anvil.url
        w3 = connect(self.url)
        self.deployment = deploy(w3, dev_account(0), self.url, MarketParams())
        self.chain = Chain(w3, self.deployment)
        self.mc = MarketClient(self.chain)
        self.providers: dict[int, ProviderProc] = {}
        self.model_hash: bytes = b""

    @classmethod
    def launch(cls, root: Path, prices: dict[int, int], cheaters: tuple[int, ...] = (), extra: tuple[str, ...] = (),
               on_line: Callable[[int, str], None] | None = None, groups: dict[int, str] | None = None,
               stakes: dict[int, int] | None = None, block_time: float | None = None) -> Self:
        """Start the chain and providers dev:N at the given prices, in parallel where it helps:
        each in the open market unless `groups` names its private mesh, staking `stakes[N]` base
        units (100 MESH by default); `cheaters` run `CheatingEngine`; `extra` options go to every
        `mesh provider start`. `block_time`: Anvil mines every so many seconds instead of once per
        transaction. Everything started is stopped again if one part fails."""
        net = cls(root, block_time)
        groups, stakes = groups or {}, stakes or {}
        try:
            from meshmarket.provider.engine import default_model_path
            from meshmarket.provider.modelfile import file_sha256

            net.model_hash = bytes.fromhex(file_sha256(default_model_path())[2:])
            for i in prices:
                net.fund(i)  # minting is the deployer's: one sender, so done in turn

            def register(i: int) -> None:
                net.register(i, prices[i], stakes.get(i, 100 * MESH), False, group=groups.get(i))

            # A private mesh admits whom its admin (its first provider) invited: the first registers,
            # invites the others, then everyone else registers at once.
            admins = {g: min(i for i in groups if groups[i] == g) for g in set(groups.values())}
            _parallel([lambda i=i: register(i) for i in admins.values()])
            for i, g in groups.items():
                if i != admins[g]:
                    net.mc.invite(dev_account(admins[g]), group_id(g), dev_account(i).address)
            _parallel([lambda i=i: register(i) for i in prices if i not in admins.values()])
            _parallel([lambda i=i: net.start(i, *extra, cheater=i in cheaters, on_line=on_line) for i in prices])
            missing = [i for i in prices if not net.providers[i].alive()]
            if missing:
                raise RuntimeError(f"providers {missing} failed to start")
            return net
        except BaseException:
            net.close()
            raise

    def env(self, home: Path) -> dict:
        return {**os.environ, "MESH_HOME": str(home), "MESH_RPC_URL": self.url, "PYTHONUNBUFFERED": "1"}

    def fund(self, index: int, amount: int = 10_000 * MESH) -> None:
        self.chain.transact(dev_account(0), self.chain.token.functions.mint(dev_account(index).address, amount))

    def register(self, index: int, price: int = 10, stake: int = 100 * MESH, fund: bool = True,
                 group: str | None = None) -> ProviderProc:
        home = self.root / f"provider-{index}"
        home.mkdir(parents=True, exist_ok=True)
        self.deployment.save(home / "deployment.json")
        if fund:
            self.fund(index)
        p = ProviderProc(index, home, free_port())
        # The library call `mesh provider register` makes, in this process (a process per provider
        # only to register cost ~2 s of imports each); `mesh provider start` stays a process of its own.
        from meshmarket.provider.runtime import register_provider

        register_provider(self.chain, dev_account(index), "default", price, stake, port=p.port, group=group, home=home)
        self.providers[index] = p
        return p

    def start(self, index: int, *extra: str, timeout: float = 300.0, cheater: bool = False,
              on_line: Callable[[int, str], None] | None = None) -> ProviderProc:
        p = self.providers[index]
        entry = ["-m", "meshmarket.cli.devnet", "cheat"] if cheater else ["-m", "meshmarket.cli", "provider", "start"]
        cmd = [sys.executable, *entry, "--account", f"dev:{index}", *extra]
        p.proc = subprocess.Popen(cmd, env=self.env(p.home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, stdin=subprocess.DEVNULL)
        ready = threading.Event()

        def pump():
            assert p.proc and p.proc.stdout
            for line in p.proc.stdout:
                p.lines.append(line.rstrip("\n"))
                if on_line:
                    on_line(index, line.rstrip("\n"))
                if line.startswith("ready "):
                    _, p.peer_id, *p.addrs = line.split()
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if p.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(index)
                raise RuntimeError(f"provider dev:{index} did not start:\n" + "\n".join(p.lines))
        return p

    def stop(self, index: int, kill: bool = False) -> None:
        p = self.providers[index]
        if p.proc and p.proc.poll() is None:
            p.proc.kill() if kill else p.proc.terminate()
            try:
                p.proc.wait(10)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(10)

    def close(self) -> None:
        for i in list(self.providers):
            self.stop(i)
        if self.anvil is not None:
            self.anvil.stop()

    def advance(self, seconds: int) -> None:
        self.chain.w3.provider.make_request("evm_increaseTime", [seconds])
        self.chain.w3.provider.make_request("evm_mine", [])

    def fast_forward_court(self, job_id: bytes, consumer, journal, say: Callable[[str], None] = print,
                           timeout: float = 120.0):
        """Run a contested job to its end on the local chain: move the clock through each phase
        (dispute window, evidence, votes) and let the providers' own keepers act in it: seats
        publish their evidence, drawn jurors score and vote. Returns the final JobState."""
        from meshmarket.consumer.settlement import settle_pending
        from meshmarket.mesh.lifecycle import job_state

        p, deadline = self.deployment.params, time.monotonic() + timeout

        def state():
            return job_state(self.chain, job_id)

        def wait_until(what: str, done: Callable[[], bool]) -> None:
            while not done():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the providers did not {what} in time")
                time.sleep(0.2)

        def settle() -> None:
            settle_pending(self.chain, consumer, journal, on_event=lambda n: say(n.text))

        st = state()
        while not st.closed:
            if st.disputer is None:
                say(f"nobody disputed: the clock moves past the dispute window ({p.dispute_window} s)")
                self.advance(p.dispute_window)
                settle()
            elif st.jury_at is None and not st.void:
                self.advance(1)
                settle()  # the jury is drawn from the block after the dispute
            elif st.void:
                settle()
            else:
                jurors = len(st.jurors)
                try:  # a seat that never shows what it signed is slashed for it: waiting is a courtesy
                    wait_until("publish their evidence",
                               lambda: set(state().evidence) >= set(st.contest.seats(st.contest.present)))
                except RuntimeError as exc:
                    say(str(exc))
                say(f"the clock moves to the jury's vote ({jurors} juror(s))")
                self.advance(p.court_phase)
                wait_until("commit their votes", lambda: sum(
                    1 for c in self.mc.dispute_of(job_id)["commits"] if int.from_bytes(c, "big")) == jurors)
                self.advance(p.court_phase)
                wait_until("reveal their votes", lambda: bin(self.mc.dispute_of(job_id)["revealed"]).count("1") == jurors)
                say("votes revealed; the clock moves past the court's end")
                self.advance(p.court_phase)
                settle()
            if time.monotonic() > deadline:
                raise RuntimeError("the contested job did not close in time")
            st = state()
        return st


#: What `mesh demo` and `mesh devnet up` call: the chain, the contracts and the providers, started.
start_meshnet = MeshNet.launch


def _parallel(tasks) -> None:
    """Run the callables at once (process start-up is mostly waiting); the first error is raised."""
    with ThreadPoolExecutor(max_workers=max(1, len(tasks))) as pool:
        for future in [pool.submit(t) for t in tasks]:
            future.result()


# ------------------------------------------------------------------------------ the demo's cheater

class CheatingEngine:
    """Demo and tests only: a provider that saves work. It runs the real model, then signs an
    altered answer (upper case, plus a mark of this provider's own so that two cheaters also
    disagree with each other) with tokens that really spell it: everything it signs is consistent,
    so only a jury scoring the tokens under the model can tell it from an honest answer."""

    def __init__(self, inner, provider: str) -> None:
        self.inner = inner
        self.mark = f" [{provider[2:8]}]"

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # model_path, n_ctx, slot, build, prompt_tokens, close

    def generate(self, request, cancel=None):
        from meshmarket.provider.engine import Generation

        honest = self.inner.generate(request, cancel)
        return Generation(self._alter(honest, request), honest.prompt_tokens)

    def _alter(self, honest, request):
        from dataclasses import replace

        with honest:
            result = honest.run()
        tokens = tuple(self.inner.tokenize(result.text.upper() + self.mark))[:request.max_tokens]
        text = self.inner.text_of(tokens, request.stop)
        if text:
            yield text
        return replace(result, text=text, tokens=tokens)


@click.group()
def _devnet() -> None:
    """Processes of the local market that are not product commands."""


@_devnet.command()
@click.option("--account", "account_name", required=True)
@click.option("--claim-poll", type=float, default=15.0)
@click.option("--rpc", default=None)
def cheat(account_name: str, claim_poll: float, rpc: str | None) -> None:
    """`mesh provider start`, with the engine wrapped by CheatingEngine."""
    from meshmarket.cli.provider import serve

    serve(account_name, rpc, claim_poll, wrap_engine=CheatingEngine)


if __name__ == "__main__":
    _devnet()
