"""The local market for tests and benchmarks: the launcher `mesh demo` and `mesh devnet` run
(meshmarket.cli.devnet), plus the helpers only fixtures use, kept out of the shipped CLI.

`start_meshnet` starts a `FixtureNet` (tests/conftest.py's `meshnet`, the benchmarks); `attach`
views a devnet another process runs (`mesh devnet up --detach`, tests/test_gateway.py) for its
funding and clock helpers; `new_consumer` gives each test an account of its own.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from meshmarket.cli.devnet import MESH, MeshNet
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.market import MarketClient


class FixtureNet(MeshNet):
    """A MeshNet with the helpers only tests use."""

    @classmethod
    def attach(cls, chain: Chain, root: Path | None = None) -> FixtureNet:
        """A FixtureNet over a market that is already running (`mesh devnet up`): its funding and
        clock helpers, without starting or owning any process."""
        net = cls.__new__(cls)
        net.root, net.anvil, net.url = root or temp_root(), None, chain.deployment.rpc_url
        net.deployment, net.chain, net.mc = chain.deployment, chain, MarketClient(chain)
        net.providers, net.model_hash = {}, b""
        return net

    def new_consumer(self, mesh: int = 10_000 * MESH, eth: int = 10**20, approve: bool = True) -> LocalAccount:
        """A fresh funded account, so balance assertions see only this test's jobs."""
        acct = Account.create()
        self.chain.w3.provider.make_request("anvil_setBalance", [acct.address, hex(eth)])
        if mesh:
            self.chain.transact(dev_account(0), self.chain.token.functions.mint(acct.address, mesh))
        if approve:
            self.chain.ensure_allowance(acct, self.deployment.registry, 10**15)
        return acct


#: The launcher's start (meshmarket.cli.devnet.MeshNet.launch), giving a FixtureNet.
start_meshnet = FixtureNet.launch


def temp_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="meshnet-"))
