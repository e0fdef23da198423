"""The market's actions and signatures, shared by provider, consumer, tests and benchmarks.

- `Job` (defined with the wire protocol, mesh.protocol): what the market stores the hash of.
- `ResultClaim`: the EIP-712 `Result(bytes32 jobId,bytes32 outputHash,uint64 tokenCount)` a seat
  signs, domain {name "Meshmarket", version "2", chainId, verifyingContract = market}; signed and
  recovered with eth-account's EIP-712 implementation.
- `Contest` (defined with the job's lifecycle, mesh.lifecycle): a contested job's results.
- `commitment(...)`, `vote_commitment(...)`: the hidden claims of the fallback path and of jurors.
- `MarketClient`: one typed method per contract action, over `mesh.chain.Chain`; the events of its
  receipts are read by the one decoder (mesh.events).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import JobSlotsFull
from meshmarket.mesh.events import EventDecoder
from meshmarket.mesh.lifecycle import Contest
from meshmarket.mesh.protocol import Job
from meshmarket.mesh.types import JobId, TokenAmount

RESULT_TYPES = {
    "Result": [
        {"name": "jobId", "type": "bytes32"},
        {"name": "outputHash", "type": "bytes32"},
        {"name": "tokenCount", "type": "uint64"},
    ]
}
#: JobSettled.outcome values (JobMarket.Outcome).
OUTCOME_AGREED, OUTCOME_PROVISIONAL, OUTCOME_JUDGED, OUTCOME_REFUNDED = 0, 1, 2, 3
OUTCOMES = ("agreed", "provisional", "judged", "refunded")
#: A juror's verdict on one seat (2 bits per seat in a vote).
PASS, SOFT, HARD = 0, 1, 2
ZERO32 = b"\x00" * 32
CLOSED = b"\x00" * 31 + b"\x01"
JOB_SLOT_RANGE = range(16)
#: A draw's cost depends on its seed (rejection sampling: up to 64 attempts), which uses the block's
#: prevrandao: unknown when the gas is estimated, so draws get this much gas on top of the estimate.
DRAW_GAS_MARGIN = 150_000


def group_id(name: str | None) -> bytes:
    """A private mesh's on-chain group: keccak256 of its name; no name is the open market (0)."""
    return keccak(text=name) if name else ZERO32


def result_domain(chain_id: int, market: str) -> dict:
    return {"name": "Meshmarket", "version": "2", "chainId": chain_id, "verifyingContract": to_checksum_address(market)}


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
        return (ZERO32, 0, ZERO32, ZERO32)


def compact_signature(sig: bytes) -> tuple[bytes, bytes]:
    """65-byte (r, s, v) -> EIP-2098 (r, vs) with vs = (v - 27) << 255 | s."""
    if len(sig) != 65:
        raise ValueError("a signature is 65 bytes (r, s, v)")
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    if v not in (27, 28):
        raise ValueError("signature v must be 27 or 28")
    return r, ((v - 27) << 255 | s).to_bytes(32, "big")


def commitment(job_id: bytes, seat: int, provider: str, output_hash: bytes, token_count: int, salt: bytes) -> bytes:
    """A seat's hidden claim: provider and seat inside, so a copied commitment never reveals."""
    return keccak(abi_encode(["bytes32", "uint8", "address", "bytes32", "uint64", "bytes32"],
                             [job_id, seat, to_checksum_address(provider), output_hash, token_count, salt]))


def vote_commitment(job_id: bytes, juror: str, verdicts: int, salt: bytes) -> bytes:
    return keccak(abi_encode(["bytes32", "address", "uint16", "bytes32"],
                             [job_id, to_checksum_address(juror), verdicts, salt]))


def pack_verdicts(verdicts: dict[int, int]) -> int:
    """{seat: PASS|SOFT|HARD} -> the 2-bits-per-seat vote JobMarket.revealVote takes."""
    return sum(v << (2 * seat) for seat, v in verdicts.items())


class MarketClient:
    """Typed wrappers over the registry's and market's functions, signed by the given account."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.registry = chain.registry.functions
        self.market = chain.market.functions

    def _tx(self, acct: LocalAccount, fn) -> dict:
        return self.chain.transact(acct, fn)

    # -- registry: providers
    def register(self, acct: LocalAccount, model_hash: bytes, manifest_hash: bytes, price: int, endpoint: str = "",
                 group: bytes = ZERO32) -> dict:
        return self._tx(acct, self.registry.register(model_hash, manifest_hash, price, group, endpoint))

    def invite(self, acct: LocalAccount, group: bytes, provider: str, admitted: bool = True) -> dict:
        """As a private mesh's admin (its first provider), let `provider` register in it (or not)."""
        return self._tx(acct, self.registry.invite(group, to_checksum_address(provider), admitted))

    def group_admin(self, group: bytes) -> str | None:
        admin = self.registry.groupAdmin(group).call()
        return None if int(admin, 16) == 0 else to_checksum_address(admin)

    def deregister(self, acct: LocalAccount) -> dict:
        return self._tx(acct, self.registry.deregister())

    def stake(self, acct: LocalAccount, amount: int) -> dict:
        self.chain.ensure_allowance(acct, self.chain.registry.address, amount)
        return self._tx(acct, self.registry.stake(amount))

    def request_unstake(self, acct: LocalAccount, amount: int) -> dict:
        return self._tx(acct, self.registry.requestUnstake(amount))

    def withdraw_stake(self, acct: LocalAccount) -> dict:
        return self._tx(acct, self.registry.withdrawStake())

    def withdraw_earnings(self, acct: LocalAccount) -> dict:
        return self._tx(acct, self.registry.withdrawEarnings())

    def account(self, provider: str) -> dict:
        p = to_checksum_address(provider)
        stake, locked, owed, price = self.registry.accounts(p).call()
        model_hash, manifest_hash, group, pool_index = self.registry.listings(p).call()
        thawing, ready_at = self.registry.thaws(p).call()
        return {"stake": stake, "locked": locked, "owed": owed, "price": price, "model_hash": model_hash,
                "manifest_hash": manifest_hash, "group": group, "listed": pool_index != 0, "thawing": thawing,
                "thaw_ready_at": ready_at}

    # -- registry: consumers (credit is kept by the registry, the vault)
    def deposit(self, acct: LocalAccount, amount: int) -> dict:
        self.chain.ensure_allowance(acct, self.chain.registry.address, amount)
        return self._tx(acct, self.registry.deposit(amount))

    def withdraw_credit(self, acct: LocalAccount) -> dict:
        return self._tx(acct, self.registry.withdrawCredit())

    def credit(self, address: str) -> TokenAmount:
        return TokenAmount(self.registry.credit(to_checksum_address(address)).call())

    # -- market: a job
    def open_job(self, acct: LocalAccount, model_hash: bytes, prompt_hash: bytes, max_tokens: int, price_cap: int,
                 group: bytes = ZERO32, approve: bool = True, slot: int | None = None) -> tuple[JobId, Job, dict]:
        """Request a job in a free slot; returns (job id, the Job as stored, receipt). Seats come with
        draw_seats, which also takes the escrow."""
        if approve:
            # Exactly what the draw will take from the wallet: the job's escrow beyond the credit.
            need = max_tokens * price_cap * 4 - self.credit(acct.address)
            if need > 0:
                self.chain.ensure_allowance(acct, self.chain.registry.address, need)
        slot = self.free_slot(acct.address) if slot is None else slot
        receipt = self._tx(acct, self.market.openJob(slot, model_hash, group, prompt_hash, max_tokens, price_cap))
        args = self._event(receipt, "JobOpened")
        return JobId(bytes(args["jobId"])), Job.from_event(args, receipt["blockNumber"]), receipt

    def draw_seats(self, acct: LocalAccount, job: Job) -> tuple[Job, dict]:
        receipt = self.chain.transact(acct, self.market.drawSeats(job.as_abi()), gas_margin=DRAW_GAS_MARGIN)
        ev = self._event(receipt, "SeatsDrawn")
        return job.drawn(ev["seed"], ev["drawnAt"], ev["seats"], ev["prices"]), receipt

    def add_seat(self, acct: LocalAccount, job: Job) -> tuple[Job, int, dict]:
        receipt = self.chain.transact(acct, self.market.addSeat(job.as_abi()), gas_margin=DRAW_GAS_MARGIN)
        ev = self._event(receipt, "SeatAdded")
        return job.with_seat(ev["seat"], ev["provider"], ev["price"]), int(ev["seat"]), receipt

    def expire(self, acct: LocalAccount, job: Job) -> dict:
        return self._tx(acct, self.market.expire(job.as_abi()))

    def settle(self, acct: LocalAccount, job: Job, results: list[ResultClaim | None]) -> dict:
        encoded = [r.as_abi() if r is not None else ResultClaim.missing() for r in results[:job.seat_count]]
        return self._tx(acct, self.market.settle(job.as_abi(), encoded))

    def commit(self, acct: LocalAccount, job: Job, seat: int, commit_hash: bytes) -> dict:
        return self._tx(acct, self.market.commitResult(job.as_abi(), seat, commit_hash))

    def reveal(self, acct: LocalAccount, job: Job, seat: int, output_hash: bytes, token_count: int,
               salt: bytes) -> dict:
        return self._tx(acct, self.market.revealResult(job.as_abi(), seat, output_hash, token_count, salt))

    def finalize(self, acct: LocalAccount, job: Job) -> dict:
        return self._tx(acct, self.market.finalize(job.as_abi()))

    # -- market: the court
    def dispute(self, acct: LocalAccount, job: Job, contest: Contest, request: bytes) -> dict:
        need = job.jury_fee - self.credit(acct.address)
        if need > 0:
            self.chain.ensure_allowance(acct, self.chain.registry.address, need)
        return self._tx(acct, self.market.dispute(job.as_abi(), contest.as_abi(), request))

    def draw_jury(self, acct: LocalAccount, job: Job, contest: Contest) -> tuple[list[str], dict]:
        receipt = self.chain.transact(acct, self.market.drawJury(job.as_abi(), contest.as_abi()),
                                      gas_margin=2 * DRAW_GAS_MARGIN)
        jurors = [to_checksum_address(a) for a in self._event(receipt, "JuryDrawn")["jurors"]]
        return [a for a in jurors if int(a, 16)], receipt

    def post_evidence(self, acct: LocalAccount, job: Job, contest: Contest, seat: int, text_hash: bytes,
                      tokens: bytes) -> dict:
        return self._tx(acct, self.market.postEvidence(job.as_abi(), contest.as_abi(), seat, text_hash, tokens))

    def commit_vote(self, acct: LocalAccount, job_id: bytes, commit_hash: bytes) -> dict:
        return self._tx(acct, self.market.commitVote(job_id, commit_hash))

    def reveal_vote(self, acct: LocalAccount, job_id: bytes, verdicts: int, salt: bytes) -> dict:
        return self._tx(acct, self.market.revealVote(job_id, verdicts, salt))

    def resolve(self, acct: LocalAccount, job: Job, contest: Contest) -> dict:
        return self._tx(acct, self.market.resolve(job.as_abi(), contest.as_abi()))

    # -- reads
    def _events(self, receipt: dict, name: str) -> list[dict]:
        return [dict(e.args) for e in EventDecoder.for_chain(self.chain).in_receipt(receipt, name)]

    def _event(self, receipt: dict, name: str) -> dict:
        return self._events(receipt, name)[0]

    def settled_event(self, receipt: dict) -> dict:
        return self._event(receipt, "JobSettled")

    def contest_of(self, receipt: dict) -> Contest | None:
        """The Contest a settle or finalize produced, or None if it closed the job."""
        found = self._events(receipt, "JobContested")
        return Contest.from_event(found[0]["contest"]) if found else None

    def free_slot(self, consumer: str) -> int:
        """A slot of `consumer` with no open job (JobMarket.RING per consumer)."""
        for i, h in enumerate(self.market.slotsOf(to_checksum_address(consumer)).call()):
            if bytes(h) in (ZERO32, CLOSED):
                return i
        raise JobSlotsFull(f"{consumer} has {len(JOB_SLOT_RANGE)} jobs open on-chain, the most a consumer may have",
                           limit=len(JOB_SLOT_RANGE))

    def job_slot(self, job: Job) -> bytes:
        return bytes(self.market.jobSlot(job.consumer, job.slot).call())

    def is_open(self, job: Job) -> bool:
        """Open as this exact job (drawn or not); a contested job is not open (see is_contested)."""
        return self.job_slot(job) == job.hash()

    def is_contested(self, job: Job, contest: Contest) -> bool:
        return self.job_slot(job) == contest.slot_hash(job)

    def is_closed(self, job: Job, contest: Contest | None = None) -> bool:
        """Neither open nor contested any more: settled (its ring slot moved on)."""
        slot = self.job_slot(job)
        return slot != job.hash() and (contest is None or slot != contest.slot_hash(job))

    def dispute_of(self, job_id: bytes) -> dict:
        d = self.market.disputes(job_id).call()
        names = ("disputer", "opened_block", "jury_at", "void", "evidence", "revealed", "jurors", "commits", "verdicts")
        return dict(zip(names, d))
