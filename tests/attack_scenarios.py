"""The attacks of the incentives audit (issue 9, A1-A22), each a scenario on the real contracts in
which the honest parties run their real software; shared by tests/test_attacks.py, which asserts
each attack's PROPERTY on what a scenario measured, and bench/attacks.py, which tabulates what
each strategy cost its attacker, gained it and cost its victims.

This module imports nothing from pytest: bench/attacks.py imports it as `tests.attack_scenarios`
with the repository root on sys.path (the way every benchmark imports the product packages), so
it runs from a clean clone with the packages the README's test command installs.

A scenario takes a world (tests/conftest.py's `Market`, or `start_world(url)` for the bench: the
deployed market, providers P0..P3 offering MODEL at PRICE with STAKE, two consumers, an outsider)
and a work directory, runs the attack and returns a `Measured`: the attacker's net tokens and gas,
the honest price of what it obtained, the victims' losses, and `facts` (every number an assertion
or a table needs). The caller keeps the world's chain state (the tests revert it after each test,
the bench after each scenario).

Honest parties run their own code, not stand-ins:
- a provider that served a job holds what `provider.node` gives its claim keeper (`Seat.serve`),
  and its `provider.claims.ClaimKeeper` commits, reveals, finalizes, disputes, draws juries, posts
  evidence and resolves; every honest provider runs `provider.court.CourtKeeper` for jury duty;
- an honest consumer keeps `consumer.journal` and runs `consumer.settlement.settle_pending`; the
  consumer-library attacks (A8, A9) run `consumer.ask.Asker.ask_on` over real libp2p hosts;
- an honest node's reputation is `ledger.Indexer` + `ledger.Reputation` on a fresh SQLite ledger.
Jurors' scorer: `TruthJudge` stands in for `provider.judge.ScorerJudge` (it passes the outputs an
honest build produces and hard-fails anything else; the scorer itself is tested against the real
model in tests/test_scorer.py): the attack outputs here are token ids, not the model's. Where a
property is a contract rule whatever jurors say (A16, the lookahead captures), votes are sent
directly and the scenario says so.

The clock: `drive` moves the chain's time from deadline to deadline (delivery, claim, reveal,
dispute, court phases), and at each lets the attacker act first (`hook`), then every honest party
(`Honest.tick`), as their timers would. Seeds: a draw's seed includes the draw block's prevrandao
(on Anvil its mixHash, derived from the parent block and the timestamp, not from the block's
transactions; the node answers a call at "pending" with the latest block's); so draws are not
known before their block, and a scenario that needs a committee re-rolls drawn jobs (A12), or
builds a pool that seats exactly whom it needs. `next_prevrandao` reads what an Ethereum
proof-of-stake chain publishes one slot ahead (EIP-4399: a block's prevrandao is the RANDAO mix of
its parent's beacon state), by mining the next block on a snapshot: the lookahead scenarios (A20)
use it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3.logs import DISCARD

from meshmarket.consumer.journal import Journal, PendingJob
from meshmarket.consumer.settlement import settle_pending
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.config import MarketParams
from meshmarket.mesh.errors import ChainError, ContractReverted, QueryError
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.lifecycle import DRAW_WINDOW, Contest, JobState, job_state
from meshmarket.mesh.market import HARD, PASS, MarketClient, ResultClaim, commitment, pack_verdicts, vote_commitment
from meshmarket.mesh.protocol import Job, Sampling, canonical_json, output_hash, pack_tokens
from meshmarket.provider.claims import Claim, ClaimKeeper
from meshmarket.provider.court import CourtKeeper

P = MarketParams()
MESH = 1_000_000  # base units per MESH
#: The world of tests/conftest.py (its `market` fixture): test_attacks.py checks they agree.
MODEL = keccak(b"test-model.gguf")
PRICE = 10
STAKE = 10**9
FUNDS = 10**12
MAX_TOKENS = 128
ZERO32 = b"\x00" * 32
ZERO_ADDRESS = "0x" + "00" * 20
GWEI = 10**9
#: Gas for transactions sent into a block being built (no estimate: the estimate would run on another block).
BLOCK_GAS = 2_000_000


def sampling_for(max_tokens: int = MAX_TOKENS) -> Sampling:
    return Sampling.parse({"messages": [{"role": "user", "content": "What is two plus two?"}],
                           "max_tokens": max_tokens}, "request")


def request_for(max_tokens: int = MAX_TOKENS) -> bytes:
    """The consumer's canonical request (part 2 of PROTOCOL.md): its keccak256 is the job's
    promptHash, a dispute publishes it, jurors parse it."""
    return canonical_json(sampling_for(max_tokens).request(MODEL))


REQUEST = request_for()


# ============================================================================= outputs

@dataclass(frozen=True)
class Output:
    """An answer as a seat signs it (output_hash of text and tokens) and a jury reads it."""

    text: str
    tokens: tuple[int, ...]

    @property
    def hash(self) -> bytes:
        return output_hash(self.text, self.tokens)

    @property
    def count(self) -> int:
        return len(self.tokens)

    @property
    def text_hash(self) -> bytes:
        return keccak(self.text.encode())

    @property
    def packed(self) -> bytes:
        return pack_tokens(self.tokens)


def output(text: str, count: int) -> Output:
    base = int.from_bytes(keccak(text.encode())[:2], "big")
    return Output(text, tuple(range(base, base + count)))


#: What an honest provider computes for the test prompt, and what it signs for it.
HONEST = output("Two plus two is four: adding two units to two units gives four units in all.", 40)
HONEST_PAY = HONEST.count * PRICE  # 400 base units
#: Another honest build's answer (same question, other tokens): a jury passes it too.
OTHER_BUILD = output("Two and two make four.", 12)


def bogus(count: int = MAX_TOKENS, label: str = "bogus: nothing was computed") -> Output:
    """What a liar or a sybil signs without computing anything (well formed, so it can be posted)."""
    return output(label, count)


# ============================================================================= the world (bench)

@dataclass
class World:
    """What tests/conftest.py's `Market` offers, for bench/attacks.py: the deployed market with
    providers P0..P3 (dev:1..4) offering MODEL at PRICE with STAKE, consumers dev:5 and dev:6,
    an outsider dev:7."""

    url: str
    chain: Chain
    mc: MarketClient
    deployer: LocalAccount
    providers: list
    consumer: LocalAccount
    consumer2: LocalAccount
    outsider: LocalAccount

    def rpc(self, method: str, params: list | None = None):
        return self.chain.w3.provider.make_request(method, params or [])["result"]

    def advance(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", [seconds])
        self.rpc("evm_mine")

    def set_next_timestamp(self, ts: int) -> None:
        self.rpc("evm_setNextBlockTimestamp", [ts])
        self.chain.fixed_gas = BLOCK_GAS

    def now(self) -> int:
        return self.chain.w3.eth.get_block("latest")["timestamp"]


def start_world(url: str) -> World:
    """tests/conftest.py's market_session, on the chain at `url`."""
    from meshmarket.contracts.deploy import deploy
    from meshmarket.mesh.chain import connect

    w3 = connect(url)
    deployer = dev_account(0)
    chain = Chain(w3, deploy(w3, deployer, url, MarketParams()))
    mc = MarketClient(chain)
    providers = [dev_account(i) for i in (1, 2, 3, 4)]
    consumer, consumer2, outsider = dev_account(5), dev_account(6), dev_account(7)
    for acct in providers + [consumer, consumer2, outsider]:
        chain.transact(deployer, chain.token.functions.mint(acct.address, FUNDS))
    for i, p in enumerate(providers):
        mc.register(p, MODEL, keccak(b"manifest-%d" % i), PRICE)
        mc.stake(p, STAKE)
    for c in (consumer, consumer2):
        chain.ensure_allowance(c, chain.registry.address, FUNDS)
    return World(url, chain, mc, deployer, providers, consumer, consumer2, outsider)


@contextmanager
def reverted(m):
    """The chain as it is now, and exactly as it was again afterwards."""
    snap = m.rpc("evm_snapshot")
    try:
        yield m
    finally:
        m.chain.fixed_gas = None
        m.rpc("evm_setAutomine", [True])
        assert m.rpc("evm_revert", [snap]) is True


# ============================================================================= accounts and money

KNOWN: dict[str, LocalAccount] = {}


def acct_of(address: str) -> LocalAccount:
    address = to_checksum_address(address)
    if address not in KNOWN:
        KNOWN.update({dev_account(i).address: dev_account(i) for i in range(20)})
    return KNOWN[address]


def fresh_account(label: str) -> LocalAccount:
    """A new key, fixed by its label (deterministic runs)."""
    acct = Account.from_key(keccak(text=f"meshmarket attack test: {label}"))
    KNOWN[acct.address] = acct
    return acct


def send_eth(m, sender: LocalAccount, to: str, wei: int) -> None:
    w3 = m.chain.w3
    tx = {"to": to, "value": wei, "gas": 21_000, "gasPrice": w3.eth.gas_price, "chainId": m.chain.chain_id,
          "nonce": w3.eth.get_transaction_count(sender.address, "pending")}
    h = w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(h, timeout=30)["status"] == 1


def join(m, acct: LocalAccount, group: bytes = ZERO32, price: int | None = None, admin: LocalAccount | None = None):
    """(Re-)register `acct` for MODEL in `group` (a provider is in one pool: its last registration);
    in a private group that has an admin, `admin` invites it first."""
    price = price or m.mc.account(acct.address)["price"] or PRICE
    if group != ZERO32 and admin is not None and admin.address != acct.address:
        m.mc.invite(admin, group, acct.address)
    return m.mc.register(acct, MODEL, keccak(b"manifest of " + acct.address.encode()), price, group=group)


def become_provider(m, funder: LocalAccount, acct: LocalAccount, amount: int, price: int = PRICE,
                    group: bytes = ZERO32, admin: LocalAccount | None = None) -> LocalAccount:
    """`acct` registers for MODEL in `group` (invited by `admin`) and stakes `amount`, with ETH and
    MESH sent by `funder` (everything it holds is the funder's; the deployer is the faucet)."""
    send_eth(m, funder, acct.address, 10**18)
    if funder.address == m.deployer.address:
        m.chain.transact(funder, m.chain.token.functions.mint(acct.address, amount + 100 * MESH))
    else:
        m.chain.transact(funder, m.chain.token.functions.transfer(acct.address, amount + 100 * MESH))
    join(m, acct, group, price, admin)
    if amount:
        m.mc.stake(acct, amount)
    m.chain.ensure_allowance(acct, m.chain.registry.address, 100 * MESH)  # bonds
    return acct


def sybils_of(m, attacker: LocalAccount, label: str, n: int, amount: int, group: bytes = ZERO32,
              price: int = PRICE) -> list[LocalAccount]:
    """`n` provider accounts funded by the attacker; in a private group the first is its admin and
    invites the others (the attacker consents to itself)."""
    out: list[LocalAccount] = []
    for i in range(n):
        admin = out[0] if out and group != ZERO32 else None
        out.append(become_provider(m, attacker, fresh_account(f"{label}-{i}"), amount, price, group, admin))
    return out


def honest_providers(m, label: str, n: int, amount: int = STAKE, group: bytes = ZERO32, price: int = PRICE,
                     admin: LocalAccount | None = None) -> list[LocalAccount]:
    """More honest providers, funded by the faucet (the deployer)."""
    return [become_provider(m, m.deployer, fresh_account(f"{label}-{i}"), amount, price, group, admin)
            for i in range(n)]


def shrink_stake(m, provider: LocalAccount, to: int) -> None:
    """Only `to` stays staked; the rest thaws."""
    m.mc.request_unstake(provider, stake(m, provider) - to)


def lock_for(max_tokens: int, price: int = PRICE) -> int:
    return P.lock_for(max_tokens, price)


def stake(m, who) -> int:
    return m.mc.account(who.address)["stake"]


def owed(m, who) -> int:
    return m.mc.account(who.address)["owed"]


def free_stake(m, who) -> int:
    return m.chain.registry.functions.freeStake(who.address).call()


def holdings(m, *accounts) -> int:
    """Every MESH base unit the accounts control: wallet, credit, stake, thawing stake, earnings."""
    total = 0
    for a in accounts:
        st = m.mc.account(a.address)
        total += m.chain.balance(a.address) + m.mc.credit(a.address) + st["stake"] + st["thawing"] + st["owed"]
    return total


class GasMeter:
    """Gas used per sender by every transaction sent through `m.chain.transact` (the market
    client, the keepers, settle_pending) while it is active; `add` counts the others."""

    def __init__(self, m) -> None:
        self.m = m
        self.used: dict[str, int] = defaultdict(int)

    def __enter__(self) -> GasMeter:
        real = self.m.chain.transact

        def transact(account, fn, **kw):
            receipt = real(account, fn, **kw)
            self.used[account.address] += receipt["gasUsed"]
            return receipt

        self.m.chain.transact = transact
        return self

    def __exit__(self, *exc) -> None:
        del self.m.chain.transact  # the class's method again

    def add(self, address: str, gas: int) -> None:
        self.used[to_checksum_address(address)] += gas

    def of(self, *accounts) -> int:
        return sum(self.used[a.address if hasattr(a, "address") else to_checksum_address(a)] for a in accounts)


def revert_name(action) -> str | None:
    """Run a transaction expected to be refused; the custom error's name (None if it went through)."""
    try:
        action()
    except ContractReverted as exc:
        return exc.name
    return None


# ============================================================================= jobs and the clock

def mine_at(m, t: int) -> None:
    """Mine an empty block at time `t` (if the chain is not past it): the latest time is then `t`."""
    if m.now() < t:
        m.rpc("evm_setNextBlockTimestamp", [t])
        m.rpc("evm_mine")


def mine_blocks(m, n: int) -> None:
    m.rpc("anvil_mine", [hex(n)])


def delivery_end(job: Job) -> int:
    return job.drawn_at + P.delivery_window


def claim_end(job: Job) -> int:
    return delivery_end(job) + P.claim_window


def reveal_end(job: Job) -> int:
    return claim_end(job) + P.reveal_window


def open_undrawn(m, consumer, group: bytes = ZERO32, max_tokens: int = MAX_TOKENS, price_cap: int = PRICE,
                 slot: int | None = None) -> tuple[Job, dict]:
    _, job, receipt = m.mc.open_job(consumer, MODEL, keccak(request_for(max_tokens)), max_tokens, price_cap,
                                    group=group, slot=slot)
    return job, receipt


def draw(m, consumer, job: Job, drawer=None) -> Job:
    """Draw `job`'s seats as the consumer library does: a draw that finds too few eligible
    providers reverts and is retried in the next block of the draw window; when the window is
    over the request is expired and opened again. (Sent with a fixed gas limit: an estimate would
    run with another block's prevrandao.) Returns the drawn job."""
    for _ in range(4):
        while m.chain.w3.eth.block_number < job.open_block + DRAW_WINDOW:
            try:
                receipt = m.chain.transact(drawer or consumer, m.chain.market.functions.drawSeats(job.as_abi()),
                                           gas=BLOCK_GAS)
            except ContractReverted as exc:
                if exc.name != "NotEnoughProviders":
                    raise
                continue  # the failed draw took a block: the next one brings another seed
            ev = m.mc._event(receipt, "SeatsDrawn")
            return job.drawn(ev["seed"], ev["drawnAt"], ev["seats"], ev["prices"])
        m.rpc("evm_mine")
        m.mc.expire(consumer, job)
        _, job, _ = m.mc.open_job(consumer, job.model_hash, job.prompt_hash, job.max_tokens, job.price_cap,
                                  group=job.group, slot=job.slot)
    raise AssertionError("scenario: no draw found three seats in four draw windows")


def open_job(m, consumer=None, group: bytes = ZERO32, max_tokens: int = MAX_TOKENS, price_cap: int = PRICE) -> Job:
    consumer = consumer or m.consumer
    return draw(m, consumer, open_undrawn(m, consumer, group, max_tokens, price_cap)[0])


def seats_of(job: Job) -> list[str]:
    return [s for s in job.seats if s != ZERO_ADDRESS]


def sign(m, job: Job, out, acct: LocalAccount) -> ResultClaim:
    out_hash, count = (out.hash, out.count) if isinstance(out, Output) else out
    return ResultClaim(job.job_id, out_hash, count).sign(acct, m.chain.chain_id, m.chain.market.address)


def settled(m, receipt) -> dict:
    return m.mc.settled_event(receipt)


@dataclass
class Reroll:
    job: Job  # the committee kept
    draws: int  # requests opened and drawn, the kept one included
    abandoned: list[Job] = field(default_factory=list)  # drawn, never contacted, not yet refunded
    refunded: int = 0


def reroll_drawn(m, consumer: LocalAccount, want: Callable[[list[str]], bool], group: bytes = ZERO32,
                 max_tokens: int = MAX_TOKENS, max_draws: int = 300) -> Reroll:
    """The consumer's re-rolls (A12): open and draw requests until the committee drawn satisfies
    `want`, abandoning the others (never contacted; each holds its escrow and its slot until its
    claim window ends, when the consumer finalizes it for a refund: `release`)."""
    r = Reroll(job=None, draws=0)  # type: ignore[arg-type]
    for _ in range(max_draws):
        try:
            slot = m.mc.free_slot(consumer.address)
        except ChainError:  # every slot holds an abandoned job: wait for their claim windows, refund
            release(m, consumer, r)
            slot = m.mc.free_slot(consumer.address)
        job = draw(m, consumer, open_undrawn(m, consumer, group, max_tokens, slot=slot)[0])
        r.draws += 1
        if want(seats_of(job)):
            r.job = job
            return r
        r.abandoned.append(job)
    raise AssertionError(f"scenario: no wanted committee in {max_draws} draws")


def release(m, consumer: LocalAccount, r: Reroll) -> None:
    """Finalize every abandoned request once its claim window is over (nobody committed: refund)."""
    if not r.abandoned:
        return
    mine_at(m, max(claim_end(j) for j in r.abandoned))
    for j in r.abandoned:
        m.mc.finalize(consumer, j)
        r.refunded += 1
    r.abandoned.clear()


# ============================================================================= the draw, as anyone computes it

def pool_key(m, group: bytes = ZERO32) -> bytes:
    return m.chain.registry.functions.poolKey(MODEL, group).call()


def members(m, group: bytes = ZERO32) -> list[tuple[str, int, int]]:
    """The pool's members as a draw reads them: (provider, price, free stake)."""
    reg, pool = m.chain.registry.functions, pool_key(m, group)
    size = reg.poolSize(pool).call()
    if not size:
        return []
    with m.chain.w3.batch_requests() as batch:
        for i in range(size):
            batch.add(reg.poolMember(pool, i))
        return [tuple(x)[:3] for x in batch.execute()]  # (provider, price, free); its `touched` block aside


def mirror_draw(pool_members, seed: bytes, count: int, exclude=(), for_seat: bool = False, price_cap: int = 0,
                max_tokens: int = 0) -> list[str]:
    """ProviderRegistry.draw in Python (rejection sampling, at most 64 attempts)."""
    exclude = {to_checksum_address(a) for a in exclude}
    picked: list[str] = []
    cap, size = P.weight_cap, len(pool_members)
    for attempt in range(64):
        if len(picked) >= min(count, 3) or not size:
            break
        r = int.from_bytes(keccak(seed + attempt.to_bytes(32, "big")), "big")
        provider, price, free = pool_members[r % size]
        if (r >> 128) % cap >= min(free, cap):
            continue
        if provider in exclude or provider in picked:
            continue
        if for_seat and (price > price_cap or P.lock_for(max_tokens, price) * P.max_lock_share > free):
            continue
        picked.append(provider)
    return picked


def prevrandao(m, block: int) -> bytes:
    return bytes(m.chain.w3.eth.get_block(block)["mixHash"])


def seat_seed(m, job: Job, mix: bytes) -> bytes:
    """JobMarket._seed for the seats: keccak256(abi.encode(jobId, blockhash(openBlock), prevrandao))."""
    return keccak(job.job_id + bytes(m.chain.w3.eth.get_block(job.open_block)["hash"]) + mix)


def jury_seed(m, job: Job, dispute_block: int, mix: bytes) -> bytes:
    """keccak256(abi.encode(_seed(jobId, disputeBlock), "jury"))."""
    inner = keccak(job.job_id + bytes(m.chain.w3.eth.get_block(dispute_block)["hash"]) + mix)
    return keccak(abi_encode(["bytes32", "string"], [inner, "jury"]))


def seat_draw(pool_members, job: Job, seed: bytes) -> list[str]:
    return mirror_draw(pool_members, seed, 3, exclude=[job.consumer], for_seat=True, price_cap=job.price_cap,
                       max_tokens=job.max_tokens)


#: Returns a zero byte and block.prevrandao (PREVRANDAO PUSH1 1 MSTORE PUSH1 33 PUSH0 RETURN), run as an
#: eth_call's init code (the zero byte first: returned "code" may not start with 0xEF, EIP-3541).
PREVRANDAO_CODE = "0x4460015260215ff3"


def pending_prevrandao(m) -> bytes:
    """The best an account can know before its transaction is mined, on this node: the prevrandao
    a call at the "pending" block sees (Anvil: the latest block's, not the next one's)."""
    reply = m.chain.w3.provider.make_request("eth_call", [{"data": PREVRANDAO_CODE}, "pending"])
    assert "result" in reply, f"scenario: the node refused a call at the pending block: {reply}"
    return bytes.fromhex(reply["result"][2:])[1:33]


def next_prevrandao(m, ts: int) -> bytes:
    """The prevrandao of the next block if it is mined at `ts`: what an Ethereum proof-of-stake chain
    publishes one slot ahead (EIP-4399: a block's prevrandao is the RANDAO mix of its parent's
    post-state). Anvil derives it from the parent and the timestamp, not the block's
    transactions: mine the block on a snapshot, read it, revert."""
    snap = m.rpc("evm_snapshot")
    m.rpc("evm_setNextBlockTimestamp", [ts])
    m.rpc("evm_mine")
    mix = prevrandao(m, m.chain.w3.eth.block_number)
    assert m.rpc("evm_revert", [snap]) is True
    return mix


class Block:
    """Transactions gathered in the mempool (automine off) and mined in one block, ordered by tip,
    at a pinned time: a bundle, or what any sender gets with higher tips."""

    def __init__(self, m, gas: GasMeter | None = None) -> None:
        self.m = m
        self.meter = gas
        self._next: dict[str, int] = {}
        self.sent: list[tuple[LocalAccount, bytes]] = []

    def __enter__(self) -> Block:
        self.m.rpc("evm_setAutomine", [False])
        return self

    def __exit__(self, *exc) -> None:
        self.m.rpc("evm_setAutomine", [True])

    def send(self, acct: LocalAccount, fn, tip_gwei: int = 1, gas: int = BLOCK_GAS) -> bytes:
        w3 = self.m.chain.w3
        base = w3.eth.get_block("latest")["baseFeePerGas"]
        nonce = self._next.get(acct.address, w3.eth.get_transaction_count(acct.address, "pending"))
        self._next[acct.address] = nonce + 1
        tx = fn.build_transaction({"from": acct.address, "nonce": nonce, "gas": gas, "chainId": self.m.chain.chain_id,
                                   "maxPriorityFeePerGas": tip_gwei * GWEI, "maxFeePerGas": tip_gwei * GWEI + 4 * base})
        h = w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
        self.sent.append((acct, h))
        return h

    def mine(self, ts: int | None = None) -> dict[bytes, dict]:
        if ts is not None:
            self.m.rpc("evm_setNextBlockTimestamp", [ts])
        self.m.rpc("evm_mine")
        receipts = {h: self.m.chain.w3.eth.get_transaction_receipt(h) for _, h in self.sent}
        if self.meter is not None:
            for acct, h in self.sent:
                self.meter.add(acct.address, receipts[h]["gasUsed"])
        self.sent = []
        return receipts


# ============================================================================= the honest parties' software

class TruthJudge:
    """Stands in for provider.judge.ScorerJudge (see the module docstring): passes what an honest
    build produces, hard-fails anything else."""

    def __init__(self, honest: Iterable[Output] = (HONEST, OTHER_BUILD)) -> None:
        self.honest = {(o.text_hash, tuple(o.tokens)) for o in honest}

    def verdict(self, sampling, tokens, text_hash) -> tuple[int, str]:
        if (bytes(text_hash), tuple(tokens)) in self.honest:
            return PASS, "what an honest build produces"
        return HARD, "not what the model produces for this request"


class Seat:
    """One honest provider's software after it served: its claim keeper and its jury duty."""

    def __init__(self, m, acct: LocalAccount, judge, log: list[str]) -> None:
        self.m, self.acct = m, acct
        say = (lambda msg: log.append(f"{acct.address[:8]} {msg}"))
        self.claims = ClaimKeeper(m.chain, acct, on_event=say)
        self.court = CourtKeeper(m.chain, acct, judge, on_event=say)

    def serve(self, job: Job, out: Output, request: bytes = REQUEST) -> ResultClaim:
        """What provider.node does once it streamed `out` for its seat of `job`: sign the Result and
        hand the claim keeper what a jury may need."""
        seat = job.seat_of(self.acct.address)
        claim = sign(self.m, job, out, self.acct)
        self.claims.add(Claim(job.job_id, job, seat, out.hash, out.count, text_hash=out.text_hash,
                              tokens=out.packed, request=request))
        return claim

    def tick(self) -> None:
        self.claims.tick()
        self.court.tick()


class Consumer:
    """An honest consumer's software: its journal (what consumer.query saves as answers arrive) and
    `mesh settle` (settle_pending), run at every step."""

    def __init__(self, m, acct: LocalAccount, work: Path, log: list[str]) -> None:
        self.m, self.acct, self.log = m, acct, log
        self.journal = Journal(work / f"jobs-{acct.address}")

    def opened(self, job: Job) -> None:
        self.journal.save(PendingJob(job.job_id, job))

    def received(self, job: Job, seat: int, claim: ResultClaim, text: str) -> None:
        pj = next((p for p in self.journal.pending() if p.job_id == job.job_id), PendingJob(job.job_id, job))
        pj.job = job
        pj.results[seat], pj.texts[seat] = claim, text
        self.journal.save(pj)

    def tick(self) -> list[dict]:
        return settle_pending(self.m.chain, self.acct, self.journal,
                              on_event=lambda note: self.log.append(f"consumer {note.text}"))


class Honest:
    """Every honest party of a scenario: providers (each a Seat) and consumers."""

    def __init__(self, m, work: Path, providers: Iterable[LocalAccount] = (), judge=None) -> None:
        self.m, self.work = m, work
        self.log: list[str] = []
        self.judge = judge or TruthJudge()
        self.seats: dict[str, Seat] = {}
        self.consumers: dict[str, Consumer] = {}
        for p in providers:
            self.add(p)

    def add(self, acct: LocalAccount) -> Seat:
        if acct.address not in self.seats:
            self.seats[acct.address] = Seat(self.m, acct, self.judge, self.log)
        return self.seats[acct.address]

    def consumer(self, acct: LocalAccount) -> Consumer:
        if acct.address not in self.consumers:
            self.consumers[acct.address] = Consumer(self.m, acct, self.work, self.log)
        return self.consumers[acct.address]

    def seat(self, acct) -> Seat:
        return self.seats[acct.address if hasattr(acct, "address") else to_checksum_address(acct)]

    def tick(self) -> None:
        for s in self.seats.values():
            s.tick()
        for c in self.consumers.values():
            c.tick()


def _phase(st: JobState) -> tuple:
    return (st.closed, st.contest is not None, st.disputer, len(st.jurors), st.void, len(st.evidence),
            len(st.committed), len(st.revealed))


def _next_deadline(m, st: JobState) -> None:
    """Mine to the job's next deadline (or one more block when it waits for blocks, not time)."""
    now, job = m.now(), st.job
    if st.contest is None:
        times = [delivery_end(job), claim_end(job), reveal_end(job)]
    elif st.disputer is None:
        times = [st.contest.contested_at + P.dispute_window]
    elif not st.jurors and not st.void:
        m.rpc("evm_mine")  # the jury is drawn from the block after the dispute, within DRAW_WINDOW blocks
        return
    elif st.jury_at:
        times = [st.jury_at + k * P.court_phase for k in (1, 2, 3)]
    else:
        times = []
    later = [t for t in times if t > now]
    mine_at(m, later[0] if later else now + 1)


def drive(m, job_id: bytes, honest: Honest, hook: Callable[[JobState], None] | None = None,
          max_steps: int = 40) -> JobState:
    """Move the chain's clock through the job's life from deadline to deadline; at each, the
    attacker's `hook` acts first, then every honest party. Returns the closed job's state."""
    last = None
    st = job_state(m.chain, job_id)
    for _ in range(max_steps):
        if hook is not None:
            hook(st)
        honest.tick()
        st = job_state(m.chain, job_id)
        if st.closed:
            return st
        key = _phase(st)
        if key != last:  # something happened at this time: everyone looks again before time moves
            last = key
            continue
        _next_deadline(m, st)
    raise AssertionError(f"scenario: job 0x{job_id.hex()[:12]} did not close; honest log: {honest.log[-12:]}")


@contextmanager
def chain_clock_moved_only_by_the_scenario(m):
    """Blocks take the time the scenario set last (Anvil's timestamp interval 0) instead of the wall
    clock's: how long the machine takes between two transactions then changes no block's time, so
    a deadline property holds to the second. Restored after (the session's Anvil is shared)."""
    m.rpc("anvil_setBlockTimestampInterval", [0])
    try:
        yield
    finally:
        m.rpc("anvil_removeBlockTimestampInterval")


def settled_at(m, job_id: bytes) -> int:
    """The time of the block whose JobSettled closed the job: not the latest block's, which later
    keeper transactions (or any other test's) may have moved past it."""
    (log,) = m.chain.market.events.JobSettled().get_logs(from_block=0, argument_filters={"jobId": job_id})
    return int(m.chain.w3.eth.get_block(log["blockNumber"])["timestamp"])


# ============================================================================= the attacker's hands

def salt_for(job: Job, seat: int) -> bytes:
    return keccak(b"attacker salt" + job.job_id + bytes([seat]))


def commit_claim(m, acct: LocalAccount, job: Job, out: Output) -> dict:
    seat = job.seat_of(acct.address)
    return m.mc.commit(acct, job, seat, commitment(job.job_id, seat, acct.address, out.hash, out.count,
                                                   salt_for(job, seat)))


def reveal_claim(m, acct: LocalAccount, job: Job, out: Output) -> dict:
    seat = job.seat_of(acct.address)
    return m.mc.reveal(acct, job, seat, out.hash, out.count, salt_for(job, seat))


def post_evidence(m, job: Job, c: Contest, seat: int, out: Output, poster: LocalAccount) -> dict:
    return m.mc.post_evidence(poster, job, c, seat, out.text_hash, out.packed)


class Script:
    """An attacker's moves keyed by the job's phase, as a `drive` hook: each runs once, when the
    chain's time reaches its phase. Phases: "delivery" [deliveryEnd, claimEnd), "claim"
    [claimEnd, revealEnd), "contest" (contested, undisputed), "evidence", "vote", "reveal" (court
    phases), "disputed" (no jury yet)."""

    def __init__(self, m, **moves: Callable[[JobState], None]) -> None:
        self.m = m
        self.moves = moves
        self.done: set[str] = set()
        self.errors: list[str] = []

    def phase(self, st: JobState) -> str | None:
        now, job = self.m.now(), st.job
        if st.closed:
            return None
        if st.contest is None:
            if delivery_end(job) <= now < claim_end(job):
                return "delivery"
            if claim_end(job) <= now < reveal_end(job):
                return "claim"
            return None
        if st.disputer is None:
            return "contest"
        if not st.jury_at:
            return "disputed"
        k = (now - st.jury_at) // P.court_phase
        return ("evidence", "vote", "reveal")[k] if k < 3 else None

    def __call__(self, st: JobState) -> None:
        ph = self.phase(st)
        if ph in self.moves and ph not in self.done:
            self.done.add(ph)
            try:
                self.moves[ph](st)
            except ContractReverted as exc:
                self.errors.append(f"{ph}: {exc.name}")


def vote_moves(m, jurors: Sequence[LocalAccount], verdicts: Callable[[JobState], int]) -> dict:
    """Script moves for jurors who vote `verdicts(state)` (sent directly: the attacker's jurors, or
    lazy ones)."""
    def salt(j):
        return keccak(b"juror salt " + j.address.encode())

    def commit(st):
        for j in jurors:
            if j.address in st.jurors:
                m.mc.commit_vote(j, st.job_id, vote_commitment(st.job_id, j.address, verdicts(st), salt(j)))

    def reveal(st):
        for j in jurors:
            if j.address in st.jurors:
                m.mc.reveal_vote(j, st.job_id, verdicts(st), salt(j))

    return {"vote": commit, "reveal": reveal}


# ============================================================================= what a scenario measured

@dataclass
class Measured:
    """One run of one strategy. Amounts in MESH base units; gas in gas units.

    attacker_net     what the attacker's accounts (sybils included) hold after minus before
    attacker_value   the honest price of the work the attacker obtained (answers it holds): an honest
                     consumer's net is -(that price), so profit = attacker_net + attacker_value is 0
                     for honest behaviour, and > 0 only when cheating pays
    victim_loss      honest stake burned + honest work left unpaid + what an honest consumer paid
                     beyond the honest price
    """

    key: str
    title: str
    formula: str
    attacker_net: int = 0
    attacker_value: int = 0
    attacker_gas: int = 0
    victim_loss: int = 0
    victim_gas: int = 0
    honest_burned: int = 0
    facts: dict = field(default_factory=dict)

    @property
    def profit(self) -> int:
        return self.attacker_net + self.attacker_value

    @property
    def cost(self) -> int:
        return max(0, -self.attacker_net)

    @property
    def gain(self) -> int:
        return max(0, self.attacker_net) + self.attacker_value

    def say(self) -> str:
        """The measured numbers, for an assertion message."""
        head = {"profit": self.profit, "attacker_net": self.attacker_net, "attacker_value": self.attacker_value,
                "victim_loss": self.victim_loss, "honest_burned": self.honest_burned,
                "attacker_gas": self.attacker_gas, "victim_gas": self.victim_gas}
        return "; ".join(f"{k}={v}" for k, v in {**head, **self.facts}.items())


def _delta(before: dict[str, int], m, accts) -> dict[str, int]:
    return {a.address: holdings(m, a) - before[a.address] for a in accts}


def _snapshot_holdings(m, accts) -> dict[str, int]:
    return {a.address: holdings(m, a) for a in accts}


# ############################################################################# A1 — targeting a victim

def a1_targeting(m, work: Path, max_tokens: int = MAX_TOKENS) -> Measured:
    """A1: a consumer with two sybil providers wants an honest provider's stake burned. It cannot
    name a committee: (a) in its own private group the victim never sits (it never joined); (b) a
    mesh the victim runs admits only whom its admin invited; (c) in the open market it re-rolls
    drawn requests until the committee is the victim and both sybils, which sign the same bogus
    output: contested, the sybils the provisional majority. The victim's claim keeper disputes,
    draws the jury (the pool's other providers, running their court keepers), posts its tokens;
    the sybils post theirs; the jury judges; the keeper resolves."""
    attacker, victim = m.consumer, m.providers[0]
    honest = Honest(m, work, m.providers)
    with GasMeter(m) as gas:
        before = holdings(m, attacker)
        own = keccak(b"a1: the attacker's own group")
        sybils = sybils_of(m, attacker, "a1-sybil", 2, 100 * MESH, group=own)
        in_own_group = victim.address in [p for p, _, _ in members(m, own)]
        snap = m.rpc("evm_snapshot")  # (b) on a snapshot: the victim stays in the open market
        mesh = keccak(b"a1: the victim's mesh")
        join(m, victim, mesh)
        mesh_refusal = revert_name(lambda: join(m, sybils[0], mesh))
        assert m.rpc("evm_revert", [snap]) is True
        for s in sybils:
            join(m, s, ZERO32)
        victim_stake, victim_owed = stake(m, victim), owed(m, victim)
        want = {victim.address, *(s.address for s in sybils)}
        r = reroll_drawn(m, attacker, lambda seats: set(seats) == want, max_tokens=max_tokens)
        job, lie = r.job, bogus()
        v = job.seat_of(victim.address)
        results = [honest.seat(victim).serve(job, HONEST, request_for(max_tokens)) if s == victim.address
                   else sign(m, job, lie, acct_of(s)) for s in seats_of(job)]
        c = m.mc.contest_of(m.mc.settle(attacker, job, results))
        script = Script(m, evidence=lambda st: [post_evidence(m, job, st.contest, i, lie, acct_of(job.seats[i]))
                                                for i in range(3) if i != v])
        st = drive(m, job.job_id, honest, script)
        release(m, attacker, r)
        lost, paid = victim_stake - stake(m, victim), owed(m, victim) - victim_owed
        return Measured(
            "A1" if max_tokens == MAX_TOKENS else "A1-big", "consumer + 2 sybils target a victim",
            f"cost = 2*lockFor({max_tokens},{PRICE}) burned + jury reserve {job.jury_fee} + re-rolls "
            "(open+draw+finalize gas, E[draws] = C(6,3)/1 = 20 for 2 sybils among 6 equal stakes)",
            attacker_net=holdings(m, attacker, *sybils) - before, attacker_value=HONEST_PAY,
            attacker_gas=gas.of(attacker, *sybils), victim_loss=lost + max(0, HONEST_PAY - paid),
            victim_gas=gas.of(*m.providers), honest_burned=lost,
            facts={"victim_in_attackers_group": in_own_group, "victim_mesh_refuses_sybil": mesh_refusal,
                   "draws": r.draws, "provisional": c.provisional, "victim_seat": v,
                   "slash_mask": st.settled["slashMask"], "paid": list(st.settled["paid"])[:3],
                   "victim_stake_lost": lost, "victim_paid": paid, "sybil_mask": 0b111 & ~(1 << v),
                   "jurors": list(st.jurors), "sybil_lock": lock_for(max_tokens), "script_errors": script.errors})


# ############################################################################# A2, A3 — claims the consumer cannot drop

def a2_change_job_under_claims(m, work: Path) -> Measured:
    """A2: two seats delivered; the attacker adds a seat (the job's tuple changes), contacts neither
    the third seat nor the added one, never settles. The honest claim keepers follow SeatAdded,
    commit with the job as it now is, reveal and finalize."""
    attacker = m.consumer
    honest = Honest(m, work, m.providers)
    with GasMeter(m) as gas:
        before = holdings(m, attacker)
        job = open_job(m)
        served = [acct_of(s) for s in job.seats[:2]]
        b = {p.address: (stake(m, p), owed(m, p)) for p in served}
        for p in served:
            honest.seat(p).serve(job, HONEST)
        grown, _, _ = m.mc.add_seat(attacker, job)
        mine_at(m, delivery_end(job))
        late = revert_name(lambda: m.mc.add_seat(attacker, grown))
        stale = revert_name(lambda: m.mc.commit(served[0], job, job.seat_of(served[0].address), keccak(b"c")))
        st = drive(m, job.job_id, honest)
        lost = [b[p.address][0] - stake(m, p) for p in served]
        paid = [owed(m, p) - b[p.address][1] for p in served]
        return Measured(
            "A2", "change the job under committed claims", "cost = the honest pay of the seats that delivered",
            attacker_net=holdings(m, attacker) - before, attacker_value=2 * HONEST_PAY, attacker_gas=gas.of(attacker),
            victim_loss=sum(lost) + sum(max(0, HONEST_PAY - x) for x in paid), victim_gas=gas.of(*served),
            honest_burned=sum(lost),
            facts={"add_seat_at_delivery_end": late, "commit_with_old_tuple": stale, "outcome": st.settled["outcome"],
                   "stake_lost": lost, "paid": paid, "refund": st.settled["refund"]})


def _three_served(m, honest: Honest) -> tuple[Job, list[LocalAccount], list[ResultClaim], list[int]]:
    job = open_job(m)
    seats = [acct_of(s) for s in seats_of(job)]
    claims = [honest.seat(p).serve(job, HONEST) for p in seats]
    return job, seats, claims, [owed(m, p) for p in seats]


def _free_inference(key: str, title: str, m, gas: GasMeter, attacker, before: int, seats, owed0, facts) -> Measured:
    paid = [owed(m, p) - o for p, o in zip(seats, owed0)]
    return Measured(key, title, "cost = the honest pay of the three seats (nothing can be left out once committed)",
                    attacker_net=holdings(m, attacker) - before, attacker_value=3 * HONEST_PAY,
                    attacker_gas=gas.of(attacker), victim_loss=sum(max(0, HONEST_PAY - x) for x in paid),
                    victim_gas=gas.of(*seats), facts={"paid": paid, **facts})


def a3a_settle_all_missing(m, work: Path) -> Measured:
    """A3 (a): the attacker got all three answers and settles with every seat marked missing at the
    first moment the contract would allow it; the seats' keepers commit in the claim window."""
    attacker = m.consumer
    honest = Honest(m, work, m.providers)
    tries: dict[str, str | None] = {}

    def leave_out(when: str):
        return lambda st: tries.setdefault(when, revert_name(lambda: m.mc.settle(attacker, job, [None] * 3)))

    with GasMeter(m) as gas:
        before = holdings(m, attacker)
        job, seats, _, owed0 = _three_served(m, honest)
        mine_at(m, delivery_end(job) - 1)
        leave_out("before_delivery_end")(None)
        drive(m, job.job_id, honest, Script(m, delivery=leave_out("at_delivery_end"), claim=leave_out("at_claim_end")))
        return _free_inference("A3a", "settle with every delivered result missing", m, gas, attacker, before, seats,
                               owed0, {"leave_out": tries})


def a3b_grow_and_leave_out(m, work: Path) -> Measured:
    """A3 (b): the attacker adds a seat after the three answers (the job's tuple changes), never
    contacts it, and leaves everyone out at claimEnd; the keepers commit with the current tuple."""
    attacker = m.consumer
    honest = Honest(m, work, m.providers)
    tries: dict[str, str | None] = {}
    with GasMeter(m) as gas:
        before = holdings(m, attacker)
        job, seats, _, owed0 = _three_served(m, honest)
        grown, _, _ = m.mc.add_seat(attacker, job)

        def leave_out(st):
            tries["at_claim_end"] = revert_name(lambda: m.mc.settle(attacker, grown, [None] * 4))

        drive(m, job.job_id, honest, Script(m, claim=leave_out))
        return _free_inference("A3b", "add a seat, then leave everyone out", m, gas, attacker, before, seats, owed0,
                               {"leave_out": tries, "added": grown.seats[3]})


def a3c_front_run_commits(m, work: Path) -> Measured:
    """A3 (c): the keepers' commits are sent for the first block at deliveryEnd; the attacker sees
    them in the mempool and front-runs them in that block with the only changes it has (addSeat,
    settle with everyone missing). The keepers' transactions are their own (ClaimKeeper.tick in
    threads, their clock the block being built); the block is mined with everything in it."""
    attacker = m.consumer
    honest = Honest(m, work, m.providers)
    fns = m.chain.market.functions
    with GasMeter(m) as gas:
        before = holdings(m, attacker)
        job, seats, _, owed0 = _three_served(m, honest)
        mine_at(m, delivery_end(job) - 1)
        m.chain.fixed_gas = BLOCK_GAS
        m.chain.pending_time = lambda: delivery_end(job)  # the keepers' clock: the block being built
        try:
            with Block(m, gas) as blk:
                threads = [threading.Thread(target=honest.seat(p).claims.tick) for p in seats]
                for t in threads:
                    t.start()
                deadline = time.monotonic() + 60
                while int(m.rpc("txpool_status")["pending"], 16) < len(seats):
                    assert time.monotonic() < deadline, f"scenario: the keepers sent no commits: {honest.log}"
                    time.sleep(0.02)
                front = [blk.send(attacker, fns.addSeat(job.as_abi()), tip_gwei=100),
                         blk.send(attacker, fns.settle(job.as_abi(), [ResultClaim.missing()] * 3), tip_gwei=100)]
                receipts = blk.mine(delivery_end(job))
                for t in threads:
                    t.join(60)
        finally:
            del m.chain.pending_time
            m.chain.fixed_gas = None
        block = m.chain.w3.eth.get_block(receipts[front[0]]["blockNumber"], full_transactions=True)
        commits = [m.chain.w3.eth.get_transaction_receipt(tx["hash"])["status"] for tx in block["transactions"]
                   if tx["from"] in {p.address for p in seats}]
        facts = {"front_runs": [receipts[h]["status"] for h in front], "commits_in_that_block": commits,
                 "front_ran_first": block["transactions"][0]["from"] == attacker.address}
        drive(m, job.job_id, honest)
        return _free_inference("A3c", "front-run the keepers' commits", m, gas, attacker, before, seats, owed0, facts)


def _victim_with_two_sybils(m, attacker, label: str) -> tuple[list[LocalAccount], Reroll]:
    sybils = sybils_of(m, attacker, label, 2, 100 * MESH)
    want = {m.providers[0].address, *(s.address for s in sybils)}
    return sybils, reroll_drawn(m, attacker, lambda seats: set(seats) == want)


def a3d_no_majority(m, work: Path) -> Measured:
    """A3 (d): the victim sits with two sybils (re-rolled in the open market), which sign two
    different bogus outputs: three different results, nobody provisional, nobody paid unless a
    jury rules. The victim's keeper disputes; the jury passes it and hard-fails the sybils."""
    attacker, victim = m.consumer, m.providers[0]
    honest = Honest(m, work, m.providers)
    with GasMeter(m) as gas:
        before = holdings(m, attacker)
        owed0 = owed(m, victim)
        sybils, r = _victim_with_two_sybils(m, attacker, "a3d-sybil")
        job = r.job
        lies = dict(zip((s.address for s in sybils), (bogus(1, "bogus one"), bogus(1, "bogus two"))))
        results = [honest.seat(victim).serve(job, HONEST) if s == victim.address else sign(m, job, lies[s], acct_of(s))
                   for s in seats_of(job)]
        c = m.mc.contest_of(m.mc.settle(attacker, job, results))
        script = Script(m, evidence=lambda st: [post_evidence(m, job, st.contest, job.seat_of(a), o, acct_of(a))
                                                for a, o in lies.items()])
        st = drive(m, job.job_id, honest, script)
        release(m, attacker, r)
        paid = owed(m, victim) - owed0
        return Measured(
            "A3d", "two sybils vote for no majority", "cost = 2*lockFor(128,10) burned + jury reserve 1280 + re-rolls",
            attacker_net=holdings(m, attacker, *sybils) - before, attacker_value=HONEST_PAY,
            attacker_gas=gas.of(attacker, *sybils), victim_loss=max(0, HONEST_PAY - paid), victim_gas=gas.of(victim),
            facts={"provisional": c.provisional, "outcome": st.settled["outcome"], "victim_paid": paid,
                   "slash_mask": st.settled["slashMask"], "draws": r.draws,
                   "sybil_mask": sum(1 << job.seat_of(s.address) for s in sybils)})


# ############################################################################# A4 — a cartel of two seats

def a4_cartel(m, work: Path) -> Measured:
    """A4: two colluding providers hold two seats of a job (the pool is the honest P0 and the
    cartel P1, P2); they commit as early as v2 allows to the same bogus maxTokens claim, never
    compute nor deliver, and reveal it. The honest consumer holds P0's answer only and runs `mesh
    settle`; P0's keeper commits, reveals, finalizes (contested: the cartel is the provisional
    majority) and disputes. Jurors (P3 and two more, joined after the draw) run their court keepers."""
    consumer, p0, cartel = m.consumer, m.providers[0], m.providers[1:3]
    honest = Honest(m, work, [p0])
    buyer = honest.consumer(consumer)
    with GasMeter(m) as gas:
        m.mc.deregister(m.providers[3])
        before = _snapshot_holdings(m, [*cartel, consumer, p0])
        stake0 = stake(m, p0)
        job = open_job(m, consumer)
        buyer.opened(job)
        join(m, m.providers[3], ZERO32)
        for j in (m.providers[3], *honest_providers(m, "a4-juror", 2)):
            honest.add(j)
        lie = bogus()
        buyer.received(job, job.seat_of(p0.address), honest.seat(p0).serve(job, HONEST), HONEST.text)
        script = Script(m, delivery=lambda st: [commit_claim(m, p, job, lie) for p in cartel],
                        claim=lambda st: [reveal_claim(m, p, job, lie) for p in cartel],
                        evidence=lambda st: [post_evidence(m, job, st.contest, job.seat_of(p.address), lie, p)
                                             for p in cartel])
        st = drive(m, job.job_id, honest, script)
        d = _delta(before, m, [*cartel, consumer, p0])
        p0_lost = stake0 - stake(m, p0)
        consumer_extra = -d[consumer.address] - HONEST_PAY
        return Measured(
            "A4", "two-seat cartel signs a bogus maxTokens claim",
            "cartel: -2*lockFor(128,10) burned (+ gas); consumer pays P0 and the jury reserve (1280, 3 x 426 paid)",
            attacker_net=sum(d[p.address] for p in cartel), attacker_gas=gas.of(*cartel),
            victim_loss=p0_lost + max(0, HONEST_PAY - d[p0.address] - p0_lost) + max(0, consumer_extra),
            victim_gas=gas.of(p0, consumer), honest_burned=p0_lost,
            facts={"provisional": st.contest.provisional, "slash_mask": st.settled["slashMask"],
                   "honest_paid": d[p0.address] + p0_lost, "honest_stake_lost": p0_lost,
                   "cartel_profit": [d[p.address] for p in cartel], "consumer_jury_cost": consumer_extra,
                   "p0_seat": job.seat_of(p0.address), "outcome": st.settled["outcome"],
                   "script_errors": script.errors})


# ############################################################################# A5, A10 — copying, withholding

def a5_copier(m, work: Path, consumer_disputes: bool = False) -> Measured:
    """A5: seats P0, P1 deliver; P2 does no work. v1's copy (a commitment to the copied result,
    front-running the consumer's settle at claimEnd) is refused in a real mempool (commits close
    at claimEnd). v2's best: a blind commitment in the claim window, so the consumer cannot leave it
    out; it reveals its guess. The workers' keepers commit and reveal; the consumer's `mesh settle`
    waits and finalizes: contested, the workers the provisional majority; resolved after the
    dispute window (or, with `consumer_disputes`, judged: the copier's guess hard-fails)."""
    consumer = m.consumer
    m.mc.deregister(m.providers[3])
    honest = Honest(m, work, m.providers[:3])  # the copier's seat serves nothing: its keeper has no claim
    buyer = honest.consumer(consumer)
    fns = m.chain.market.functions
    with GasMeter(m) as gas:
        before = _snapshot_holdings(m, [*m.providers[:3], consumer])
        job = open_job(m, consumer)
        buyer.opened(job)
        workers, copier = [acct_of(s) for s in job.seats[:2]], acct_of(job.seats[2])
        join(m, m.providers[3], ZERO32)  # jurors, if anyone disputes
        for j in (m.providers[3], *honest_providers(m, "a5-juror", 2)):
            honest.add(j)
        copier_stake = stake(m, copier)
        for i, p in enumerate(workers):
            buyer.received(job, i, honest.seat(p).serve(job, HONEST), HONEST.text)
        snap = m.rpc("evm_snapshot")  # v1's attack, then back
        mine_at(m, claim_end(job) - 1)
        with Block(m) as blk:
            settle_tx = blk.send(consumer, fns.settle(job.as_abi(), [r.as_abi() for r in _held(buyer, job)]
                                                      + [ResultClaim.missing()]), tip_gwei=1)
            copy_tx = blk.send(copier, fns.commitResult(job.as_abi(), 2, commitment(
                job.job_id, 2, copier.address, HONEST.hash, HONEST.count, keccak(b"copier salt"))), tip_gwei=100)
            rc = blk.mine(claim_end(job))
        v1 = {"copy_commit": rc[copy_tx]["status"], "settle": rc[settle_tx]["status"]}
        assert m.rpc("evm_revert", [snap]) is True
        guess = bogus(HONEST.count, "the copier's guess")
        moves = {"delivery": lambda st: commit_claim(m, copier, job, guess),
                 "claim": lambda st: reveal_claim(m, copier, job, guess),
                 "evidence": lambda st: post_evidence(m, job, st.contest, 2, guess, copier)}
        if consumer_disputes:
            moves["contest"] = lambda st: m.mc.dispute(consumer, job, st.contest, REQUEST)
        script = Script(m, **moves)
        st = drive(m, job.job_id, honest, script)
        d = _delta(before, m, [copier, consumer, *workers])
        lost = copier_stake - stake(m, copier)
        return Measured(
            "A5-disputed" if consumer_disputes else "A5", "copier commits blind in the claim window",
            "copier: unpaid; gas of commit + reveal" + (f"; judged: -lockFor(128,10) = {lock_for(MAX_TOKENS)}"
                                                         if consumer_disputes else "; delay to revealEnd + disputeWindow"),
            attacker_net=d[copier.address], attacker_gas=gas.of(copier),
            victim_loss=sum(max(0, HONEST_PAY - d[p.address]) for p in workers)
            + max(0, -d[consumer.address] - 2 * HONEST_PAY), victim_gas=gas.of(*workers, consumer),
            facts={"v1_front_run": v1, "copier_paid": st.settled["paid"][2], "copier_stake_lost": lost,
                   "workers_paid": [d[p.address] for p in workers], "consumer_cost": -d[consumer.address],
                   "outcome": st.settled["outcome"], "provisional": st.contest.provisional,
                   "closed_after_s": m.now() - job.drawn_at, "bound_s": reveal_end(job) - job.drawn_at + P.dispute_window
                   + (3 * P.court_phase + DRAW_WINDOW * 12 if consumer_disputes else 0), "script_errors": script.errors})


def _held(buyer: Consumer, job: Job) -> list[ResultClaim]:
    pj = next(p for p in buyer.journal.pending() if p.job_id == job.job_id)
    return [pj.results[i] for i in sorted(pj.results)]


def a10_hostage(m, work: Path) -> Measured:
    """A10: seat P2 computes the answer but never sends its signed result, and commits to it as soon
    as v2 allows (deliveryEnd). The consumer holds two agreeing results and cannot settle (a seat is
    missing before claimEnd; a committed one cannot be left out after); the honest keepers commit,
    reveal; `mesh settle` finalizes after the reveal window. P2 reveals its (correct) answer."""
    consumer = m.consumer
    m.mc.deregister(m.providers[3])
    honest = Honest(m, work, m.providers[:3])  # the hostage-taker's keeper holds no claim: it withholds
    buyer = honest.consumer(consumer)
    tries: dict[str, str | None] = {}
    with GasMeter(m) as gas, chain_clock_moved_only_by_the_scenario(m):
        before = _snapshot_holdings(m, [*m.providers[:3], consumer])
        job = open_job(m, consumer)
        buyer.opened(job)
        workers, hostage = [acct_of(s) for s in job.seats[:2]], acct_of(job.seats[2])
        for i, p in enumerate(workers):
            buyer.received(job, i, honest.seat(p).serve(job, HONEST), HONEST.text)
        results = _held(buyer, job) + [None]

        def delivery(st):
            commit_claim(m, hostage, job, HONEST)
            tries["settle_at_delivery_end"] = revert_name(lambda: m.mc.settle(consumer, job, results))

        def claim(st):
            tries["settle_at_claim_end"] = revert_name(lambda: m.mc.settle(consumer, job, results))
            reveal_claim(m, hostage, job, HONEST)

        locked = {}
        script = Script(m, delivery=delivery, claim=claim)
        st = drive(m, job.job_id, honest, lambda st: (script(st), locked.setdefault(
            script.phase(st), [m.mc.account(p.address)["locked"] for p in workers])))
        d = _delta(before, m, [hostage, consumer, *workers])
        return Measured(
            "A10", "a seat withholds its result and commits", "hostage: paid its honest work (3 x 400 in all); "
            "delay to revealEnd (30 min); honest commit+reveal gas",
            attacker_net=d[hostage.address], attacker_value=-HONEST_PAY, attacker_gas=gas.of(hostage),
            victim_loss=sum(max(0, HONEST_PAY - d[p.address]) for p in workers)
            + max(0, -d[consumer.address] - 3 * HONEST_PAY), victim_gas=gas.of(*workers),
            facts={**tries, "outcome": st.settled["outcome"], "paid": list(st.settled["paid"])[:3],
                   "workers_locked": locked, "consumer_cost": -d[consumer.address],
                   "closed_after_s": settled_at(m, job.job_id) - job.drawn_at,
                   "bound_s": reveal_end(job) - job.drawn_at})


# ############################################################################# A6 — locks without consent

def a6_locks_without_consent(m, work: Path) -> Measured:
    """A6: ten dust requests (maxTokens 1) drawn among four 10 MESH providers, never contacted. A
    draw locks nothing; a seat without a signed result is never locked. The providers' keepers run
    through every window (they served nothing: they do nothing); an honest consumer hires them."""
    attacker, victims = m.consumer, m.providers
    honest = Honest(m, work, victims)
    with GasMeter(m) as gas:
        for v in victims:
            shrink_stake(m, v, 10 * MESH)
        before = holdings(m, attacker)
        jobs = [open_job(m, attacker, max_tokens=1) for _ in range(10)]
        locked_now = [m.mc.account(v.address)["locked"] for v in victims]
        hired = open_job(m, m.consumer2)
        for t in (delivery_end(jobs[-1]), claim_end(jobs[-1]), reveal_end(jobs[-1]) + 1):
            mine_at(m, t)
            honest.tick()
        free_after = [free_stake(m, v) for v in victims]
        stakes = [stake(m, v) for v in victims]
        for j in jobs:
            m.mc.finalize(attacker, j)
        return Measured(
            "A6", "lock providers' stake with dust jobs", "cost = (openJob + drawSeats + finalize gas) per job; "
            "escrow 4*maxTokens*priceCap returned",
            attacker_net=holdings(m, attacker) - before, attacker_gas=gas.of(attacker),
            victim_loss=sum(s - f for s, f in zip(stakes, free_after)), victim_gas=gas.of(*victims),
            facts={"locked_after_ten_draws": locked_now, "free_after_windows": free_after, "stakes": stakes,
                   "commits": sum(1 for line in honest.log if "committed" in line), "hired": len(seats_of(hired)),
                   "jobs": len(jobs)})


# ############################################################################# A7, A11 — reputation

def _ledger(m, work: Path, name: str, local: LocalAccount):
    from meshmarket.ledger import open_ledger
    from meshmarket.ledger.indexer import Indexer

    led = open_ledger(f"sqlite:///{work / name}")
    led.add_local_account(local.address)
    Indexer(led, m.chain).sync()
    return led


def _honest_history(m, consumer: LocalAccount, each: int = 5) -> None:
    """The honest node's own agreed jobs on the open market, until every provider of it sat in
    `each` of them: they become proven (agreed >= 3, still a week later: 5 x 2^(-7/14) = 3.5)."""
    seated = defaultdict(int)
    for _ in range(10 * each):
        job = open_job(m, consumer)
        m.mc.settle(consumer, job, [sign(m, job, HONEST, acct_of(s)) for s in seats_of(job)])
        for s in seats_of(job):
            seated[s] += 1
        if min(seated[p.address] for p in m.providers) >= each:
            return
    raise AssertionError(f"scenario: the honest history seated some provider fewer than {each} times: {seated}")


def a7_laundering(m, work: Path, tokens: int = 0) -> Measured:
    """A7 (tokens 0) / A7b (tokens 1): three sybils run agreed jobs among themselves: in a private
    group the attacker administers, and in the open market of a model nobody else serves (the draw
    can seat only them); then they offer the popular model. An honest node (consumer2, its own
    jobs among P0..P3) indexes everything with the ledger and scores with ledger.Reputation."""
    from meshmarket.ledger import Reputation
    from meshmarket.ledger.indexer import Indexer

    attacker = m.consumer
    with GasMeter(m) as gas:
        _honest_history(m, m.consumer2)
        before = holdings(m, attacker)
        group = keccak(b"a7: the attacker's private group")
        lonely = keccak(b"a7: a model nobody else serves")
        sybils = sybils_of(m, attacker, f"a7-{tokens}", 3, 100 * MESH, group=group)
        outcomes = []
        out = bogus(tokens) if tokens else Output("", ())
        for _ in range(4):
            job = open_job(m, attacker, group=group)
            ev = settled(m, m.mc.settle(attacker, job, [sign(m, job, out, acct_of(s)) for s in seats_of(job)]))
            outcomes.append((ev["outcome"], sum(ev["paid"])))
        for s in sybils:
            m.mc.register(s, lonely, keccak(b"lonely"), PRICE)
        for _ in range(4):
            _, job, _ = m.mc.open_job(attacker, lonely, keccak(REQUEST), MAX_TOKENS, PRICE)
            job = draw(m, attacker, job)
            ev = settled(m, m.mc.settle(attacker, job, [sign(m, job, out, acct_of(s)) for s in seats_of(job)]))
            outcomes.append((ev["outcome"], sum(ev["paid"])))
        for s in sybils:
            join(m, s, ZERO32)
        led = _ledger(m, work, f"a7-{tokens}.sqlite", m.consumer2)
        try:
            Indexer(led, m.chain).sync()
            now = float(m.now())
            scores = Reputation(led).scores([*(p.address for p in m.providers), *(s.address for s in sybils)], now)
            ev = led.evidence([s.address for s in sybils])
            facts = {"outcomes": outcomes, "sybils_proven": [scores[s.address].proven for s in sybils],
                     "sybil_agreed": [round(ev[s.address].agreed, 6) if s.address in ev else 0 for s in sybils],
                     "sybil_passed": [round(ev[s.address].passed, 6) if s.address in ev else 0 for s in sybils],
                     "honest_proven": [scores[p.address].proven for p in m.providers],
                     "sybil_score": [round(scores[s.address].score, 4) for s in sybils],
                     "newcomer_score": round(Reputation(led).scores([fresh_account("nobody").address], now)
                                             [fresh_account("nobody").address].score, 4)}
        finally:
            led.close()
        return Measured(
            "A7" if tokens == 0 else "A7b", f"launder sybils with {tokens}-token jobs among themselves",
            "cost = gas (the sybils' pay is the attacker's own); gain = reputation, which counts none of it",
            attacker_net=holdings(m, attacker, *sybils) - before, attacker_gas=gas.of(attacker, *sybils), facts=facts)


def a11_smear(m, work: Path, keeper_up: bool = True) -> Measured:
    """A11: the attacker (a consumer) wants a delivered answer of the victim (P0) counted as
    missing. With the victim's keeper running, leaving it out reverts before claimEnd and after its
    commit. With its keeper down for the whole claim window (`keeper_up` False: the victim breaks
    the liveness assumption), the attacker leaves it out and the chain shows it missing. An honest
    node (consumer2, its own jobs among P0..P3) indexes it and scores the victim."""
    from meshmarket.ledger import Reputation
    from meshmarket.ledger.indexer import Indexer

    attacker, victim = m.consumer, m.providers[0]
    honest = Honest(m, work, m.providers)
    state = "up" if keeper_up else "down"
    with GasMeter(m) as gas:
        _honest_history(m, m.consumer2)
        led = _ledger(m, work, f"a11-{state}.sqlite", m.consumer2)
        try:
            now = float(m.now()) + 7 * 86400
            score0 = Reputation(led).scores([victim.address], now)[victim.address]
            before = holdings(m, attacker)
            owed0 = owed(m, victim)
            tries: dict[str, str | None] = {}
            r = reroll_drawn(m, attacker, lambda seats: victim.address in seats)
            job = r.job
            v = job.seat_of(victim.address)
            held = []
            for i, a in enumerate(seats_of(job)):
                if i == v and not keeper_up:  # it delivered, then its software was down: no claim kept
                    held.append(sign(m, job, HONEST, victim))
                else:
                    held.append(honest.seat(acct_of(a)).serve(job, HONEST))
            left_out = [None if i == v else c for i, c in enumerate(held)]
            mine_at(m, delivery_end(job) - 1)
            tries["before_claim_end"] = revert_name(lambda: m.mc.settle(attacker, job, left_out))

            def at_claim(st):
                tries["at_claim_end"] = revert_name(lambda: m.mc.settle(attacker, job, left_out))
                if tries["at_claim_end"] is not None:
                    m.mc.settle(attacker, job, held)

            drive(m, job.job_id, honest, Script(m, claim=at_claim))
            release(m, attacker, r)
            Indexer(led, m.chain).sync()
            outcome = next(x.outcome for x in led.job(job.job_id).seats if x.provider == victim.address)
            score1 = Reputation(led).scores([victim.address], now)[victim.address]
            missing_evidence = led.evidence([victim.address])[victim.address].missing
        finally:
            led.close()
        unpaid = HONEST_PAY - (owed(m, victim) - owed0)
        return Measured(
            "A11" if keeper_up else "A11-down", "smear: a delivered answer recorded as missing"
            + ("" if keeper_up else " (victim's keeper down)"),
            "cost = gas + the honest pay" if keeper_up else
            "the victim's answer is unpaid (its keeper missed its whole claim window: the liveness assumption); "
            "its reputation is untouched",
            attacker_net=holdings(m, attacker) - before, attacker_value=3 * HONEST_PAY, attacker_gas=gas.of(attacker),
            victim_loss=unpaid, victim_gas=gas.of(victim),
            facts={**tries, "victim_outcome": outcome, "missing_evidence": missing_evidence,
                   "score_before": round(score0.score, 6), "score_after": round(score1.score, 6),
                   "proven_before": score0.proven, "proven_after": score1.proven, "victim_unpaid": unpaid,
                   "assumption": not keeper_up})


# ############################################################################# A8, A9 — the consumer library

def _scripted_query(m, work: Path, roles: dict[int, str], honest: Honest):
    """The consumer library's whole query (consumer.ask.Asker.ask_on: open, draw, fan out over
    libp2p, verify, compare, settle, journal) against P0..P2 serving on real libp2p hosts with
    scripted answers, by seat: "honest" streams HONEST, signs it and hands the claim to its keeper
    as provider.node does; "overclaim" signs more tokens than the job allows, consistently (text,
    tokens and signature agree); "die" streams one token and dies. P3 leaves: no spare seat.
    Returns (receipt, what the user was shown while streaming, the journal)."""
    from contextlib import AsyncExitStack

    import trio

    from meshmarket.consumer.ask import AskOptions, Asker, discover
    from meshmarket.consumer.query_events import SeatToken
    from meshmarket.mesh.p2p import Node
    from meshmarket.mesh.errors import ProtocolError
    from meshmarket.mesh.protocol import INFER_PROTOCOL, MANIFEST_PROTOCOL, InferRequest, ResultFrame, TokenFrame

    m.mc.deregister(m.providers[3])
    consumer = m.consumer
    journal = honest.consumer(consumer).journal
    shown: list[str] = []

    def handler(acct: LocalAccount):
        async def serve(session) -> None:
            req = InferRequest.parse(await session.recv())
            role = roles.get(req.seat, "honest")
            if role == "die":
                await session.send(TokenFrame(text="Two").to_wire())
                raise RuntimeError("killed mid-stream")
            out = HONEST if role == "honest" else bogus(req.job.max_tokens + 1, "an overclaim")
            await trio.sleep(0.3)  # the dying seat streams first
            for piece in (out.text[:9], out.text[9:]):
                await session.send(TokenFrame(text=piece).to_wire())
            claim = ResultClaim(req.job_id, out.hash, out.count).sign(acct, m.chain.chain_id, m.chain.market.address)
            await session.send(ResultFrame(output_hash=out.hash, token_count=out.count, tokens=out.packed,
                                           signature=claim.signature).to_wire())
            if role == "honest":
                honest.seat(acct).claims.add(Claim(req.job_id, req.job, req.seat, out.hash, out.count,
                                                   text_hash=out.text_hash, tokens=out.packed, request=REQUEST))
        return serve

    async def no_manifest(session) -> None:  # a seat without a manifest still serves (the receipt says so)
        await session.recv()
        raise ProtocolError("internal", "no manifest in this scenario")

    async def main():
        async with AsyncExitStack() as stack:
            for p in m.providers[:3]:
                node = await stack.enter_async_context(Node.start(bytes(p.key), max_connections_per_peer=4))
                node.serve(INFER_PROTOCOL, handler(p), timeout=10)
                node.serve(MANIFEST_PROTOCOL, no_manifest, timeout=10)
                m.mc.register(p, MODEL, keccak(b"manifest of " + p.address.encode()), PRICE,
                              endpoint=f"{node.listen_addrs[0]}/p2p/{node.peer_id}")
            offers = discover(m.chain, MODEL)
            cnode = await stack.enter_async_context(Node.start(bytes(consumer.key)))
            asker = Asker(m.chain, consumer, journal=journal)
            with trio.fail_after(120):
                return await asker.ask_on(cnode, sampling_for(), MODEL, offers,
                                          AskOptions(max_tokens=MAX_TOKENS, max_price=PRICE, first_token_timeout=20,
                                                     token_timeout=10, min_pool=0),  # about lies, not juries
                                          sink=lambda e: isinstance(e, SeatToken) and e.streamed and shown.append(e.text))

    return trio.run(main), "".join(shown), journal


def a8_provable_lie(m, work: Path) -> Measured:
    """A8: one seat signs, consistently, more tokens than the job allows (a provable lie). The
    consumer library (Asker.ask_on) keeps the lie (Answer.lie) and settles at once with it."""
    honest = Honest(m, work, m.providers[:3])  # the liar's seat runs no keeper work: it serves no claim
    with GasMeter(m) as gas:
        stakes = {p.address: stake(m, p) for p in m.providers[:3]}
        owed0 = {p.address: owed(m, p) for p in m.providers[:3]}
        receipt, shown, journal = _scripted_query(m, work, {2: "overclaim"}, honest)
        job = job_state(m.chain, receipt.job_id).job
        liar = acct_of(job.seats[2])
        workers = [acct_of(s) for s in job.seats[:2]]
        lost = stakes[liar.address] - stake(m, liar)
        paid = [owed(m, p) - owed0[p.address] for p in workers]
        return Measured(
            "A8", "a provable lie (tokenCount > maxTokens)", f"liar: -lockFor(128,10) = {lock_for(MAX_TOKENS)} burned",
            attacker_net=-lost + owed(m, liar) - owed0[liar.address], attacker_gas=0,
            victim_loss=sum(max(0, HONEST_PAY - x) for x in paid), victim_gas=gas.of(m.consumer),
            facts={"outcome": receipt.outcome, "settled": receipt.settled, "liar_stake_lost": lost,
                   "liar_slot": [(s.status, s.slashed) for s in receipt.slots if s.provider == liar.address],
                   "paid_at_once": paid, "settled_before_delivery_end": m.now() < delivery_end(job),
                   "journal_left": len(journal.pending()), "text_is_honest": receipt.text == HONEST.text})


def a9_withheld_answer(m, work: Path) -> Measured:
    """A9: the seat that streams first dies mid-answer and no spare seat exists; the two others
    deliver the same signed answer. The consumer library must show and save the answer it will pay
    for; `mesh settle` settles without the dead seat after the claim window (the live seats' keepers
    committed meanwhile)."""
    honest = Honest(m, work, m.providers[:3])
    with GasMeter(m) as gas:
        before = holdings(m, m.consumer)
        receipt, shown, journal = _scripted_query(m, work, {0: "die"}, honest)
        saved = {pj.job_id: pj for pj in journal.pending()}.get(receipt.job_id)
        st = drive(m, receipt.job_id, honest)
        job = st.job
        cost = before - holdings(m, m.consumer)
        return Measured(
            "A9", "a withheld answer (a seat dies, no spare)", "the consumer pays the two delivered answers, and has them",
            attacker_net=0, victim_loss=max(0, cost - 2 * HONEST_PAY), victim_gas=gas.of(m.consumer),
            facts={"outcome_at_query": receipt.outcome, "receipt_text_is_the_answer": receipt.text == HONEST.text,
                   "streamed": shown, "receipt_streamed": receipt.streamed,
                   "shown_after_stream": bool(receipt.text) and receipt.streamed != receipt.text,
                   "journal_texts": sorted(set(saved.texts.values())) if saved else None,
                   "journal_seats": sorted(saved.texts) if saved else None,
                   "settled": st.settled["outcome"], "paid": list(st.settled["paid"])[:3], "consumer_cost": cost,
                   "dead_seat": job.seats[0], "journal_left": len(journal.pending())})


# ############################################################################# A12, A22 — re-rolls

def a12_rerolls(m, work: Path) -> Measured:
    """A12: the consumer cannot choose a committee, but it can refuse one. Before the draw the seed
    is unknown (it includes the draw block's prevrandao), so a re-roll is a drawn request
    abandoned: it costs an openJob and a drawSeats, and holds the escrow and the slot until the
    claim window ends (then a finalize refunds it). Measured here: one re-roll, the draw window of
    an undrawn request, and the re-rolls needed for a given committee (a victim and two sybils among
    six equal stakes: 1 in 20)."""
    attacker, victim = m.consumer, m.providers[0]
    with GasMeter(m) as gas:
        before = holdings(m, attacker)
        job, r_open = open_undrawn(m, attacker, slot=15)
        guess = seat_seed(m, job, pending_prevrandao(m))
        pool_now = members(m)
        drawn, r_draw = m.mc.draw_seats(attacker, job)
        busy = revert_name(lambda: open_undrawn(m, attacker, slot=15))
        early = revert_name(lambda: m.mc.finalize(attacker, drawn))
        mine_at(m, claim_end(drawn))
        r_fin = m.mc.finalize(attacker, drawn)
        refund = settled(m, r_fin)["refund"]
        undrawn, _ = open_undrawn(m, attacker, slot=14)
        mine_blocks(m, DRAW_WINDOW - 1)  # the next block is openBlock + DRAW_WINDOW: the last of the window
        expire_early = revert_name(lambda: m.mc.expire(attacker, undrawn))
        mine_blocks(m, 1)
        r_exp = m.mc.expire(attacker, undrawn)
        sybils = sybils_of(m, attacker, "a12-sybil", 2, 100 * MESH)
        want = {victim.address, *(s.address for s in sybils)}
        start = gas.of(attacker)
        r = reroll_drawn(m, attacker, lambda seats: set(seats) == want)
        release(m, attacker, r)
        mine_at(m, claim_end(r.job))
        m.mc.finalize(attacker, r.job)
        per = r_open["gasUsed"] + r_draw["gasUsed"] + r_fin["gasUsed"]
        return Measured(
            "A12", "re-roll committees by abandoning drawn requests",
            "per re-roll: openJob + drawSeats + finalize gas; escrow 4*maxTokens*priceCap and a slot held "
            "deliveryWindow + claimWindow (1,200 s); E[draws] = 1/p for a committee of probability p",
            attacker_net=holdings(m, attacker, *sybils) - before, attacker_gas=gas.of(attacker),
            facts={"seed_known_before_draw": guess == drawn.seed,
                   "drawn_is_the_pools_draw": seats_of(drawn) == seat_draw(pool_now, drawn, drawn.seed),
                   "slot_busy": busy, "finalize_before_claim_end": early, "refund": refund, "escrow": drawn.held,
                   "gas_per_reroll": per, "open_gas": r_open["gasUsed"], "draw_gas": r_draw["gasUsed"],
                   "finalize_gas": r_fin["gasUsed"], "expire_before_window": expire_early,
                   "expire_gas": r_exp["gasUsed"], "draws_for_committee": r.draws,
                   "gas_for_committee": gas.of(attacker) - start, "kept": seats_of(r.job), "wanted": sorted(want)})


def a22_conditional_draw(m, work: Path, requests: int = 2) -> Measured:
    """A22 (the draw's residual bias): whoever can make a draw conditional on its outcome (a block
    builder, a bundle that reverts, an EIP-7702 account; emulated here by drawing on a snapshot and
    dropping the draw when the committee is unwanted) gets one try per block of the draw window,
    never more: a committee of probability p is had with probability 1 - (1 - p)^DRAW_WINDOW."""
    attacker, victim = m.consumer, m.providers[0]
    with GasMeter(m) as gas:
        sybils = sybils_of(m, attacker, "a22-sybil", 2, 100 * MESH)
        want = {victim.address, *(s.address for s in sybils)}
        got, tries, expired = 0, [], []
        for _ in range(requests):
            job, _ = open_undrawn(m, attacker)
            n = 0
            while m.chain.w3.eth.block_number < job.open_block + DRAW_WINDOW:
                n += 1
                snap = m.rpc("evm_snapshot")
                try:
                    drawn = m.mc.draw_seats(attacker, job)[0]
                    if set(seats_of(drawn)) == want:
                        got += 1
                        mine_at(m, claim_end(drawn))
                        m.mc.finalize(attacker, drawn)  # (a real attacker would use it)
                        break
                except ContractReverted:
                    pass
                assert m.rpc("evm_revert", [snap]) is True
                m.rpc("evm_mine")  # the block is built without the draw
            else:
                expired.append(revert_name(lambda: m.mc.draw_seats(attacker, job)))
                m.mc.expire(attacker, job)
            tries.append(n)
        p = 1 / 20
        bound = 1 - (1 - p) ** DRAW_WINDOW
        return Measured(
            "A22", "conditional draw: one try per block of the window",
            f"P(wanted committee) <= 1 - (1 - p)^{DRAW_WINDOW}; p = 1/20 here -> {1 - (1 - p) ** DRAW_WINDOW:.3f}",
            attacker_gas=gas.of(attacker, *sybils),
            facts={"requests": requests, "got": got, "tries": tries, "after_window": expired, "bound": bound,
                   "p_value": binomial_tail(requests, got, bound)})


# ############################################################################# A13, A14, A20 — steering a draw

def _odds(base, arrangements, wanted, draw_fn, n: int = 400) -> list[float]:
    """Each fixed arrangement's chance over random seeds: what keeping those sybils in the pool
    gives without steering."""
    rng = random.Random(20260601)
    seeds = [rng.randbytes(32) for _ in range(n)]
    return [sum(bool(wanted(draw_fn(base + arr, sd))) for sd in seeds) / n for arr in arrangements]


def binomial_tail(trials: int, hits: int, p: float) -> float:
    """P(at least `hits` successes in `trials` draws of chance `p`): how plausible an outcome is
    without steering. The tests call a result steered below 1e-4."""
    from math import comb

    return sum(comb(trials, k) * p**k * (1 - p) ** (trials - k) for k in range(hits, trials + 1))


def _moves(m, blk: Block, sybils: Sequence[LocalAccount]) -> None:
    """Each sybil re-registers into the open market (appended to its pool), in this order, ahead of
    anything tipped less than 50 gwei."""
    for i, s in enumerate(sybils):
        blk.send(s, m.chain.registry.functions.register(MODEL, keccak(b"manifest of " + s.address.encode()), PRICE,
                                                        ZERO32, ""), tip_gwei=100 - i, gas=600_000)


def _subsets(n: int) -> list[tuple[int, ...]]:
    """Every choice of parked sybils to move, smallest first: the attacker's options in a block."""
    from itertools import combinations

    return [c for r in range(n + 1) for c in combinations(range(n), r)]


def _plan(base, parked, free: int, wanted, draw_fn, seed: bytes) -> tuple[int, ...] | None:
    """The first choice of sybils to move that makes `draw_fn` on the moved pool `wanted`."""
    for sub in _subsets(len(parked)):
        if wanted(draw_fn(base + [(parked[i].address, PRICE, free) for i in sub], seed)):
            return sub
    return None


def a13_steer_seats(m, work: Path, trials: int = 12, lookahead: bool = False) -> Measured:
    """A13: eight sybils wait in a group of the attacker's. For its own request it computes, from
    the best it knows before its draw's block, which of them to move into the open pool for the
    victim to sit with two sybils, moves them and draws, in one block (moves first, by tip).
    Without lookahead (Anvil; the lead's premise) the seed it computes is never the draw's. With
    lookahead (`lookahead`: Ethereum PoS, where the next block's prevrandao is public a slot ahead)
    it picks, block by block in the window, a move that works, and the moves steer the draw."""
    attacker, victim = m.consumer, m.providers[0]
    park = keccak(b"a13: where the attacker's sybils wait")
    with GasMeter(m) as gas:
        parked = sybils_of(m, attacker, "a13-sybil", 8, 100 * MESH, group=park)
        sybil_set = {s.address for s in parked}
        base = members(m)
        # By symmetry (equal stakes) a choice's chance depends only on how many move: the prefixes.
        arrangements = [[(s.address, PRICE, 100 * MESH) for s in parked[:k]] for k in range(len(parked) + 1)]
        probe, _ = open_undrawn(m, attacker, slot=0)  # the odds do not depend on the request
        m.rpc("evm_mine")

        def wanted(seats):
            return len(seats) == 3 and victim.address in seats and len(sybil_set & set(seats)) >= 2

        odds = _odds(base, arrangements, wanted, lambda pool, sd: seat_draw(pool, probe, sd))
        best = tuple(range(max(range(len(odds)), key=odds.__getitem__)))
        rows = []
        snap = m.rpc("evm_snapshot")
        for t in range(trials):
            mine_blocks(m, t + 1)  # every trial at another height: another prevrandao, another request
            job, _ = open_undrawn(m, attacker, slot=1)
            ts, sub, guess = m.now() + 1, best, None
            for _ in range(DRAW_WINDOW if lookahead else 1):
                mix = next_prevrandao(m, ts) if lookahead else pending_prevrandao(m)
                guess = seat_seed(m, job, mix)
                fit = _plan(base, parked, 100 * MESH, wanted, lambda pool, sd: seat_draw(pool, job, sd), guess)
                if fit is not None or not lookahead or m.chain.w3.eth.block_number + 1 >= job.open_block + DRAW_WINDOW:
                    sub = fit if fit is not None else best
                    break
                mine_at(m, ts)  # nothing works in this block: let it pass, try the next
                ts += 1
            with Block(m, gas) as blk:
                _moves(m, blk, [parked[i] for i in sub])
                h = blk.send(attacker, m.chain.market.functions.drawSeats(job.as_abi()), tip_gwei=1)
                rc = blk.mine(ts)[h]
            ev = m.chain.market.events.SeatsDrawn().process_receipt(rc, errors=DISCARD)
            seats = [to_checksum_address(a) for a in ev[0]["args"]["seats"]] if ev else []
            seed = seat_seed(m, job, prevrandao(m, rc["blockNumber"]))
            assert not ev or bytes(ev[0]["args"]["seed"]) == seed, "scenario: the seed mirror disagrees"
            rows.append({"moved": len(sub), "seed_guessed": seed == guess, "wanted": wanted(seats),
                         "natural": seat_draw(base, job, seed), "seats": seats,
                         "hindsight": _plan(base, parked, 100 * MESH, wanted,
                                            lambda pool, sd: seat_draw(pool, job, sd), seed) is not None})
            assert m.rpc("evm_revert", [snap]) is True
            snap = m.rpc("evm_snapshot")
        hits = sum(r["wanted"] for r in rows)
        return Measured(
            "A20a" if lookahead else "A13", "steer the seat draw by moving sybils into the pool"
            + (" (PoS lookahead)" if lookahead else ""),
            f"success <= max over fixed moves of P(victim + 2 sybils) = {max(odds):.3f} per request without "
            "lookahead; with lookahead ~1 (one choice of moves per block of the window)",
            attacker_gas=gas.of(attacker, *parked) // max(1, trials),
            facts={"trials": trials, "wanted": hits, "natural_odds": [round(x, 3) for x in odds],
                   "p_value": binomial_tail(trials, hits, max(odds)),
                   "seeds_guessed": sum(r["seed_guessed"] for r in rows),
                   "hindsight_possible": sum(r["hindsight"] for r in rows),
                   # a draw that reverted in the moves' block (a fix may refuse it) changed nothing
                   "moves_changed_committee": sum(bool(r["seats"]) and r["seats"] != r["natural"]
                                                  for r in rows if r["moved"]),
                   "rows": rows[:3]})


#: The jury-capture scenarios' parked sybils: a quarter of the weight cap each, so that keeping all
#: of them in the pool captures about one jury in nine (the bound is then sharp).
PARKED_STAKE = 25 * MESH


def _jury_setup(m, work: Path, label: str, parked_stake: int = PARKED_STAKE):
    """A contested, disputed job whose jury the attacker wants: nine honest providers in the open
    market, the attacker's seat sybil among them (re-rolled into the committee), eight more sybils
    parked in a group of the attacker's. The seat sybil lies; the two honest seats are the
    provisional majority; the attacker (the consumer) will dispute."""
    attacker = m.consumer
    extra = honest_providers(m, f"{label}-honest", 5)
    honest = Honest(m, work, [*m.providers, *extra])
    seat_sybil = sybils_of(m, attacker, f"{label}-seat", 1, 100 * MESH)[0]
    parked = sybils_of(m, attacker, f"{label}-juror", 8, parked_stake, group=keccak(label.encode() + b" park"))
    r = reroll_drawn(m, attacker, lambda seats: seat_sybil.address in seats)
    job, lie = r.job, bogus()
    s = job.seat_of(seat_sybil.address)
    results = [sign(m, job, lie, seat_sybil) if i == s else honest.seat(acct_of(p)).serve(job, HONEST)
               for i, p in enumerate(seats_of(job))]
    c = m.mc.contest_of(m.mc.settle(attacker, job, results))
    return honest, seat_sybil, parked, r, job, c, lie


def a14_steer_jury(m, work: Path, trials: int = 12, lookahead: bool = False,
                   parked_stake: int = PARKED_STAKE) -> Measured:
    """A14: the attacker disputes its own contested job (its seat sybil lied; two honest seats are
    the provisional majority) and wants a jury majority of sybils, to convict the honest seats. The
    jury is drawn in the block after the dispute (the honest keepers draw it at once: here the
    outsider's drawJury stands in for their transaction, the last of that block). The attacker
    moves parked sybils into the pool in the same block, ahead of the draw, choosing from the best
    it knows: without lookahead, the pending block's prevrandao (not the draw's); with lookahead
    (Ethereum PoS) the draw block's. With lookahead the first captured jury is then run to its end:
    the sybil jurors vote the honest seats hard, the honest seats' keepers post their evidence,
    honest jurors (if any) vote with their keepers."""
    attacker = m.consumer
    with GasMeter(m) as gas:
        start = holdings(m, attacker)
        honest, seat_sybil, parked, r, job, c, lie = _jury_setup(m, work, "a20b" if lookahead else "a14",
                                                                 parked_stake)
        sybil_set = {p.address for p in parked}
        base, exclude = members(m), [*seats_of(job), attacker.address]
        arrangements = [[(s.address, PRICE, parked_stake) for s in parked[:k]] for k in range(len(parked) + 1)]

        def wanted(jury):
            return len(jury) == 3 and len(sybil_set & set(jury)) >= 2

        def jury_of(pool, sd):
            return mirror_draw(pool, sd, 3, exclude)

        odds = _odds(base, arrangements, wanted, jury_of)
        best = tuple(range(max(range(len(odds)), key=odds.__getitem__)))
        rows = []
        snap = m.rpc("evm_snapshot")
        for t in range(trials):
            mine_blocks(m, t + 1)  # every trial's dispute at another height: another seed
            d = m.mc.dispute(attacker, job, c, REQUEST)
            ts = m.now() + 1
            mix = next_prevrandao(m, ts) if lookahead else pending_prevrandao(m)
            guess = jury_seed(m, job, d["blockNumber"], mix)
            sub = _plan(base, parked, parked_stake, wanted, jury_of, guess)
            sub = best if sub is None else sub
            with Block(m, gas) as blk:
                _moves(m, blk, [parked[i] for i in sub])
                h = blk.send(m.outsider, m.chain.market.functions.drawJury(job.as_abi(), c.as_abi()), tip_gwei=1)
                rc = blk.mine(ts)[h]
            ev = m.chain.market.events.JuryDrawn().process_receipt(rc, errors=DISCARD)
            jury = [to_checksum_address(a) for a in ev[0]["args"]["jurors"] if int(a, 16)] if ev else []
            seed = jury_seed(m, job, d["blockNumber"], prevrandao(m, rc["blockNumber"]))
            rows.append({"moved": len(sub), "seed_guessed": seed == guess, "captured": wanted(jury), "jury": jury,
                         "natural": jury_of(base, seed),
                         "hindsight": _plan(base, parked, parked_stake, wanted, jury_of, seed) is not None})
            if lookahead and wanted(jury):
                break
            assert m.rpc("evm_revert", [snap]) is True
            snap = m.rpc("evm_snapshot")
        captured = sum(r["captured"] for r in rows)
        facts = {"trials": len(rows), "captured": captured, "natural_odds": [round(x, 3) for x in odds],
                 "p_value": binomial_tail(len(rows), captured, max(odds)),
                 "seeds_guessed": sum(r["seed_guessed"] for r in rows),
                 "hindsight_possible": sum(r["hindsight"] for r in rows),
                 "moves_changed_jury": sum(bool(r["jury"]) and r["jury"] != r["natural"] for r in rows if r["moved"]),
                 "parked_stake": parked_stake, "rows": rows[:3]}
        lock = lock_for(MAX_TOKENS)
        if not (lookahead and rows[-1]["captured"]):
            rate = captured / len(rows)
            return Measured(
                "A14", "capture the jury by moving sybils into the pool",
                f"P(capture) <= max over fixed moves = {max(odds):.3f} (the stake share's own odds: "
                "3s^2 - 2s^3 for a share s of the jury pool's weight); expected per dispute: victims lose "
                "P(capture)*2*lock, the attacker its seat's lock otherwise",
                attacker_net=-round((1 - rate) * lock), attacker_gas=gas.of(attacker, *parked) // max(1, len(rows)),
                victim_loss=round(rate * 2 * lock), facts=facts)
        victims = [acct_of(a) for a in seats_of(job) if a != seat_sybil.address]
        before = {v.address: stake(m, v) for v in victims}
        sybil_jurors = [acct_of(a) for a in rows[-1]["jury"] if a in sybil_set]
        for a in rows[-1]["jury"]:
            if a not in sybil_set:
                honest.add(acct_of(a))
        s = job.seat_of(seat_sybil.address)
        verdict = pack_verdicts({i: PASS if i == s else HARD for i in range(3)})
        script = Script(m, evidence=lambda st: post_evidence(m, job, st.contest, s, lie, seat_sybil),
                        **vote_moves(m, sybil_jurors, lambda st: verdict))
        st = drive(m, job.job_id, honest, script)
        burned = sum(before[v.address] - stake(m, v) for v in victims)
        release(m, attacker, r)
        return Measured(
            "A20b", "capture the jury with PoS lookahead (moves + draw in one block)",
            "cost: gas of the moves; victims: 2*lockFor(128,10) burned and their pay; attacker: free inference",
            attacker_net=holdings(m, attacker, seat_sybil, *parked) - start, attacker_value=2 * HONEST_PAY,
            attacker_gas=gas.of(attacker, *parked),
            victim_loss=burned + 2 * HONEST_PAY - sum(int(st.settled["paid"][job.seat_of(v.address)]) for v in victims),
            honest_burned=burned,
            facts={**facts, "slash_mask": st.settled["slashMask"], "honest_burned": burned,
                   "paid": list(st.settled["paid"])[:3], "script_errors": script.errors})


# ############################################################################# A15, A16, A17 — private meshes and the court

def _careless_mesh(m, label: str, admin: LocalAccount, members_: Sequence[LocalAccount],
                   attacker: LocalAccount, n_sybils: int) -> tuple[bytes, list[LocalAccount]]:
    """A mesh `admin` runs with `members_` and `n_sybils` providers of the attacker that the admin
    invited (they looked like any provider: the admin consented to them, not to their owner)."""
    mesh = keccak(f"{label}: a private mesh".encode())
    join(m, admin, mesh)
    for p in members_:
        join(m, p, mesh, admin=admin)
    sybils = [become_provider(m, attacker, fresh_account(f"{label}-sybil-{i}"), 100 * MESH, group=mesh, admin=admin)
              for i in range(n_sybils)]
    return mesh, sybils


def a15_small_mesh_jury(m, work: Path) -> Measured:
    """A15: a small private mesh (the victim its admin, one other provider, and one provider of the
    attacker the admin invited). The attacker's second provider cannot join uninvited; it waits in
    the open market. The attacker's seat lies; the honest pair is provisional; the attacker
    disputes. The mesh has nobody left to judge: the jury is drawn, full, from the model's open
    market (P2, P3, one more honest provider, and the attacker's juror), whose honest members run
    their court keepers; the attacker's juror votes the honest seats hard if drawn."""
    attacker, victim, other = m.consumer, m.providers[0], m.providers[1]
    with GasMeter(m) as gas:
        before = holdings(m, attacker)
        juror_sybil = sybils_of(m, attacker, "a15-juror", 1, 100 * MESH)[0]
        mesh, (seat_sybil,) = _careless_mesh(m, "a15", victim, [other], attacker, 1)
        refused = revert_name(lambda: join(m, juror_sybil, mesh))
        extra = honest_providers(m, "a15-honest", 1)
        honest = Honest(m, work, [victim, other, *m.providers[2:], *extra])
        stakes = {p.address: stake(m, p) for p in (victim, other)}
        job = open_job(m, attacker, group=mesh)
        s, lie = job.seat_of(seat_sybil.address), bogus()
        results = [sign(m, job, lie, seat_sybil) if i == s else honest.seat(acct_of(p)).serve(job, HONEST)
                   for i, p in enumerate(seats_of(job))]
        c = m.mc.contest_of(m.mc.settle(attacker, job, results))
        verdict = pack_verdicts({i: PASS if i == s else HARD for i in range(3)})
        script = Script(m, contest=lambda st: m.mc.dispute(attacker, job, st.contest, REQUEST),
                        evidence=lambda st: post_evidence(m, job, st.contest, s, lie, seat_sybil),
                        **vote_moves(m, [juror_sybil], lambda st: verdict))
        st = drive(m, job.job_id, honest, script)
        lost = {a: stakes[a] - stake(m, acct_of(a)) for a in stakes}
        return Measured(
            "A15", "a cartel in a small private mesh wants a jury of one",
            "a jury is full (3) or void; from the mesh, else the model's open market: one captured juror of "
            "three decides nothing; cost: the seat's lock",
            attacker_net=holdings(m, attacker, juror_sybil, seat_sybil) - before, attacker_value=2 * HONEST_PAY,
            attacker_gas=gas.of(attacker, juror_sybil, seat_sybil), victim_loss=sum(lost.values()),
            victim_gas=gas.of(victim, other), honest_burned=sum(lost.values()),
            facts={"uninvited_juror": refused, "jurors": list(st.jurors), "jury_size": len(st.jurors),
                   "juror_is_sybil": [j == juror_sybil.address for j in st.jurors], "provisional": c.provisional,
                   "slash_mask": st.settled["slashMask"], "honest_stake_lost": list(lost.values()),
                   "jurors_from_open_market": all(m.mc.account(j)["group"] == ZERO32 for j in st.jurors),
                   "script_errors": script.errors})


def a16_withheld_evidence(m, work: Path) -> Measured:
    """A16: the sybil majority of a job (two of the attacker's providers the victim's mesh admitted)
    posts no evidence after the victim disputes, hoping a jury without evidence cannot convict. The
    victim's keeper disputes, draws the jury (the open market's P1..P3, the mesh having nobody
    else), posts its tokens. The jurors are lazy and vote pass on everything (sent directly: the
    property is the contract's rule for a seat that shows nothing, whatever jurors say)."""
    attacker, victim = m.consumer, m.providers[0]
    with GasMeter(m) as gas:
        before = holdings(m, attacker)
        mesh, sybils = _careless_mesh(m, "a16", victim, [], attacker, 2)
        honest = Honest(m, work, [victim])
        owed0 = owed(m, victim)
        job = open_job(m, attacker, group=mesh)
        v, lie = job.seat_of(victim.address), bogus()
        results = [honest.seat(victim).serve(job, HONEST) if i == v else sign(m, job, lie, acct_of(p))
                   for i, p in enumerate(seats_of(job))]
        c = m.mc.contest_of(m.mc.settle(attacker, job, results))
        st = drive(m, job.job_id, honest, Script(m, **vote_moves(m, m.providers[1:], lambda st: 0)))
        return Measured(
            "A16", "the majority withholds its evidence", f"cost = 2*lockFor(128,10) = {2 * lock_for(MAX_TOKENS)}",
            attacker_net=holdings(m, attacker, *sybils) - before, attacker_value=HONEST_PAY,
            attacker_gas=gas.of(attacker, *sybils), victim_loss=max(0, HONEST_PAY - (owed(m, victim) - owed0)),
            victim_gas=gas.of(victim),
            facts={"provisional": c.provisional, "slash_mask": st.settled["slashMask"],
                   "sybil_mask": sum(1 << job.seat_of(x.address) for x in sybils), "paid": list(st.settled["paid"])[:3],
                   "victim_paid": owed(m, victim) - owed0, "jurors": list(st.jurors)})


def _mesh_job_with_griefer(m, work: Path, label: str):
    """An honest consumer's job in a mesh of two honest providers and the attacker's griefer, the
    open market (P2, P3, one more) its jury pool; every seat delivers to the consumer (the griefer
    a bogus answer), whose `mesh settle` settles it: contested, the honest pair provisional."""
    consumer, (h0, h1) = m.consumer2, m.providers[:2]
    mesh, (griefer,) = _careless_mesh(m, label, h0, [h1], m.consumer, 1)
    extra = honest_providers(m, f"{label}-juror", 1)
    honest = Honest(m, work, [h0, h1, *m.providers[2:], *extra])
    buyer = honest.consumer(consumer)
    before = holdings(m, consumer)
    job = open_job(m, consumer, group=mesh)
    buyer.opened(job)
    g, lie = job.seat_of(griefer.address), bogus()
    for i, p in enumerate(seats_of(job)):
        out = lie if i == g else HONEST
        claim = sign(m, job, lie, griefer) if i == g else honest.seat(acct_of(p)).serve(job, HONEST)
        buyer.received(job, i, claim, out.text)
    buyer.tick()
    st = job_state(m.chain, job.job_id)
    return honest, buyer, griefer, job, st.contest, g, lie, before


def a17_grief_by_dispute(m, work: Path) -> Measured:
    """A17: a seat whose bogus answer lost (the honest pair is provisional) disputes anyway: every
    seat must publish its tokens and the honest pay waits for the court. The jury hard-fails it."""
    with GasMeter(m) as gas:
        honest, buyer, griefer, job, c, g, lie, before = _mesh_job_with_griefer(m, work, "a17")
        g_before = holdings(m, griefer)
        script = Script(m, contest=lambda st: m.mc.dispute(griefer, job, st.contest, REQUEST),
                        evidence=lambda st: post_evidence(m, job, st.contest, g, lie, griefer))
        st = drive(m, job.job_id, honest, script)
        consumer = m.consumer2
        cost = before - holdings(m, consumer)
        paid = jury_paid_of(m, job)
        return Measured(
            "A17", "grief by a dispute the disputer loses",
            f"griefer: lockFor(128,10) + its bond {job.jury_fee} (pays the jury); honest: evidence gas and a delay "
            "of 3 court phases + the jury draw",
            attacker_net=holdings(m, griefer) - g_before, attacker_gas=gas.of(griefer),
            victim_loss=max(0, cost - 2 * HONEST_PAY), victim_gas=gas.of(*m.providers[:2], consumer),
            facts={"slash_mask": st.settled["slashMask"], "griefer_mask": 1 << g, "consumer_cost": cost,
                   "honest_pay": 2 * HONEST_PAY, "jury_share": paid["share"] if paid else None,
                   "bond_refund": paid["bondRefund"] if paid else None, "jurors": list(st.jurors),
                   "griefer_loss": g_before - holdings(m, griefer), "fee": job.jury_fee, "lock": lock_for(MAX_TOKENS),
                   "delay_s": m.now() - st.contest.contested_at, "script_errors": script.errors})


def jury_paid_of(m, job: Job) -> dict | None:
    logs = m.chain.market.events.JuryPaid().get_logs(from_block=job.open_block, argument_filters={"jobId": job.job_id})
    return dict(logs[0]["args"]) if logs else None


# ############################################################################# A18, A19 — slots, dust

def a18_slot_exhaustion(m, work: Path) -> Measured:
    """A18: (a) another account opening jobs fills only its own sixteen slots; (b) a seat that wants
    a consumer's slot held as long as possible contests the job, disputes at the last second of the
    dispute window and draws the jury in the last block of its draw window (the honest keepers
    asleep until then); the court runs; the consumer's `mesh settle` resolves and reuses the slot."""
    with GasMeter(m) as gas:
        for _ in range(16):
            open_undrawn(m, m.consumer)
        free = m.mc.free_slot(m.consumer2.address)
        honest, buyer, griefer, job, c, g, lie, _ = _mesh_job_with_griefer(m, work, "a18")
        m.set_next_timestamp(c.contested_at + P.dispute_window - 1)
        d = m.mc.dispute(griefer, job, c, REQUEST)
        m.chain.fixed_gas = None
        mine_blocks(m, DRAW_WINDOW - 1)
        m.mc.draw_jury(griefer, job, c)
        drawn_in = m.chain.w3.eth.block_number - d["blockNumber"]
        st = drive(m, job.job_id, honest, Script(m, evidence=lambda st: post_evidence(m, job, st.contest, g, lie,
                                                                                      griefer)))
        held = m.now() - c.contested_at
        reused = open_undrawn(m, m.consumer2, slot=job.slot)[0].slot == job.slot
        bound = P.dispute_window + DRAW_WINDOW * 12 + 3 * P.court_phase
        return Measured(
            "A18", "hold a consumer's job slot", "held <= disputeWindow + DRAW_WINDOW blocks + 3*courtPhase "
            f"= {bound} s (12 s blocks); griefer: lock + bond",
            attacker_gas=gas.of(griefer, m.consumer),
            facts={"victim_free_slot": free, "held_s": held, "bound_s": bound, "slot_reused": reused,
                   "jury_drawn_blocks_after_dispute": drawn_in, "slash_mask": st.settled["slashMask"]})


def a19_dust_dispute(m, work: Path) -> Measured:
    """A19: in a cheap model's pool, a job of maxTokens 1 at priceCap 10 has a jury fee of 10, under
    minJuryFee: nobody may dispute it (consumer or seat); the minority seat's keeper does not try,
    and resolves on the provisional outcome. At the floor (maxTokens 30: fee 300) a dispute pays
    each revealing juror 100."""
    x, y = output("4", 1), output("four", 1)
    judge = TruthJudge((x, y, output("4", 30), output("four", 30)))
    extra = honest_providers(m, "a19-juror", 2)
    honest = Honest(m, work, [*m.providers, *extra], judge)
    consumer = m.consumer
    facts = {}
    with GasMeter(m) as gas:
        for max_tokens in (1, 30):
            xo, yo = (x, y) if max_tokens == 1 else (output("4", 30), output("four", 30))
            job = open_job(m, consumer, max_tokens=max_tokens)
            outs = [xo, xo, yo]
            results = [honest.seat(acct_of(p)).serve(job, outs[i], request_for(max_tokens))
                       for i, p in enumerate(seats_of(job))]
            c = m.mc.contest_of(m.mc.settle(consumer, job, results))
            req = request_for(max_tokens)
            if max_tokens == 1:
                facts["fee_small"] = job.jury_fee
                facts["consumer_dispute"] = revert_name(lambda: m.mc.dispute(consumer, job, c, req))
                facts["seat_dispute"] = revert_name(lambda: m.mc.dispute(acct_of(job.seats[2]), job, c, req))
                st = drive(m, job.job_id, honest)
                facts["small_outcome"] = st.settled["outcome"]
                facts["small_disputed"] = st.disputer
            else:
                owed0 = {a: owed(m, acct_of(a)) for a in (p.address for p in [*m.providers, *extra])}
                st = drive(m, job.job_id, honest, Script(m, contest=lambda st: m.mc.dispute(consumer, job,
                                                                                             st.contest, req)))
                facts["fee"] = job.jury_fee
                facts["juror_earnings"] = [owed(m, acct_of(j)) - owed0[j] for j in st.jurors]
                facts["floor_outcome"] = st.settled["outcome"]
        return Measured(
            "A19", "dust disputes make jurors work for nothing",
            f"a dispute needs maxTokens*priceCap >= minJuryFee = {P.min_jury_fee}: each juror earns >= 100",
            attacker_gas=gas.of(consumer), facts=facts)


# ############################################################################# A21 — a pool too small for a jury

def a21_void_jury_cartel(m, work: Path, consumer_checks: bool = True) -> Measured:
    """A21 (found): a model served by three providers, two of them a cartel. Every job would seat
    all three; the cartel would sign the same bogus maxTokens answer without computing, be the
    provisional majority, and no jury could judge it (nobody outside the job, and no other pool to
    fall back on): a dispute is void. The defence is the consumer's: it refuses a pool that cannot
    seat a jury besides the seats (consumer.discovery.check_jury), before any transaction.
    `consumer_checks=False` plays a consumer that ignores the protocol's rule (what it then loses)."""
    from meshmarket.consumer.discovery import check_jury, discover

    consumer, p0, cartel = m.consumer2, m.providers[0], m.providers[1:3]
    if m.mc.account(m.providers[3].address)["listed"]:
        m.mc.deregister(m.providers[3])  # the model's pool: p0 and the cartel
    formula = ("cartel gain = 2*maxTokens*price for no work, only from a consumer that ignores the pool-size rule "
               "(PROTOCOL.md: a pool must seat a jury besides the seats); an honest consumer refuses the pool")
    if consumer_checks:
        try:
            check_jury(m.chain, discover(m.chain, MODEL), consumer.address, 6)
        except QueryError as exc:
            return Measured("A21", "a cartel of two in a pool too small for a jury", formula,
                            facts={"refused": str(exc), "void": None})
        raise AssertionError("the consumer library accepted a pool of three")
    honest = Honest(m, work, [p0])
    buyer = honest.consumer(consumer)
    with GasMeter(m) as gas:
        before = _snapshot_holdings(m, [*cartel, consumer, p0])
        job = open_job(m, consumer)
        buyer.opened(job)
        lie = bogus()
        for i, p in enumerate(seats_of(job)):
            claim = honest.seat(p0).serve(job, HONEST) if p == p0.address else sign(m, job, lie, acct_of(p))
            buyer.received(job, i, claim, (HONEST if p == p0.address else lie).text)
        st = drive(m, job.job_id, honest)
        d = _delta(before, m, [*cartel, consumer, p0])
        return Measured(
            "A21-careless", "the same, with a consumer that ignores the pool-size rule", formula,
            attacker_net=sum(d[p.address] for p in cartel), attacker_gas=gas.of(*cartel),
            victim_loss=max(0, HONEST_PAY - d[p0.address]) + max(0, -d[consumer.address] - HONEST_PAY),
            victim_gas=gas.of(p0, consumer),
            facts={"void": st.void, "disputer": st.disputer, "outcome": st.settled["outcome"],
                   "paid": list(st.settled["paid"])[:3], "cartel_gain": [d[p.address] for p in cartel],
                   "honest_paid": d[p0.address], "consumer_cost": -d[consumer.address],
                   "assumption": "the consumer ignores PROTOCOL.md's rule: a pool must be able to seat a jury"})


#: Every strategy the bench runs, in table order: (key, scenario, keyword arguments).
SCENARIOS: list[tuple[str, Callable[..., Measured], dict]] = [
    ("A1", a1_targeting, {}),
    ("A1-big", a1_targeting, {"max_tokens": 4096}),
    ("A2", a2_change_job_under_claims, {}),
    ("A3a", a3a_settle_all_missing, {}),
    ("A3b", a3b_grow_and_leave_out, {}),
    ("A3c", a3c_front_run_commits, {}),
    ("A3d", a3d_no_majority, {}),
    ("A4", a4_cartel, {}),
    ("A5", a5_copier, {}),
    ("A5-disputed", a5_copier, {"consumer_disputes": True}),
    ("A6", a6_locks_without_consent, {}),
    ("A7", a7_laundering, {"tokens": 0}),
    ("A7b", a7_laundering, {"tokens": 1}),
    ("A8", a8_provable_lie, {}),
    ("A9", a9_withheld_answer, {}),
    ("A10", a10_hostage, {}),
    ("A11", a11_smear, {}),
    ("A11-down", a11_smear, {"keeper_up": False}),
    ("A12", a12_rerolls, {}),
    ("A13", a13_steer_seats, {"trials": 24}),
    ("A14", a14_steer_jury, {"trials": 24}),
    ("A15", a15_small_mesh_jury, {}),
    ("A16", a16_withheld_evidence, {}),
    ("A17", a17_grief_by_dispute, {}),
    ("A18", a18_slot_exhaustion, {}),
    ("A19", a19_dust_dispute, {}),
    ("A20a", a13_steer_seats, {"trials": 4, "lookahead": True}),
    ("A20b", a14_steer_jury, {"trials": 8, "lookahead": True, "parked_stake": 50 * MESH}),
    ("A21", a21_void_jury_cartel, {}),
    ("A21-careless", a21_void_jury_cartel, {"consumer_checks": False}),
    ("A22", a22_conditional_draw, {"requests": 20}),
]


# ############################################################################# F1-F9 — issue 17's audit of the v2 contracts
#
# Found by an independent audit of the landed contracts (issue 17) and answered by protocol v3
# (docs/design/PROTOCOL_V3.md §6). Each scenario runs the finding's attack on today's contracts;
# tests/test_attacks.py asserts the property v3 defends, a strict xfail until v3 lands. Not in
# SCENARIOS yet: the bench adds them with v3 (its step 6), when their economics are v3's.
# The audit's parameters: a 128-token job at price 10, jury fee and bond F = 1,280, a seat's lock
# L = 1,000,000; every pool passes the honest consumer's --min-pool 6 rule unless the finding is
# about a pool that does not (F7).

#: The F1 and F5 attacker's three sybils stake 50 MESH each: 150 of the pool's 4,150 MESH (3.6%).
F_SYBIL_STAKE = 50 * MESH


def pool_rule(m, consumer: LocalAccount, group: bytes = ZERO32, min_pool: int = 6) -> str | None:
    """The honest consumer's pool rule (`mesh ask --min-pool 6`: consumer.discovery.check_jury, the
    open market as a mesh's fallback) on the pool's members as offers (this world's providers list
    no endpoint, which discovery would skip): None when the pool passes, else the refusal."""
    from meshmarket.consumer.discovery import Offer, check_jury

    def offers(g: bytes) -> list[Offer]:
        return [Offer(p, price, f"/ip4/127.0.0.1/tcp/1/p2p/{p}", ZERO32, free, g) for p, price, free in members(m, g)]

    fallback = offers(ZERO32) if group != ZERO32 else ()
    try:
        check_jury(m.chain, offers(group), consumer.address, min_pool, fallback)
    except QueryError as exc:
        return str(exc)
    return None


def weight_share(m, attackers: Iterable[LocalAccount], exclude: Iterable[str] = (), group: bytes = ZERO32) -> float:
    """The attackers' share of a draw's weight (min(free stake, weightCap) per member) in the pool,
    leaving out `exclude` (a jury's: the seats and the consumer)."""
    out = {to_checksum_address(a) for a in exclude}
    mine = {a.address for a in attackers}
    weights = {p: min(free, P.weight_cap) for p, _, free in members(m, group) if p not in out}
    total = sum(weights.values())
    return round(sum(w for p, w in weights.items() if p in mine) / total, 4) if total else 0.0


def stake_share(m, attackers: Iterable[LocalAccount], group: bytes = ZERO32) -> float:
    everyone = [p for p, _, _ in members(m, group)]
    mine = sum(stake(m, a) for a in attackers)
    return round(mine / sum(m.mc.account(p)["stake"] for p in everyone), 4)


def _all_honest(providers: Sequence[LocalAccount]) -> Callable[[list[str]], bool]:
    honest = {p.address for p in providers}
    return lambda seats: len(seats) == 3 and set(seats) <= honest


def _lone_result(m, honest: Honest, attacker: LocalAccount, job: Job, jurors: Sequence[LocalAccount] = ()):
    """F1's move: the consumer sends its request to seat 0 (V) only and, once the claim window is
    over, settles with V's result alone (the other seats never answered nor committed: left out).
    A lone valid result is contested with nobody provisional, so V's keeper disputes (bond F) and
    draws the jury from the pool minus the seats; the attacker's `jurors`, when drawn, vote V hard.
    Returns the closed job's state and the script."""
    victim = acct_of(job.seats[0])
    claim = honest.seat(victim).serve(job, HONEST)
    verdict = pack_verdicts({0: HARD})
    script = Script(m, claim=lambda st: m.mc.settle(attacker, job, [claim, None, None]),
                    **vote_moves(m, jurors, lambda st: verdict))
    return drive(m, job.job_id, honest, script), script


def _lone_facts(m, st: JobState, victim: LocalAccount, v0: tuple[int, int, int], sybils) -> dict:
    return {"victim_stake_lost": v0[1] - stake(m, victim), "victim_paid": owed(m, victim) - v0[2],
            "victim_tokens_lost": v0[0] - holdings(m, victim), "outcome": st.settled["outcome"],
            "provisional": st.contest.provisional if st.contest else None, "void": st.void,
            "jurors": list(st.jurors), "sybil_jurors": sum(j in {s.address for s in sybils} for j in st.jurors),
            "slash_mask": st.settled["slashMask"]}


def f1_lone_result_capture(m, work: Path) -> Measured:
    """F1 (critical): lone-result jury capture. The pool: the world's four honest providers (1,000
    MESH each, weight capped at 100) and the attacker's three sybils of 50 MESH (3.6% of the stake;
    seven providers: --min-pool 6 passes). The consumer re-rolls until the draw seats three honest
    providers, so the jury's pool (the pool minus the seats) is one honest provider and the three
    sybils; it asks seat V alone and settles with V's result alone (`_lone_result`). V's keeper
    disputes and draws; V posts its evidence; the honest juror's court keeper passes V; the sybil
    jurors vote V hard; V's keeper resolves: V's lock burns, its bond pays the jury, V is unpaid."""
    attacker = m.consumer
    honest = Honest(m, work, m.providers)
    with GasMeter(m) as gas:
        before = holdings(m, attacker)
        sybils = sybils_of(m, attacker, "f1-sybil", 3, F_SYBIL_STAKE)
        rule, share = pool_rule(m, m.consumer2), stake_share(m, sybils)
        r = reroll_drawn(m, attacker, _all_honest(m.providers))
        job, victim = r.job, acct_of(r.job.seats[0])
        jury_share = weight_share(m, sybils, [*seats_of(job), attacker.address])
        v0 = (holdings(m, victim), stake(m, victim), owed(m, victim))
        st, script = _lone_result(m, honest, attacker, job, sybils)
        release(m, attacker, r)
        f = _lone_facts(m, st, victim, v0, sybils)
        return Measured(
            "F1", "lone-result jury capture (consumer + sybils against a lone honest seat)",
            "the jury is the pool minus the seats: three honest seats leave it to the sybils; V loses L + its "
            "bond's jury pay (1,001,278) and its pay; the sybil jurors earn 2 x 426",
            attacker_net=holdings(m, attacker, *sybils) - before, attacker_value=HONEST_PAY,
            attacker_gas=gas.of(attacker, *sybils), victim_loss=f["victim_tokens_lost"] + HONEST_PAY - f["victim_paid"],
            victim_gas=gas.of(victim), honest_burned=f["victim_stake_lost"],
            facts={**f, "pool_rule": rule, "stake_share": share, "jury_weight_share": jury_share,
                   "draws": r.draws, "sybil_net": holdings(m, *sybils) - sum(F_SYBIL_STAKE + 100 * MESH for _ in sybils),
                   "script_errors": script.errors})


def _deliver(m, honest: Honest, consumer: LocalAccount, job: Job, cartel: Sequence[LocalAccount],
             lie: Output) -> None:
    """Every seat of an honest consumer's job delivers: the honest ones their answer (their keepers
    keep the claims), the `cartel` the same bogus `lie`, signed; the consumer journals each answer
    as consumer.query does and its `mesh settle` settles at once (the cartel the provisional
    majority when it holds two seats)."""
    buyer = honest.consumer(consumer)
    buyer.opened(job)
    bad = {c.address for c in cartel}
    for i, s in enumerate(seats_of(job)):
        if s in bad:
            buyer.received(job, i, sign(m, job, lie, acct_of(s)), lie.text)
        else:
            buyer.received(job, i, honest.seat(acct_of(s)).serve(job, HONEST), HONEST.text)
    buyer.tick()


def _cartel_evidence(m, job: Job, cartel: Sequence[LocalAccount], lie: Output) -> Callable[[JobState], None]:
    """The cartel posts its tokens if a jury is drawn (a seat whose evidence is missing is slashed)."""
    return lambda st: [post_evidence(m, job, st.contest, job.seat_of(c.address), lie, c)
                       for c in cartel if job.seat_of(c.address) is not None]


def f2_exit_after_the_draw(m, work: Path, max_jobs: int = 40) -> Measured:
    """F2 (high): exit after the draw. A six-provider open market (P0..P2 honest, a cartel of three
    of 100 MESH: --min-pool 6 passes). An honest consumer's jobs are drawn until the cartel holds
    two seats (chance 9/20 a job; before that it serves honestly); its unseated member then
    deregisters at once (free). The cartel signs a bogus maxTokens answer; the consumer settles
    (contested, the cartel provisional); the honest seat's keeper disputes and draws the jury from
    the pool minus the seats: two providers, no fallback: void; the bogus majority is paid; the
    member registers again."""
    consumer = m.consumer2
    m.mc.deregister(m.providers[3])
    honest = Honest(m, work, m.providers[:3])
    with GasMeter(m) as gas:
        cartel = sybils_of(m, m.outsider, "f2-cartel", 3, 100 * MESH)
        rule, bad = pool_rule(m, consumer), {c.address for c in cartel}
        for served in range(max_jobs):
            job = open_job(m, consumer)
            if len(bad & set(seats_of(job))) == 2:
                break
            m.mc.settle(consumer, job, [sign(m, job, HONEST, acct_of(s)) for s in seats_of(job)])
        else:
            raise AssertionError(f"scenario: the cartel never held two seats in {max_jobs} jobs")
        before = _snapshot_holdings(m, [*cartel, *m.providers[:3]])
        h = next(acct_of(s) for s in seats_of(job) if s not in bad)
        leaver = next(c for c in cartel if c.address not in seats_of(job))
        m.mc.deregister(leaver)
        lie = bogus()
        _deliver(m, honest, consumer, job, cartel, lie)
        script = Script(m, evidence=_cartel_evidence(m, job, cartel, lie))
        st = drive(m, job.job_id, honest, script)
        join(m, leaver, ZERO32)
        d = _delta(before, m, [*cartel, h])
        paid = {a: int(st.settled["paid"][job.seat_of(a)]) for a in seats_of(job)}
        cost = job.held - int(st.settled["refund"])  # the escrow was taken at the draw, before `before`
        return Measured(
            "F2", "exit after the draw: the unseated cartel member deregisters, the dispute is void",
            "cartel: 2 x maxTokens x price = 2,560 for no work with chance 9/20 per job (two seats of a pool of "
            "six with three); the honest seat unpaid; the consumer pays for a wrong answer",
            attacker_net=sum(d[c.address] for c in cartel), attacker_gas=gas.of(*cartel),
            victim_loss=HONEST_PAY - paid[h.address] + max(0, cost - HONEST_PAY), victim_gas=gas.of(h, consumer),
            facts={"pool_rule": rule, "jobs_before": served, "void": st.void, "jurors": list(st.jurors),
                   "disputer": st.disputer, "outcome": st.settled["outcome"], "slash_mask": st.settled["slashMask"],
                   "cartel_paid": [paid[c.address] for c in cartel if c.address in paid],
                   "honest_paid": paid[h.address], "consumer_cost": cost,
                   "leaver_listed_again": m.mc.account(leaver.address)["listed"], "script_errors": script.errors})


def f3_lazy_or_absent_jurors(m, work: Path, absent: bool = False) -> Measured:
    """F3 (high): jurors are paid whatever they vote, and absence counts as pass. A private mesh of
    an honest admin (P0) and two providers of a cartel it invited; its juries come from the open
    market P1..P3 (mesh 3 + open market 3: --min-pool 6 passes). An honest consumer's job seats the
    three; the cartel signs a bogus answer, the admin's keeper disputes, the jury is P1..P3. P1 runs
    its court keeper (it scores: the cartel hard); P2 and P3 either vote pass on everything without
    scoring (lazy, or bribed with any epsilon), or (`absent`) stay away."""
    consumer, admin, jurors = m.consumer2, m.providers[0], m.providers[1:]
    mesh, cartel = _careless_mesh(m, "f3", admin, [], m.outsider, 2)
    honest = Honest(m, work, [admin, jurors[0]])
    rule = pool_rule(m, consumer, mesh)
    with GasMeter(m) as gas:
        j0 = {j.address: (stake(m, j), owed(m, j)) for j in jurors}
        before = _snapshot_holdings(m, [*cartel, consumer])
        job, lie = open_job(m, consumer, group=mesh), bogus()
        _deliver(m, honest, consumer, job, cartel, lie)
        moves = {"evidence": _cartel_evidence(m, job, cartel, lie)}
        if not absent:
            moves.update(vote_moves(m, jurors[1:], lambda st: pack_verdicts({i: PASS for i in range(3)})))
        script = Script(m, **moves)
        st = drive(m, job.job_id, honest, script)
        net = {j.address: stake(m, j) - j0[j.address][0] + owed(m, j) - j0[j.address][1] for j in jurors}
        d = _delta(before, m, [*cartel, consumer])
        kind = "absent" if absent else "lazy"
        return Measured(
            f"F3-{kind}", f"two {kind} jurors clear a caught cartel",
            "v2: a revealed juror earns F/3 = 426 whatever it voted, an absent one loses nothing, and a seat is "
            "slashed only on 2 revealed hard votes: absence counts as pass",
            attacker_net=sum(d[c.address] for c in cartel), attacker_gas=gas.of(*cartel),
            victim_loss=max(0, -d[consumer.address] - HONEST_PAY), victim_gas=gas.of(admin),
            facts={"pool_rule": rule, "jurors": list(st.jurors), "jury_is_p1_p3": set(st.jurors) == set(net),
                   "slash_mask": st.settled["slashMask"], "paid": list(st.settled["paid"])[:3],
                   "cartel_mask": sum(1 << job.seat_of(c.address) for c in cartel),
                   "honest_juror_net": net[jurors[0].address], f"{kind}_juror_net": [net[j.address] for j in jurors[1:]],
                   f"{kind}_juror_stake_lost": [j0[j.address][0] - stake(m, j) for j in jurors[1:]],
                   "cartel_net": [d[c.address] for c in cartel], "consumer_cost": -d[consumer.address],
                   "script_errors": script.errors})


def register_many(m, accts: Sequence[LocalAccount], group: bytes = ZERO32, price: int = PRICE) -> list[int]:
    """Each account registers for MODEL in `group` with no stake. A registration is its sender's own
    transaction, so one each: all signed at once, sent in one batch and mined together in as few
    blocks as the block gas limit allows; their ETH for gas is set on the node (anvil_setBalance:
    no funding transactions). Returns each registration's gas."""
    w3, reg = m.chain.w3, m.chain.registry
    w3.provider.make_batch_request([("anvil_setBalance", [a.address, hex(10**18)]) for a in accts])
    data = reg.encode_abi("register", args=[MODEL, keccak(b"a zero-stake listing"), price, group, ""])
    fee = GWEI + 4 * w3.eth.get_block("latest")["baseFeePerGas"]
    raws = [a.sign_transaction({"to": reg.address, "data": data, "value": 0, "gas": 400_000, "nonce": 0, "type": 2,
                                "chainId": m.chain.chain_id, "maxPriorityFeePerGas": GWEI, "maxFeePerGas": fee})
            for a in accts]
    m.rpc("evm_setAutomine", [False])
    try:
        sent = w3.provider.make_batch_request([("eth_sendRawTransaction", ["0x" + r.raw_transaction.hex()])
                                               for r in raws])
        refused = [x["error"] for x in sent if "error" in x]
        assert not refused, f"scenario: the node refused zero-stake registrations: {refused[:3]}"
        hashes = [x["result"] for x in sent]
        while int(m.rpc("txpool_status")["pending"], 16):
            m.rpc("evm_mine")
    finally:
        m.rpc("evm_setAutomine", [True])
    receipts = [x["result"] for x in w3.provider.make_batch_request([("eth_getTransactionReceipt", [h])
                                                                     for h in hashes])]
    assert all(int(rc["status"], 16) == 1 for rc in receipts), "scenario: a zero-stake registration failed"
    return [int(rc["gasUsed"], 16) for rc in receipts]


def _keeper_before_its_dispute(m, honest: Honest, acct: LocalAccount, claim: Claim) -> Seat:
    """`acct`'s claim keeper as it was before it disputed (a trial on a snapshot starts there)."""
    seat = Seat(m, acct, honest.judge, honest.log)
    seat.claims.add(replace(claim, disputed=False))
    return seat


def _f4_trials(m, honest: Honest, admin: LocalAccount, claim: Claim, job: Job, consumer, trials: int) -> dict:
    """Each trial on a snapshot, at another height: the admin's keeper disputes and draws the jury
    (one pass); the first void one is resolved (the bogus majority paid). Then new jobs in the open
    market: does a draw find three seats in its first block?"""
    juries, seat_draws, void_settled = [], [], None
    for t in range(trials):
        snap = m.rpc("evm_snapshot")
        mine_blocks(m, t + 1)
        seat = _keeper_before_its_dispute(m, honest, admin, claim)
        seat.claims.tick()
        st = job_state(m.chain, job.job_id)
        juries.append(len(st.jurors))
        if st.void and void_settled is None:
            seat.claims.tick()  # resolves: the provisional outcome stands
            void_settled = job_state(m.chain, job.job_id).settled
        assert m.rpc("evm_revert", [snap]) is True
    for t in range(trials):
        snap = m.rpc("evm_snapshot")
        mine_blocks(m, t + 1)
        new, _ = open_undrawn(m, consumer)
        seat_draws.append(revert_name(lambda: m.chain.transact(
            consumer, m.chain.market.functions.drawSeats(new.as_abi()), gas=BLOCK_GAS)))
        assert m.rpc("evm_revert", [snap]) is True
    return {"jury_sizes": juries, "void_juries": sum(n == 0 for n in juries),
            "seat_draws_in_one_block": sum(x is None for x in seat_draws), "seat_draw_refusals": seat_draws,
            "void_paid": list(void_settled["paid"])[:3] if void_settled else None,
            "void_outcome": void_settled["outcome"] if void_settled else None}


def f4_zero_stake_dilution(m, work: Path, sybils: int = 300, trials: int = 8) -> Measured:
    """F4 (medium-high): zero-stake dilution. Eight honest providers and a cartel of two: the honest
    admin P0 of a private mesh holding the cartel it invited, the open market P1..P3 and four more
    (the mesh's juries come from it; mesh 3 + open market 7: --min-pool 6 passes). An honest
    consumer's job seats P0 and the cartel, which signs a bogus answer: contested, the cartel
    provisional. Then `sybils` zero-stake providers register in the open market (a registration
    needs no stake; the pool rule does not count them). Trials at other heights: P0's keeper
    disputes and draws the jury (the open market's 64 draw attempts mostly land on weight 0: void
    at once, no retry; the bogus majority stands), and new open-market jobs try their seat draw."""
    consumer, admin = m.consumer2, m.providers[0]
    extra = honest_providers(m, "f4-honest", 4)
    mesh, cartel = _careless_mesh(m, "f4", admin, [], m.outsider, 2)
    honest = Honest(m, work, [admin, *m.providers[1:], *extra])
    job, lie = open_job(m, consumer, group=mesh), bogus()
    _deliver(m, honest, consumer, job, cartel, lie)
    (claim,) = honest.seat(admin).claims.pending()
    rule_before = pool_rule(m, consumer, mesh)
    reg_gas = register_many(m, [fresh_account(f"f4-zero-stake-{i}") for i in range(sybils)])
    rule_after = pool_rule(m, consumer, mesh)
    f = _f4_trials(m, honest, admin, claim, job, consumer, trials)
    return Measured(
        "F4", f"zero-stake dilution: {sybils} sybils register without stake",
        "64 draw attempts over a pool of 7 weighted + n zero-weight members: a jury short of 3 voids the dispute "
        "at once; ~150k gas per sybil, once",
        attacker_gas=sum(reg_gas), attacker_net=2 * job.jury_fee if f["void_paid"] else 0,
        victim_loss=HONEST_PAY + 2 * job.jury_fee if f["void_paid"] else 0,  # the honest seat, the consumer
        facts={**f, "sybils": sybils, "trials": trials, "gas_per_sybil": sum(reg_gas) // len(reg_gas),
               "pool_rule_before": rule_before, "pool_rule_after": rule_after, "pool_size": len(members(m)),
               "contest_provisional": job_state(m.chain, job.job_id).contest.provisional,
               "cartel_mask": sum(1 << job.seat_of(c.address) for c in cartel)})


def _open_in_one_block(m, consumer: LocalAccount, n: int, gas: GasMeter) -> list[Job]:
    """`n` requests in the consumer's slots 0..n-1, mined in one block (one draw window for all):
    an undrawn request holds no escrow."""
    fns = m.chain.market.functions
    with Block(m, gas) as blk:
        hashes = [blk.send(consumer, fns.openJob(i, MODEL, ZERO32, keccak(REQUEST), MAX_TOKENS, PRICE), gas=200_000)
                  for i in range(n)]
        receipts = blk.mine()
    return [Job.from_event(m.mc._event(receipts[h], "JobOpened"), receipts[h]["blockNumber"]) for h in hashes]


def _conditional_block(m, drawer: LocalAccount, jobs: Sequence[Job], wanted) -> tuple[Job | None, int]:
    """One block of conditional draws (a bundle, or an EIP-7702 account: `DrawByContract` only asks
    msg.sender == tx.origin; emulated as A22 does): every request is drawn on a snapshot at the same
    pinned block time (so the same prevrandao: one block) and dropped; the first whose committee is
    wanted is then drawn for real in that block. Returns (it or None, how many were wanted)."""
    ts, fns, hits = m.now() + 1, m.chain.market.functions, []
    for job in jobs:
        snap = m.rpc("evm_snapshot")
        m.set_next_timestamp(ts)
        try:
            ev = m.mc._event(m.chain.transact(drawer, fns.drawSeats(job.as_abi())), "SeatsDrawn")
            drawn = job.drawn(ev["seed"], ev["drawnAt"], ev["seats"], ev["prices"])
            hits += [(job, drawn)] if wanted(seats_of(drawn)) else []
        except ContractReverted:
            pass
        assert m.rpc("evm_revert", [snap]) is True
    m.set_next_timestamp(ts)
    if not hits:
        m.rpc("evm_mine")  # the block passes without a draw
        m.chain.fixed_gas = None
        return None, 0
    job, seen = hits[0]
    ev = m.mc._event(m.chain.transact(drawer, fns.drawSeats(job.as_abi())), "SeatsDrawn")
    m.chain.fixed_gas = None
    assert bytes(ev["seed"]) == seen.seed, "scenario: a conditional draw is not its block's draw"
    return job.drawn(ev["seed"], ev["drawnAt"], ev["seats"], ev["prices"]), len(hits)


def _capture_odds(pool, job: Job, attackers, seeds: Sequence[bytes], seats: Sequence[str] | None = None) -> float:
    """P(a lone-result dispute's jury (three, none of the seats nor the consumer) has two or more
    attackers), over `seeds`: for the committee `seats`, or (None) for each seed's own committee,
    drawn from the same pool (registry draws in Python, `mirror_draw`)."""
    mine, hits = {a.address for a in attackers}, 0
    for sd in seeds:
        committee = seats if seats is not None else seat_draw(pool, job, sd)
        jury = mirror_draw(pool, keccak(sd + b"jury"), 3, exclude=[*committee, job.consumer])
        hits += len(jury) == 3 and len(mine & set(jury)) >= 2
    return hits / len(seeds)


def f5_conditional_committees(m, work: Path, jobs: int = 16, n_seeds: int = 400) -> Measured:
    """F5 (medium): conditional draws across jobs. F1's pool (four honest, three sybils of 50 MESH).
    The consumer opens sixteen requests in one block (its sixteen slots; no escrow until drawn) and,
    block by block in the draw window, draws conditionally: only a request whose committee is three
    honest providers, which leaves the jury's pool to its sybils. Measured: the committees wanted in
    one block, and the jury-capture odds of the committee kept against a committee the pool draws
    for it (both from the registry's draw); then F1's lone-result attack runs on the kept job."""
    attacker = m.consumer
    honest = Honest(m, work, m.providers)
    with GasMeter(m) as gas:
        before = holdings(m, attacker)
        sybils = sybils_of(m, attacker, "f5-sybil", 3, F_SYBIL_STAKE)
        wanted, start = _all_honest(m.providers), holdings(m, attacker, *sybils)
        opened = _open_in_one_block(m, attacker, jobs, gas)
        escrow_undrawn = start - holdings(m, attacker, *sybils)
        kept, per_block = None, []
        while kept is None and m.chain.w3.eth.block_number < opened[0].open_block + DRAW_WINDOW:
            kept, n = _conditional_block(m, attacker, opened, wanted)
            per_block.append(n)
        assert kept is not None, f"scenario: no wanted committee in the draw window: {per_block}"
        pool, rng = members(m), random.Random(20261207)
        seeds = [rng.randbytes(32) for _ in range(n_seeds)]
        odds = {"capture_odds_kept": _capture_odds(pool, kept, sybils, seeds, seats_of(kept)),
                "capture_odds_natural": _capture_odds(pool, kept, sybils, seeds),
                "p_wanted_per_draw": sum(wanted(seat_draw(pool, kept, sd)) for sd in seeds) / n_seeds}
        victim = acct_of(kept.seats[0])
        v0 = (holdings(m, victim), stake(m, victim), owed(m, victim))
        st, script = _lone_result(m, honest, attacker, kept, sybils)
        for j in opened:
            if j.job_id != kept.job_id:
                m.mc.expire(attacker, j)
        f = _lone_facts(m, st, victim, v0, sybils)
        return Measured(
            "F5", "conditional draws across sixteen requests shape the jury's pool (F1 without re-rolls)",
            f"P(wanted in a block) = 1 - (1 - p)^{jobs} for a committee of chance p; undrawn requests hold no "
            "escrow; the committee decides who can judge",
            attacker_net=holdings(m, attacker, *sybils) - before, attacker_value=HONEST_PAY,
            attacker_gas=gas.of(attacker, *sybils), victim_loss=f["victim_tokens_lost"] + HONEST_PAY - f["victim_paid"],
            victim_gas=gas.of(victim), honest_burned=f["victim_stake_lost"],
            facts={**odds, **f, "requests": jobs, "wanted_per_block": per_block, "blocks": len(per_block),
                   "escrow_undrawn": escrow_undrawn, "pool_rule": pool_rule(m, m.consumer2),
                   "script_errors": script.errors})


def f6_full_capture(m, work: Path) -> Measured:
    """F6 (medium): full capture. A cartel holds all three seats of a job (chance ~s^3 in an open
    market; made certain here by the cartel's own private mesh of three, which an honest consumer
    may use: mesh 3 + open market P0..P3 for its juries, --min-pool 6 passes). The cartel signs one
    bogus answer without computing; the consumer's `mesh settle` settles: agreed, paid at once. The
    consumer then finds the answer wrong and tries to take it to a court: `dispute` accepts only a
    contested job, and nothing audits an agreed one."""
    consumer, mesh = m.consumer2, keccak(b"f6: the cartel's mesh")
    honest = Honest(m, work, m.providers)  # the open market: who would judge a contest
    with GasMeter(m) as gas:
        cartel = sybils_of(m, m.outsider, "f6-cartel", 3, 100 * MESH, group=mesh)
        rule = pool_rule(m, consumer, mesh)
        before = _snapshot_holdings(m, [*cartel, consumer])
        job, lie = open_job(m, consumer, group=mesh), bogus()
        _deliver(m, honest, consumer, job, cartel, lie)
        st = job_state(m.chain, job.job_id)
        n = job.seat_count
        claimed = Contest((lie.hash,) * n + (ZERO32,) * (5 - n), (lie.count,) * n + (0,) * (5 - n), 0b111, 0, 0b111,
                          m.now(), (0,) * 5)
        refused = revert_name(lambda: m.mc.dispute(consumer, job, claimed, REQUEST))
        d = _delta(before, m, [*cartel, consumer])
        return Measured(
            "F6", "full capture: three cartel seats sign one bogus answer",
            "cartel: 3 x maxTokens x price = 3,840 for no work, with chance ~s^3 per job; no recourse",
            attacker_net=sum(d[c.address] for c in cartel), attacker_gas=gas.of(*cartel),
            victim_loss=max(0, -d[consumer.address]), victim_gas=gas.of(consumer),
            facts={"pool_rule": rule, "outcome": st.settled["outcome"] if st.settled else None,
                   "cartel_paid": list(st.settled["paid"])[:3] if st.settled else None,
                   "slash_mask": st.settled["slashMask"] if st.settled else None, "contest_refused": refused,
                   "consumer_cost": -d[consumer.address], "audited": False})


def f7_pool_that_cannot_judge(m, work: Path) -> Measured:
    """F7 (medium): the contract runs no pool check. The model is served by three honest providers
    (P3 left): no jury can be drawn besides a job's seats. The consumer library refuses the pool
    (--min-pool 6); a consumer that skips the rule opens a job, and the contract draws it. F1's
    lone-result step: it asks V alone, settles with V's result alone; V's keeper disputes and draws:
    void; the provisional outcome (nobody) stands: a free answer, V unpaid."""
    attacker = m.consumer
    m.mc.deregister(m.providers[3])
    honest = Honest(m, work, m.providers[:3])
    with GasMeter(m) as gas:
        rule = pool_rule(m, attacker)
        before = holdings(m, attacker)
        undrawn, _ = open_undrawn(m, attacker)
        drawn: list[Job] = []
        refused = revert_name(lambda: drawn.append(draw(m, attacker, undrawn)))
        facts = {"pool_rule": rule, "pool_size": len(members(m)), "draw_refused": refused}
        if drawn:
            job, victim = drawn[0], acct_of(drawn[0].seats[0])
            v0 = (holdings(m, victim), stake(m, victim), owed(m, victim))
            st, script = _lone_result(m, honest, attacker, job)
            facts.update(_lone_facts(m, st, victim, v0, ()), disputer=st.disputer, script_errors=script.errors)
        return Measured(
            "F7", "a pool that cannot judge: a lone result and a void dispute give a free answer",
            "consumer: the answer for nothing (its escrow refunded); the lone honest seat unpaid",
            attacker_net=holdings(m, attacker) - before, attacker_value=HONEST_PAY if drawn else 0,
            attacker_gas=gas.of(attacker), victim_loss=HONEST_PAY - facts.get("victim_paid", HONEST_PAY),
            victim_gas=gas.of(*m.providers[:3]), facts=facts)


def f8_forced_onto_the_chain(m, work: Path) -> Measured:
    """F8 (low): a seat forced onto the chain. Six honest providers (--min-pool 6 passes). The
    consumer gets all three answers and never settles: every seat's keeper must commit in its claim
    window (on-chain, its own gas). One seat's keeper is then down for the 600 s reveal window (a
    restart, an outage); the others reveal and finalize: the commitment never revealed is slashed as
    a free veto would be, and nobody is paid for the transactions the consumer forced."""
    attacker = m.consumer
    extra = honest_providers(m, "f8-honest", 2)
    honest = Honest(m, work, [*m.providers, *extra])
    with GasMeter(m) as gas:
        rule = pool_rule(m, m.consumer2)
        before = holdings(m, attacker)
        job = open_job(m, attacker)
        seats = [acct_of(s) for s in seats_of(job)]
        b = {p.address: (stake(m, p), owed(m, p)) for p in seats}
        for p in seats:
            honest.seat(p).serve(job, HONEST)
        mine_at(m, delivery_end(job))
        honest.tick()  # nobody settled: every keeper commits its claim
        committed = sorted(job_state(m.chain, job.job_id).committed)
        down = seats[2]
        up = Honest(m, work)  # everyone but the seat that is down
        up.seats, up.log = {a: s for a, s in honest.seats.items() if a != down.address}, honest.log
        st = drive(m, job.job_id, up)
        honest.seat(down).tick()  # back: the job is closed
        lost = [b[p.address][0] - stake(m, p) for p in seats]
        paid = [owed(m, p) - b[p.address][1] for p in seats]
        claimed = [i for i, p in enumerate(seats) if p != down]
        return Measured(
            "F8", "force every seat onto the commit path by not settling; one misses its reveal window",
            "the consumer: free (it pays the revealed work only); the seats: commit + reveal gas each, and a "
            "lock L for a 600 s outage",
            attacker_net=holdings(m, attacker) - before, attacker_value=3 * HONEST_PAY, attacker_gas=gas.of(attacker),
            victim_loss=sum(lost) + sum(HONEST_PAY - x for x in paid), victim_gas=gas.of(*seats),
            honest_burned=sum(lost),
            facts={"pool_rule": rule, "committed": committed, "down_seat": 2, "stake_lost": lost, "paid": paid,
                   "compensation": [paid[i] - HONEST_PAY for i in claimed],
                   "forced_gas": [gas.of(p) for p in seats], "outcome": st.settled["outcome"],
                   "slash_mask": st.settled["slashMask"], "consumer_cost": before - holdings(m, attacker)})


#: ProviderRegistry's storage slots (state variables in declaration order; immutables and the
#: transient reentrancy guard take none): accounts 0, listings 1, thaws 2, credit 3, _pools 4, _before 5.
POOLS_SLOT = 4


def member_slot(pool: bytes, index: int) -> int:
    """The storage slot of `_pools[pool].members[index]` (Pool: size|sizeBefore|changedAt, then members)."""
    base = int.from_bytes(keccak(pool + POOLS_SLOT.to_bytes(32, "big")), "big")
    return int.from_bytes(keccak(index.to_bytes(32, "big") + (base + 1).to_bytes(32, "big")), "big")


def _member_word(m, pool: bytes, index: int) -> int:
    """A member's storage word, checked against poolMember (Member: provider 160 bits, price 40,
    free 32, touched 24)."""
    word = int.from_bytes(m.chain.w3.eth.get_storage_at(m.chain.registry.address, member_slot(pool, index)), "big")
    provider, price, free, touched = m.chain.registry.functions.poolMember(pool, index).call()
    assert (word & (2**160 - 1), word >> 160 & (2**40 - 1), word >> 200 & (2**32 - 1), word >> 232) == \
        (int(provider, 16), price, free, touched), "scenario: the registry's storage layout is not the one assumed"
    return word


def f9_block_tags_wrap(m, work: Path, trials: int = 20) -> Measured:
    """F9 (low): `Member.touched` keeps the low 24 bits of the block of a member's last change; a
    draw that finds a member touched "in its own block" reads the member as that block began
    (`_before`). Seven honest providers; P0 (pool index 0) leaves and puts its stake to thaw: the
    last member moves into its index, and `_before` keeps P0's entry. 2^24 blocks later (~48 days at
    0.25 s) the tag equals the block's again. Anvil mines ~50 blocks a second here (2^24: days), so
    the state the registry holds then is written directly: the one field that depends on the block
    of the change, the 24-bit tag, set to what a change 2^24 blocks before the draw's block leaves
    (anvil_setStorageAt; everything else is the real state). Then new jobs are drawn, each in
    another block (trials on snapshots)."""
    consumer, leaver = m.consumer2, m.providers[0]
    honest_providers(m, "f9-honest", 3)
    pool = pool_key(m)
    index = m.chain.registry.functions.listings(leaver.address).call()[3] - 1
    m.mc.deregister(leaver)
    left_at = m.chain.w3.eth.block_number
    shrink_stake(m, leaver, 0)
    word = _member_word(m, pool, index)
    moved = to_checksum_address("0x%040x" % (word & (2**160 - 1)))
    rows = []
    for t in range(trials):
        snap = m.rpc("evm_snapshot")
        mine_blocks(m, t + 1)
        job, _ = open_undrawn(m, consumer)
        at = m.chain.w3.eth.block_number + 1  # the draw's block
        tagged = word & (2**232 - 1) | (at - 2**24) % 2**24 << 232
        m.rpc("anvil_setStorageAt", [m.chain.registry.address, hex(member_slot(pool, index)),
                                     "0x" + tagged.to_bytes(32, "big").hex()])
        rc = m.chain.transact(consumer, m.chain.market.functions.drawSeats(job.as_abi()), gas=BLOCK_GAS)
        assert rc["blockNumber"] == at, "scenario: the draw was not mined in the block its tag was set for"
        seats = [to_checksum_address(a) for a in m.mc._event(rc, "SeatsDrawn")["seats"]]
        rows.append({"departed_seated": leaver.address in seats, "moved_seated": moved in seats})
        assert m.rpc("evm_revert", [snap]) is True
    departed = sum(r["departed_seated"] for r in rows)
    return Measured(
        "F9", "24-bit block tags wrap: a draw reads a member who left 2^24 blocks ago",
        "after 2^24 blocks (~48 days at 0.25 s blocks) a draw reads a stale entry: a provider who left is "
        "seated (a no-show) or seats a jury (absent: counted as pass)",
        facts={"trials": trials, "departed_seated": departed, "moved_seated": sum(r["moved_seated"] for r in rows),
               "tag_bits": 24, "left_at_block": left_at, "tag_at_leave": left_at % 2**24, "moved_into_index": moved,
               "leaver_listed": m.mc.account(leaver.address)["listed"], "leaver_stake": stake(m, leaver),
               "wrap_days_at_quarter_second": round(2**24 * 0.25 / 86400, 1)})


#: issue 17's findings, in order (key, scenario, keyword arguments): the bench takes them with v3.
FINDINGS: list[tuple[str, Callable[..., Measured], dict]] = [
    ("F1", f1_lone_result_capture, {}),
    ("F2", f2_exit_after_the_draw, {}),
    ("F3-lazy", f3_lazy_or_absent_jurors, {}),
    ("F3-absent", f3_lazy_or_absent_jurors, {"absent": True}),
    ("F4", f4_zero_stake_dilution, {}),
    ("F5", f5_conditional_committees, {}),
    ("F6", f6_full_capture, {}),
    ("F7", f7_pool_that_cannot_judge, {}),
    ("F8", f8_forced_onto_the_chain, {}),
    ("F9", f9_block_tags_wrap, {}),
]
