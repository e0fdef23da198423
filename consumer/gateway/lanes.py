"""Many queries of one account at once, safely.

The chain client (mesh.chain.Chain) sends each transaction with the account's pending nonce, and
`openJob` takes the first free job slot it reads: two queries of the same account running at once
would pick the same nonce or the same slot, and one of them would fail. The CLI runs one query at a
time and never meets this; the HTTP gateway serves several. So the HTTP gateway's chain client sends
one transaction of its process at a time (`SerialChain`), and each query's contract client
(`JobChainClient`, a mesh.market.MarketClient) picks its slot and opens its job under the same lock,
and remembers the hashes of the transactions it sent for the receipt.

The lock is held while a transaction is mined: on a chain that mines at once (Anvil) that is a few
milliseconds; on a chain with block times, concurrent queries wait for each other's blocks (a nonce
manager in mesh.chain, holding the lock only to send, would lift that).
"""

from __future__ import annotations

import threading

from meshmarket.mesh.chain import Chain
from meshmarket.mesh.market import MarketClient


class SerialChain(Chain):
    """A Chain whose transactions (all accounts, this process) go out one at a time."""

    def __init__(self, w3, deployment) -> None:
        super().__init__(w3, deployment)
        self.tx_lock = threading.RLock()

    @classmethod
    def of(cls, chain: Chain) -> SerialChain:
        if isinstance(chain, SerialChain):
            return chain
        serial = cls(chain.w3, chain.deployment)
        serial.fixed_gas = chain.fixed_gas
        return serial

    def transact(self, account, fn, **kwargs) -> dict:
        with self.tx_lock:
            return super().transact(account, fn, **kwargs)


class JobChainClient(MarketClient):
    """The contract client of one query's job: slot choice and opening under the chain client's
    lock; the job it opened, whether its seats were drawn, and its transactions' hashes."""

    chain: SerialChain

    def __init__(self, chain: SerialChain) -> None:
        super().__init__(chain)
        self.job_id: bytes | None = None
        self.drawn = False
        self.txs: dict[str, str | list[str]] = {}

    def _record(self, name: str, receipt: dict) -> None:
        h = receipt["transactionHash"]
        h = h.to_0x_hex() if hasattr(h, "to_0x_hex") else str(h)
        if name == "add_seat":
            self.txs.setdefault(name, []).append(h)  # type: ignore[union-attr]
        else:
            self.txs[name] = h

    def open_job(self, acct, *args, **kwargs):
        with self.chain.tx_lock:  # the slot read and the opening, together
            job_id, job, receipt = super().open_job(acct, *args, **kwargs)
        self.job_id = bytes(job_id)
        self._record("open", receipt)
        return job_id, job, receipt

    def draw_seats(self, acct, job):
        job, receipt = super().draw_seats(acct, job)
        self.drawn = True
        self._record("draw", receipt)
        return job, receipt

    def add_seat(self, acct, job):
        job, seat, receipt = super().add_seat(acct, job)
        self._record("add_seat", receipt)
        return job, seat, receipt

    def settle(self, acct, job, results):
        receipt = super().settle(acct, job, results)
        self._record("settle", receipt)
        return receipt

    def dispute(self, acct, job, contest, request):
        receipt = super().dispute(acct, job, contest, request)
        self._record("dispute", receipt)
        return receipt
