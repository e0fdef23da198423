"""The market's actions and signatures, shared by provider, consumer, tests and benchmarks.

- `Job` (defined with the wire protocol, mesh.protocol): what the market stores the hash of.
- `ResultClaim`: the EIP-712 `Result(bytes32 jobId,bytes32 outputHash,uint64 tokenCount)` a provider
  signs, domain {name "Meshmarket", version "1", chainId, verifyingContract = market}; signed and
  recovered with eth-account's EIP-712 implementation.
- `commitment(...)`: the provider-bound commitment of the fallback (commit/reveal) path.
- `MarketClient`: one typed method per contract action, over `mesh.chain.Chain`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from web3.logs import DISCARD

from mesh.chain import Chain
from mesh.protocol import Job
from mesh.types import JobId, TokenAmount

RESULT_TYPES = {
    "Result": [
        {"name": "jobId", "type": "bytes32"},
        {"name": "outputHash", "type": "bytes32"},
        {"name": "tokenCount", "type": "uint64"},
    ]
}
#: JobSettled.outcome values.
OUTCOME_MAJORITY, OUTCOME_NO_MAJORITY = 0, 1


def job_id_for(consumer: str, salt: bytes) -> JobId:
    return JobId(keccak(abi_encode(["address", "bytes32"], [to_checksum_address(consumer), salt])))


def result_domain(chain_id: int, market: str) -> dict:
    return {"name": "Meshmarket", "version": "1", "chainId": chain_id, "verifyingContract": to_checksum_address(market)}


@dataclass(frozen=True)
class ResultClaim:
    job_id: bytes
    output_hash: bytes
    token_count: int
    signature: bytes = field(default=b"", compare=False)

    def _message(self) -> dict:
        return {"jobId": self.job_id, "outputHash": self.output_hash, "tokenCount": self.token_count}

    def sign(self, account: LocalAccount, chain_id: int, market: str) -> ResultClaim:
        signed = Account.sign_typed_data(account.key, result_domain(chain_id, market), RESULT_TYPES, self._message())
        return replace(self, signature=bytes(signed.signature))

    def signer(self, chain_id: int, market: str) -> str:
        msg = encode_typed_data(result_domain(chain_id, market), RESULT_TYPES, self._message())
        return Account.recover_message(msg, signature=self.signature)

    def as_abi(self) -> tuple:
        """(outputHash, tokenCount, r, vs): the signature in EIP-2098 compact form, as settle() takes it."""
        r, vs = compact_signature(self.signature)
        return (self.output_hash, self.token_count, r, vs)

    @staticmethod
    def missing() -> tuple:
        return (b"\x00" * 32, 0, b"\x00" * 32, b"\x00" * 32)


def compact_signature(sig: bytes) -> tuple[bytes, bytes]:
    """65-byte (r, s, v) -> EIP-2098 (r, vs) with vs = (v - 27) << 255 | s."""
    if len(sig) != 65:
        raise ValueError("a signature is 65 bytes (r, s, v)")
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    if v not in (27, 28):
        raise ValueError("signature v must be 27 or 28")
    return r, ((v - 27) << 255 | s).to_bytes(32, "big")


def commitment(job_id: bytes, provider: str, output_hash: bytes, token_count: int, salt: bytes) -> bytes:
    return keccak(abi_encode(["bytes32", "address", "bytes32", "uint64", "bytes32"],
                             [job_id, to_checksum_address(provider), output_hash, token_count, salt]))


def new_salt() -> bytes:
    return os.urandom(32)


class MarketClient:
    """Typed wrappers over the registry's and market's functions, signed by the given account."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.registry = chain.registry.functions
        self.market = chain.market.functions

    # -- registry
    def register(self, acct: LocalAccount, model_hash: bytes, manifest_hash: bytes, price: int, endpoint: str = "") -> dict:
        return self.chain.transact(acct, self.registry.register(model_hash, manifest_hash, price, endpoint))

    def stake(self, acct: LocalAccount, amount: int) -> dict:
        self.chain.ensure_allowance(acct, self.chain.registry.address, amount)
        return self.chain.transact(acct, self.registry.stake(amount))

    def request_unstake(self, acct: LocalAccount, amount: int) -> dict:
        return self.chain.transact(acct, self.registry.requestUnstake(amount))

    def withdraw_stake(self, acct: LocalAccount) -> dict:
        return self.chain.transact(acct, self.registry.withdrawStake())

    def withdraw_earnings(self, acct: LocalAccount) -> dict:
        return self.chain.transact(acct, self.registry.withdrawEarnings())

    def account(self, provider: str) -> dict:
        stake, locked, owed, price = self.registry.accounts(to_checksum_address(provider)).call()
        model_hash, manifest_hash = self.registry.listings(to_checksum_address(provider)).call()
        thawing, ready_at = self.registry.thaws(to_checksum_address(provider)).call()
        return {"stake": stake, "locked": locked, "owed": owed, "price": price, "model_hash": model_hash,
                "manifest_hash": manifest_hash, "thawing": thawing, "thaw_ready_at": ready_at}

    # -- market
    def open_job(self, acct: LocalAccount, model_hash: bytes, prompt_hash: bytes, max_tokens: int, price_cap: int,
                 providers: list[str], salt: bytes | None = None, approve: bool = True) -> tuple[JobId, Job, dict]:
        """Open a job; returns (job id, the Job as stored, receipt)."""
        salt = salt or new_salt()
        providers = [to_checksum_address(p) for p in providers]
        if approve:
            # Exactly the escrow the registry will take from the wallet, at the current prices.
            prices = [self.registry.accounts(p).call()[3] for p in providers]
            need = max_tokens * sum(prices) - self.credit(acct.address)
            if need > 0:
                self.chain.ensure_allowance(acct, self.chain.registry.address, need)
        receipt = self.chain.transact(acct, self.market.openJob(salt, model_hash, prompt_hash, max_tokens, price_cap, providers))
        event = self.chain.market.events.JobOpened().process_receipt(receipt, errors=DISCARD)[0]
        return JobId(bytes(event["args"]["jobId"])), Job.from_event(event["args"]), receipt

    def settle(self, acct: LocalAccount, job_id: bytes, job: Job, results: list[ResultClaim | None]) -> dict:
        encoded = [r.as_abi() if r is not None else ResultClaim.missing() for r in results]
        return self.chain.transact(acct, self.market.settle(job_id, job.as_abi(), encoded))

    def replace_provider(self, acct: LocalAccount, job_id: bytes, job: Job, index: int, new_provider: str) -> tuple[Job, dict]:
        receipt = self.chain.transact(acct, self.market.replaceProvider(job_id, job.as_abi(), index, to_checksum_address(new_provider)))
        ev = self.chain.market.events.ProviderReplaced().process_receipt(receipt, errors=DISCARD)[0]["args"]
        return job.with_provider(index, ev["newProvider"], int(ev["price"])), receipt

    def commit(self, acct: LocalAccount, job_id: bytes, job: Job, index: int, commit_hash: bytes) -> dict:
        return self.chain.transact(acct, self.market.commitResult(job_id, job.as_abi(), index, commit_hash))

    def reveal(self, acct: LocalAccount, job_id: bytes, job: Job, index: int, output_hash: bytes, token_count: int,
               salt: bytes) -> dict:
        return self.chain.transact(acct, self.market.revealResult(job_id, job.as_abi(), index, output_hash, token_count, salt))

    def finalize(self, acct: LocalAccount, job_id: bytes, job: Job) -> dict:
        return self.chain.transact(acct, self.market.finalize(job_id, job.as_abi()))

    # -- consumer credit (kept by the registry, the vault)
    def deposit(self, acct: LocalAccount, amount: int) -> dict:
        self.chain.ensure_allowance(acct, self.chain.registry.address, amount)
        return self.chain.transact(acct, self.registry.deposit(amount))

    def withdraw_credit(self, acct: LocalAccount) -> dict:
        return self.chain.transact(acct, self.registry.withdrawCredit())

    def credit(self, address: str) -> TokenAmount:
        return TokenAmount(self.registry.credit(to_checksum_address(address)).call())

    def settled_event(self, receipt: dict) -> dict:
        return dict(self.chain.market.events.JobSettled().process_receipt(receipt, errors=DISCARD)[0]["args"])

    def is_open(self, job_id: bytes) -> bool:
        return self.market.isOpen(job_id).call()
