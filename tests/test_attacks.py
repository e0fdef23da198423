"""Attacks from the security audit, run end to end against the real v1 contracts on a real Anvil.

Each test names one attack and the PROPERTY the product promises. It runs the attack with small
helpers (the attacker's mechanics live in the helpers, so the property assertions at the end can
stay as they are when the contracts change) and ends with the property as plain assertions on
stakes, pay and costs. Honest parties run our own software where the attack depends on it: the
provider's provider.claims.ClaimKeeper (driven by tick() after the clock moves), the consumer's
consumer.ask (Asker, settle_pending) and the ledger's Indexer/Reputation, with real libp2p hosts.

On the v1 contracts every one of these attacks works, so every test here FAILS, by its property
assertion (never by an error in the test); each assertion message carries the measured numbers
(stakes before and after, pay, the attacker's gas and net token cost).

Parameters as in docs/PROTOCOL.md: minJobLock 1 MESH, price 10, maxTokens 128 unless stated.
Every provider signs with its real key; salts and sybil keys are fixed, so runs are identical.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass

import pytest
import trio
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from consumer.ask import AskOptions, Asker, discover, eligible, settle_pending
from consumer.journal import Journal, PendingJob
from ledger import Reputation, open_ledger
from ledger.indexer import Indexer
from mesh.chain import Chain, connect
from mesh.config import MarketParams
from mesh.errors import ContractReverted
from mesh.market import ResultClaim, commitment
from mesh.p2p import Node
from mesh.protocol import (
    INFER_PROTOCOL,
    MANIFEST_PROTOCOL,
    Hardware,
    InferRequest,
    Job,
    Manifest,
    ResultFrame,
    TokenFrame,
)
from provider.claims import Claim, ClaimKeeper
from tests.conftest import MODEL, PRICE

P = MarketParams()
MESH = 1_000_000  # base units per MESH
MAX_TOKENS = 128
#: What an honest provider computes for the test prompt, and what it signs for it.
HONEST_TEXT = "Two plus two is four: adding two units to two units gives four units in all."
HONEST_OUT = keccak(HONEST_TEXT.encode())
HONEST_TOKENS = 40
HONEST_PAY = HONEST_TOKENS * PRICE  # 400 base units
#: What a liar or a sybil signs without computing anything.
BOGUS_OUT = keccak(b"bogus: nothing was computed")
OTHER_BOGUS_OUT = keccak(b"another bogus output")
EMPTY_OUT = keccak(b"")
QUESTION = [("user", "What is two plus two?")]
GWEI = 10**9
#: The longest any v1 job path takes (settle, then commit, then reveal windows).
JOB_LIFE = P.settle_window + P.commit_window + P.reveal_window


@pytest.fixture(autouse=True)
def fixed_job_salts(monkeypatch):
    """Job ids from a counter instead of os.urandom, so every run opens the same jobs (the consumer
    library's own queries, in A8 and A9, keep their random salts: only their ids differ)."""
    counter = itertools.count()
    monkeypatch.setattr("mesh.market.new_salt", lambda: keccak(b"attack test job %d" % next(counter)))


# ============================================================================= money and gas

def lock_for(max_tokens: int, price: int = PRICE) -> int:
    return P.lock_for(max_tokens, price)


def stake(m, who) -> int:
    return m.mc.account(who.address)["stake"]


def owed(m, who) -> int:
    return m.mc.account(who.address)["owed"]


def free_stake(m, who) -> int:
    return m.chain.registry.functions.freeStake(who.address).call()


def holdings(m, *accounts) -> int:
    """Every MESH base unit the accounts control: wallet, consumer credit, stake, thawing, earnings."""
    total = 0
    for a in accounts:
        st = m.mc.account(a.address)
        total += m.chain.balance(a.address) + m.mc.credit(a.address) + st["stake"] + st["thawing"] + st["owed"]
    return total


def block(m) -> int:
    return m.chain.w3.eth.block_number


def gas_since(m, start_block: int, *accounts) -> int:
    """Gas used by every transaction the accounts sent after `start_block` (reverted ones too)."""
    w3, senders, total = m.chain.w3, {a.address for a in accounts}, 0
    for n in range(start_block + 1, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(n, full_transactions=True)["transactions"]:
            if tx["from"] in senders:
                total += w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"]
    return total


def say(**facts) -> str:
    """The measured numbers, for an assertion message."""
    return "; ".join(f"{k}={v}" for k, v in facts.items())


# ============================================================================= accounts

def fresh_account(label: str) -> LocalAccount:
    """A new key, fixed by its label (deterministic runs)."""
    return Account.from_key(keccak(text=f"meshmarket attack test: {label}"))


def send_eth(m, sender: LocalAccount, to: str, wei: int) -> None:
    w3 = m.chain.w3
    tx = {"to": to, "value": wei, "gas": 21_000, "gasPrice": w3.eth.gas_price, "chainId": m.chain.chain_id,
          "nonce": w3.eth.get_transaction_count(sender.address, "pending")}
    h = w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(h, timeout=30)["status"] == 1


def become_provider(m, funder: LocalAccount, acct: LocalAccount, amount: int, price: int = PRICE) -> LocalAccount:
    """`acct` registers for MODEL and stakes `amount`, with ETH and MESH sent by `funder` (a sybil
    of the funder: everything it holds is the funder's)."""
    send_eth(m, funder, acct.address, 10**18)
    m.chain.transact(funder, m.chain.token.functions.transfer(acct.address, amount))
    m.mc.register(acct, MODEL, keccak(b"manifest of " + acct.address.encode()), price)
    m.mc.stake(acct, amount)
    return acct


def sybils_of(m, attacker: LocalAccount, label: str, n: int, amount: int) -> list[LocalAccount]:
    return [become_provider(m, attacker, fresh_account(f"{label}-{i}"), amount) for i in range(n)]


def shrink_stake(m, provider: LocalAccount, to: int) -> None:
    """A small provider: only `to` stays staked (the rest thaws, out of any job's reach)."""
    m.mc.request_unstake(provider, stake(m, provider) - to)


# ============================================================================= the clock

def mine_at(m, t: int) -> None:
    """Mine an empty block at time `t` (if the chain is not past it): the latest time is then `t`."""
    if m.now() < t:
        m.rpc("evm_setNextBlockTimestamp", [t])
        m.rpc("evm_mine")


def delivery_end(job: Job) -> int:
    return job.opened_at + P.delivery_window


def commit_end(job: Job) -> int:
    return job.opened_at + P.settle_window + P.commit_window


def reveal_end(job: Job) -> int:
    return commit_end(job) + P.reveal_window


# ============================================================================= the honest provider software

def keeper_for(m, acct: LocalAccount) -> ClaimKeeper:
    """The provider's own ClaimKeeper, on its own connection to the node (as in its own process)."""
    events: list[str] = []
    keeper = ClaimKeeper(Chain(connect(m.url), m.chain.deployment), acct, on_event=events.append)
    keeper.events = events
    return keeper


def deliver(m, acct: LocalAccount, job_id: bytes, job: Job, index: int, keeper: ClaimKeeper | None = None,
            out: bytes = HONEST_OUT, count: int = HONEST_TOKENS) -> ResultClaim:
    """What provider.node.ProviderService does after streaming an answer: sign the Result for the
    consumer, and hand the claim to the ClaimKeeper (salt fixed here for deterministic runs)."""
    claim = ResultClaim(job_id, out, count).sign(acct, m.chain.chain_id, m.chain.market.address)
    if keeper is not None:
        keeper.add(Claim(job_id, job, index, out, count, salt=keccak(b"salt" + job_id + bytes([index]))))
    return claim


def tick(keepers: Sequence[ClaimKeeper]) -> None:
    for k in keepers:
        k.tick()


def run_keepers_to_the_end(m, job: Job, keepers: Sequence[ClaimKeeper]) -> None:
    """The honest providers' software through the whole fallback: a tick after the delivery window
    (commit), at the end of the commit window (reveal) and at the end of the reveal window (finalize)."""
    for t in (delivery_end(job), commit_end(job), reveal_end(job)):
        mine_at(m, t)
        tick(keepers)


# ============================================================================= the consumer

def revert_name(action: Callable[[], object]) -> str | None:
    """Run a transaction expected to be refused; the custom error's name (None if it went through)."""
    try:
        action()
    except ContractReverted as exc:
        return exc.name
    return None


def journal_with(tmp_path, job_id: bytes, job: Job, results: dict[int, ResultClaim]) -> Journal:
    """The consumer library's journal as consumer.query leaves it: the job and the results it got."""
    journal = Journal(tmp_path / "consumer-jobs")
    journal.save(PendingJob(job_id, job, dict(results)))
    return journal


def sybil_round(m, attacker, victim, sybils, max_tokens: int, keeper: ClaimKeeper | None = None) -> dict:
    """A1's round: a job on the victim and two sybils; the victim answers honestly, the sybils sign
    the same bogus output for max_tokens; the attacker settles at once."""
    job_id, job, r_open = m.open(providers=[victim.address, *(s.address for s in sybils)], max_tokens=max_tokens)
    results = [deliver(m, victim, job_id, job, 0, keeper)] + [
        ResultClaim(job_id, BOGUS_OUT, max_tokens).sign(s, m.chain.chain_id, m.chain.market.address) for s in sybils]
    r_settle = m.mc.settle(attacker, job_id, job, results)
    ev = m.mc.settled_event(r_settle)
    return {"gas": r_open["gasUsed"] + r_settle["gasUsed"], "slash_mask": ev["slashMask"], "paid": list(ev["paid"])}


# ============================================================================= front-running (a real mempool)

class Pool:
    """Anvil with automine off: transactions wait in the mempool, ordered by tip when a block is mined."""

    def __init__(self, m) -> None:
        self.m = m

    def pending(self) -> list[dict]:
        content = self.m.rpc("txpool_content")["pending"]
        return [tx for by_nonce in content.values() for tx in by_nonce.values()]

    def wait_for(self, senders: Sequence[LocalAccount], timeout: float = 20.0) -> dict[str, dict]:
        """The pending transaction of each sender, once all are in the mempool."""
        want = {s.address for s in senders}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = {to_checksum_address(tx["from"]): tx for tx in self.pending()}
            if want <= set(seen):
                return {a: seen[a] for a in want}
            time.sleep(0.02)
        raise AssertionError(f"test harness: pending transactions of {sorted(want)} never appeared")

    def send(self, acct: LocalAccount, fn, tip_gwei: int) -> bytes:
        """Send without waiting, with a priority fee of `tip_gwei` (to be mined before lower tips)."""
        w3 = self.m.chain.w3
        base = w3.eth.get_block("latest")["baseFeePerGas"]
        tx = fn.build_transaction({"from": acct.address, "nonce": w3.eth.get_transaction_count(acct.address, "pending"),
                                   "gas": 1_000_000, "chainId": self.m.chain.chain_id,
                                   "maxPriorityFeePerGas": tip_gwei * GWEI, "maxFeePerGas": tip_gwei * GWEI + 2 * base})
        return w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)

    def mine(self) -> None:
        self.m.rpc("evm_mine")

    def receipt(self, tx_hash) -> dict:
        return self.m.chain.w3.eth.get_transaction_receipt(tx_hash)


@contextmanager
def mempool(m):
    m.rpc("evm_setAutomine", [False])
    try:
        yield Pool(m)
    finally:
        m.rpc("evm_mine")  # nothing stays pending, so no waiting thread hangs
        m.rpc("evm_setAutomine", [True])


class Background:
    """A blocking call (an honest party's software waiting for its transaction) in a thread."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result, self.error = None, None

        def run():
            try:
                self.result = fn()
            except BaseException as exc:  # handed to join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 30.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "test harness: a background party never finished"
        if self.error is not None:
            raise self.error
        return self.result


# ============================================================================= the ledger

def ledger_scores(led, m, providers: Sequence[LocalAccount]) -> dict:
    Indexer(led, m.chain).sync()
    rep = Reputation(led)
    now = float(m.now())
    scores = rep.scores([p.address for p in providers], now)
    evidence = led.evidence([p.address for p in providers])
    return {"rep": rep, "now": now, "scores": scores, "evidence": evidence}


def honest_history(m, providers: Sequence[LocalAccount], consumer) -> None:
    """Real paid work: each provider agrees (with honest pay) in six jobs, so it is proven with a
    margin (evidence decays by the second: exactly three agreements read as 2.99999 a second later)."""
    n = len(providers)
    for k in list(range(n)) * 2:
        three = [providers[(k + j) % n] for j in range(3)]
        job_id, job, _ = m.open(providers=[p.address for p in three], max_tokens=MAX_TOKENS, consumer=consumer)
        m.mc.settle(consumer, job_id, job, [deliver(m, p, job_id, job, i) for i, p in enumerate(three)])


def sybil_share(rep, candidates: Sequence[str], prices: dict, now: float, sybils: set[str], seeds: int = 200):
    """Over `seeds` selections by the consumer's ranking: how many jobs got two or more sybils."""
    return sum(len(sybils & set(rep.choose(list(candidates), prices, now, seed=s))) >= 2 for s in range(seeds))


# ============================================================================= real libp2p providers

@dataclass
class Host:
    account: LocalAccount
    behaviour: str  # "honest", "overclaim" (validly signed, token count > maxTokens), "die" (aborts mid-stream)
    endpoint: str = ""
    manifest_hash: bytes = b""


class Mesh:
    """Real libp2p hosts for some providers, in their own thread and trio loop, registered on-chain
    with their endpoint and signed manifest so that the consumer library discovers and verifies
    them. "honest" stands in for the real provider (signs HONEST_TEXT for HONEST_TOKENS)."""

    def __init__(self, m, hosts: Sequence[Host]) -> None:
        self.m, self.hosts = m, list(hosts)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> Mesh:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "test harness: the provider hosts did not start"
        if self._error is not None:
            raise self._error
        for h in self.hosts:  # announce: endpoint and manifest hash on-chain, as `mesh provider start` does
            self.m.mc.register(h.account, MODEL, h.manifest_hash, PRICE, h.endpoint)
        return self

    def __exit__(self, *exc) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)
        assert not self._thread.is_alive(), "test harness: the provider hosts did not stop"

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._died = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        async with AsyncExitStack() as stack:
            for h in self.hosts:
                node = await stack.enter_async_context(Node.start(bytes(h.account.key), max_connections_per_peer=4))
                manifest = Manifest(model_id="test-model", model_sha256="0x" + MODEL.hex(), architecture="llama",
                                    quantization="Q4_K_M", context_length=2048, price_per_token=PRICE,
                                    peer_id=node.peer_id, multiaddrs=tuple(node.listen_addrs), protocol_version="1",
                                    hardware=Hardware(cpu_threads=1, gpu_name="", gpu_memory_mb=0, gpu_layers=0),
                                    provider=h.account.address, issued_at=1).sign(h.account)
                h.manifest_hash = bytes.fromhex(manifest.manifest_hash()[2:])
                h.endpoint = f"{node.listen_addrs[0]}/p2p/{node.peer_id}"
                node.serve(MANIFEST_PROTOCOL, self._manifest(manifest), timeout=10)
                node.serve(INFER_PROTOCOL, self._infer(h), timeout=10)
            self._ready.set()
            await self._stop.wait()

    @staticmethod
    def _manifest(manifest: Manifest):
        async def handler(session) -> None:
            await session.recv()
            await session.send({"type": "manifest", "manifest": manifest.to_dict()})
        return handler

    def _infer(self, h: Host):
        chain_id, market = self.m.chain.chain_id, self.m.chain.market.address

        async def handler(session) -> None:
            req = InferRequest.parse(await session.recv())
            if h.behaviour == "die":
                # First to stream (so its tokens are what the consumer shows), then the process dies.
                await session.send(TokenFrame(text="Two plus").to_wire())
                await trio.sleep(0.2)
                self._died.set()
                raise RuntimeError("provider killed mid-stream")
            if any(o.behaviour == "die" for o in self.hosts):
                with trio.fail_after(10):
                    await self._died.wait()
                await trio.sleep(0.3)
            count = req.job.max_tokens + 1 if h.behaviour == "overclaim" else HONEST_TOKENS
            signed = ResultClaim(req.job_id, HONEST_OUT, count).sign(h.account, chain_id, market)
            for piece in (HONEST_TEXT[:20], HONEST_TEXT[20:]):
                await session.send(TokenFrame(text=piece).to_wire())
            await session.send(ResultFrame(output_hash=HONEST_OUT, token_count=count,
                                           signature=signed.signature).to_wire())
        return handler


def ask(m, consumer, journal: Journal, events: list) -> object:
    """One query through the consumer library, exactly as `mesh ask` runs it."""
    offers = eligible(m.chain, discover(m.chain, MODEL), consumer.address, MAX_TOKENS, PRICE)
    asker = Asker(m.chain, consumer, journal=journal, on_event=events.append)
    return asker.ask(QUESTION, MODEL, offers, AskOptions(max_tokens=MAX_TOKENS, max_price=PRICE,
                                                         first_token_timeout=10, token_timeout=5))


# ############################################################################# A1 — targeting

def test_a1_consumer_with_two_sybils_burns_an_honest_providers_stake(market):
    """A1 — a consumer with two sybil providers burns any provider's stake.

    The consumer picks the three providers itself: the victim plus two provider accounts of its
    own (registered and staked with the attacker's tokens), which sign the same bogus result. The
    victim's honest, validly signed answer is the minority and its lock is burned; the sybils'
    pay comes back to the attacker. Five rounds at maxTokens 128 take a 10 MESH victim to 5 MESH;
    one job with a large maxTokens locks and burns the rest of its free stake.

    PROPERTY: an honest provider's stake is never reduced by a job in which it delivered an
    honest, validly signed answer; and the attacker's net token cost is > 0 (attacks are not free).
    """
    m = market
    attacker, victim = m.consumer, m.providers[0]
    shrink_stake(m, victim, 10 * MESH)
    keeper = keeper_for(m, victim)  # the victim runs our software; it has nothing to claim afterwards
    start, attacker_before = block(m), holdings(m, attacker)
    sybils = sybils_of(m, attacker, "a1-sybil", 2, 6 * MESH)
    victim_before = stake(m, victim)

    rounds = [sybil_round(m, attacker, victim, sybils, MAX_TOKENS, keeper) for _ in range(5)]
    after_five = stake(m, victim)
    big = free_stake(m, victim) // (2 * PRICE)  # lockFor(big, 10) = the victim's whole free stake
    rounds.append(sybil_round(m, attacker, victim, sybils, big, keeper))
    tick([keeper])

    victim_after = stake(m, victim)
    attacker_cost = attacker_before - holdings(m, attacker, *sybils)
    gas_total = gas_since(m, start, attacker, *sybils)
    facts = say(victim_stake_before=victim_before, after_5_rounds=after_five, after_big_job=victim_after,
                big_max_tokens=big, victim_paid=owed(m, victim), attacker_net_token_cost=attacker_cost,
                attacker_gas_total=gas_total, sybil_setup_gas=gas_total - sum(r["gas"] for r in rounds),
                gas_per_round=[r["gas"] for r in rounds], slash_masks=[r["slash_mask"] for r in rounds])
    assert victim_after == victim_before, "honest provider's stake was burned: " + facts
    assert attacker_cost > 0, "the attack cost the attacker no tokens: " + facts


# ############################################################################# A2 — targeting via replacement

def test_a2_replacing_an_uncontacted_slot_gets_committed_honest_providers_slashed(market):
    """A2 — honest providers slashed for "commit without reveal".

    P0 and P1 deliver; the consumer never contacts P2 and does not settle. After the delivery
    window the providers' ClaimKeepers commit. The consumer then replaces P2 (allowed: P2 never
    committed); the job hash changes, the ClaimKeepers take it for their own replacement and drop
    their committed claims, never reveal, and finalize slashes both honest providers.

    PROPERTY: a provider that delivered and committed is never slashed, and is paid.
    """
    m = market
    attacker = m.consumer
    honest, uncontacted, spare = m.providers[:2], m.providers[2], m.providers[3]
    keepers = [keeper_for(m, p) for p in honest]
    start = block(m)
    job_id, job, _ = m.open(providers=[*(p.address for p in honest), uncontacted.address], max_tokens=MAX_TOKENS)
    before = {p.address: (stake(m, p), owed(m, p)) for p in honest}
    for i, (p, k) in enumerate(zip(honest, keepers)):
        deliver(m, p, job_id, job, i, k)

    mine_at(m, delivery_end(job))
    tick(keepers)  # not settled after the delivery window: both commit
    committed = [c != b"\x00" * 32 for c in m.chain.market.functions.commitments(job_id).call()]
    new_job, _ = m.mc.replace_provider(attacker, job_id, job, 2, spare.address)
    run_keepers_to_the_end(m, new_job, keepers)  # they dropped their claims: nothing to reveal
    mine_at(m, reveal_end(job))
    ev = m.mc.settled_event(m.mc.finalize(attacker, job_id, new_job))

    lost = [before[p.address][0] - stake(m, p) for p in honest]
    paid = [owed(m, p) - before[p.address][1] for p in honest]
    facts = say(committed=committed, keeper_log=[k.events for k in keepers], slash_mask=ev["slashMask"],
                stake_lost=lost, paid=paid, refund_to_attacker=ev["refund"], attacker_gas=gas_since(m, start, attacker))
    assert lost == [0, 0], "honest committed providers were slashed: " + facts
    assert paid == [HONEST_PAY] * 2, "honest committed providers were not paid: " + facts


# ############################################################################# A3 — free inference

def _three_delivered(m):
    keepers = [keeper_for(m, p) for p in m.providers[:3]]
    job_id, job, _ = m.open(max_tokens=MAX_TOKENS)
    claims = [deliver(m, p, job_id, job, i, k) for i, (p, k) in enumerate(zip(m.providers[:3], keepers))]
    owed0 = [owed(m, p) for p in m.providers[:3]]
    return job_id, job, keepers, claims, owed0


def _paid_since(m, owed0, providers=None) -> list[int]:
    return [owed(m, p) - o for p, o in zip(providers or m.providers[:3], owed0)]


def test_a3a_free_inference_settle_with_everyone_missing_at_the_delivery_deadline(market):
    """A3 (a) — free inference: settle at the first block at/after openedAt + deliveryWindow with
    every delivered result marked missing. The honest software commits only after it has seen
    such a block, one block too late.

    PROPERTY: every provider that delivered a signed result is paid tokenCount x price.
    """
    m = market
    attacker, start = m.consumer, block(m)
    job_id, job, keepers, _, owed0 = _three_delivered(m)
    mine_at(m, delivery_end(job) - 1)
    tick(keepers)  # the last block before the deadline: too early to commit
    m.set_next_timestamp(delivery_end(job))  # the attacker's settle is the first transaction at the deadline
    ev = m.mc.settled_event(m.mc.settle(attacker, job_id, job, [None, None, None]))
    tick(keepers)  # the job is closed: the claims are dropped

    paid = _paid_since(m, owed0)
    facts = say(paid=paid, refund_to_attacker=ev["refund"], escrow=job.escrow,
                attacker_gas=gas_since(m, start, attacker), keeper_log=[k.events for k in keepers])
    assert paid == [HONEST_PAY] * 3, "providers that delivered were not paid: " + facts


def test_a3b_free_inference_a_replacement_makes_every_provider_drop_its_claim(market):
    """A3 (b) — free inference: after receiving the three answers, the consumer replaces one slot.
    The job hash changes, so every provider's ClaimKeeper (not only the replaced one's) drops its
    claim; after the delivery window the consumer settles with everyone missing.

    PROPERTY: every provider that delivered a signed result is paid tokenCount x price.
    """
    m = market
    attacker, start = m.consumer, block(m)
    job_id, job, keepers, _, owed0 = _three_delivered(m)
    new_job, _ = m.mc.replace_provider(attacker, job_id, job, 2, m.providers[3].address)
    mine_at(m, delivery_end(job))
    tick(keepers)  # "replaced before settlement; nothing to claim" — all three
    ev = m.mc.settled_event(m.mc.settle(attacker, job_id, new_job, [None, None, None]))

    paid = _paid_since(m, owed0)
    facts = say(paid=paid, refund_to_attacker=ev["refund"], escrow=job.escrow,
                attacker_gas=gas_since(m, start, attacker), keeper_log=[k.events for k in keepers])
    assert paid == [HONEST_PAY] * 3, "providers that delivered were not paid: " + facts


def test_a3c_free_inference_a_replacement_front_runs_the_providers_commits(market):
    """A3 (c) — free inference by front-running: after the delivery window the three ClaimKeepers
    send their commits; the consumer sees them in the mempool and gets one replaceProvider mined
    first (higher tip). Every commit then reverts (the job hash changed), the keepers drop their
    claims, and the consumer settles with everyone missing.

    PROPERTY: every provider that delivered a signed result is paid tokenCount x price.
    """
    m = market
    attacker, start = m.consumer, block(m)
    job_id, job, keepers, _, owed0 = _three_delivered(m)
    mine_at(m, delivery_end(job))
    with mempool(m) as pool:
        honest = [Background(k.tick) for k in keepers]  # each sends its commit and waits for it
        commits = pool.wait_for(m.providers[:3])
        front = pool.send(attacker, m.chain.market.functions.replaceProvider(
            job_id, job.as_abi(), 0, m.providers[3].address), tip_gwei=100)
        pool.mine()
        for b in honest:
            b.join()
        statuses = {"replace": pool.receipt(front)["status"],
                    "commits": [pool.receipt(tx["hash"])["status"] for tx in commits.values()]}
    new_job = job.with_provider(0, m.providers[3].address, PRICE)
    tick(keepers)
    ev = m.mc.settled_event(m.mc.settle(attacker, job_id, new_job, [None, None, None]))

    paid = _paid_since(m, owed0)
    facts = say(paid=paid, tx_status=statuses, refund_to_attacker=ev["refund"],
                attacker_gas=gas_since(m, start, attacker), keeper_log=[k.events for k in keepers])
    assert paid == [HONEST_PAY] * 3, "providers that delivered were not paid: " + facts


def test_a3d_free_inference_two_sybils_vote_for_no_majority(market):
    """A3 (d), new — free inference from one honest provider: the consumer fills the other two
    slots with its own sybils, which sign two different bogus outputs. Three different results are
    "no majority": nobody is paid, nobody is slashed, the whole escrow is refunded, at once.

    PROPERTY: every provider that delivered a signed result is paid tokenCount x price (and
    the attacker's net token cost is > 0).
    """
    m = market
    attacker, victim = m.consumer, m.providers[0]
    keeper = keeper_for(m, victim)
    start, attacker_before = block(m), holdings(m, attacker)
    sybils = sybils_of(m, attacker, "a3d-sybil", 2, 1 * MESH)
    owed0 = owed(m, victim)
    job_id, job, _ = m.open(providers=[victim.address, *(s.address for s in sybils)], max_tokens=MAX_TOKENS)
    honest = deliver(m, victim, job_id, job, 0, keeper)
    bogus = [ResultClaim(job_id, out, 1).sign(s, m.chain.chain_id, m.chain.market.address)
             for s, out in zip(sybils, (BOGUS_OUT, OTHER_BOGUS_OUT))]
    ev = m.mc.settled_event(m.mc.settle(attacker, job_id, job, [honest, *bogus]))
    run_keepers_to_the_end(m, job, [keeper])

    paid = owed(m, victim) - owed0
    cost = attacker_before - holdings(m, attacker, *sybils)
    facts = say(outcome=ev["outcome"], victim_paid=paid, slash_mask=ev["slashMask"], refund=ev["refund"],
                attacker_net_token_cost=cost, attacker_gas=gas_since(m, start, attacker, *sybils))
    assert paid == HONEST_PAY, "the provider that delivered was not paid: " + facts
    assert cost > 0, "the attack cost the attacker no tokens: " + facts


# ############################################################################# A4 — cartel

def test_a4_two_colluders_commit_at_open_and_are_paid_for_a_bogus_output(market, tmp_path):
    """A4 — two-provider cartel. Two colluders commit right after the job opens, to a bogus output
    claiming maxTokens; they never compute nor deliver. The consumer can then neither leave them
    out nor replace them, so the job goes to commit/reveal: the colluders reveal their matching
    bogus pair, are paid maxTokens x price each, and the honest third (running our ClaimKeeper)
    is slashed as the dissenter.

    PROPERTY: the honest provider is paid and not slashed; the colluders earn nothing for a bogus
    output (their profit is negative).
    """
    m = market
    consumer, honest, cartel = m.consumer, m.providers[0], m.providers[1:3]
    keeper = keeper_for(m, honest)
    start = block(m)
    job_id, job, _ = m.open(max_tokens=MAX_TOKENS)
    before = {p.address: (stake(m, p), owed(m, p)) for p in m.providers[:3]}
    salts = {p.address: keccak(b"cartel" + p.address.encode()) for p in cartel}
    for i, p in enumerate(cartel, start=1):  # t = 0: commit to a bogus maxTokens claim
        m.mc.commit(p, job_id, job, i, commitment(job_id, p.address, BOGUS_OUT, MAX_TOKENS, salts[p.address]))

    # The honest consumer library: P0 delivered, the colluders never answer. It tries to replace
    # them (consumer.query's re-routing), then `mesh settle` tries to settle without them.
    journal = journal_with(tmp_path, job_id, job, {0: deliver(m, honest, job_id, job, 0, keeper)})
    refused = [revert_name(lambda i=i: m.mc.replace_provider(consumer, job_id, job, i, m.providers[3].address))
               for i in (1, 2)]
    mine_at(m, delivery_end(job))
    consumer_log: list[str] = []
    settle_pending(m.chain, consumer, journal, on_event=consumer_log.append)
    tick([keeper])  # commit
    mine_at(m, commit_end(job))
    tick([keeper])  # reveal
    for i, p in enumerate(cartel, start=1):
        m.mc.reveal(p, job_id, job, i, BOGUS_OUT, MAX_TOKENS, salts[p.address])
    mine_at(m, reveal_end(job))
    tick([keeper])  # finalize

    def profit(p):
        return (owed(m, p) - before[p.address][1]) - (before[p.address][0] - stake(m, p))

    honest_paid = owed(m, honest) - before[honest.address][1]
    honest_lost = before[honest.address][0] - stake(m, honest)
    facts = say(consumer_refused=refused, consumer_log=consumer_log, honest_paid=honest_paid,
                honest_stake_lost=honest_lost,
                colluder_profit=[profit(p) for p in cartel], colluder_gas=gas_since(m, start, *cartel),
                keeper_log=keeper.events)
    assert honest_lost == 0, "the honest provider was slashed: " + facts
    assert honest_paid == HONEST_PAY, "the honest provider was not paid: " + facts
    assert [profit(p) < 0 for p in cartel] == [True, True], "the colluders profited from a bogus output: " + facts


# ############################################################################# A5 — copying

def test_a5_copier_front_runs_the_settle_with_a_commitment_to_the_copied_result(market, tmp_path):
    """A5 — copy by front-running. P0 and P1 deliver; P2 does no work. After the delivery window the
    consumer library (`mesh settle`) sends settle(P0, P1, P2 missing). P2 reads the pending
    calldata, commits to the copied (outputHash, tokenCount) with a higher tip; the settle reverts
    (a committed provider cannot be left out), the job is forced into the two-hour path, and the
    copier reveals and is paid like the providers that did the work.

    PROPERTY: a provider that did not deliver is never paid; the consumer's settle is not blocked.
    """
    m = market
    consumer, workers, copier = m.consumer, m.providers[:2], m.providers[2]
    keepers = [keeper_for(m, p) for p in workers]
    start = block(m)
    job_id, job, _ = m.open(max_tokens=MAX_TOKENS)
    copier_owed0 = owed(m, copier)
    journal = journal_with(tmp_path, job_id, job, {i: deliver(m, p, job_id, job, i, k)
                                                   for i, (p, k) in enumerate(zip(workers, keepers))})
    mine_at(m, delivery_end(job))
    consumer_chain, consumer_log = Chain(connect(m.url), m.chain.deployment), []
    salt = keccak(b"copier salt")
    with mempool(m) as pool:
        settling = Background(lambda: settle_pending(consumer_chain, consumer, journal, on_event=consumer_log.append))
        settle_tx = pool.wait_for([consumer])[consumer.address]
        copied = copy_from_pending_settle(m, settle_tx)
        pool.send(copier, m.chain.market.functions.commitResult(
            job_id, job.as_abi(), 2, commitment(job_id, copier.address, *copied, salt)), tip_gwei=100)
        pool.mine()
        settling.join()
        settle_status = pool.receipt(settle_tx["hash"])["status"]
    tick(keepers)  # the job is still open after the delivery window: commit
    mine_at(m, commit_end(job))
    tick(keepers)
    m.mc.reveal(copier, job_id, job, 2, *copied, salt)
    mine_at(m, reveal_end(job))
    tick(keepers)

    copier_paid = owed(m, copier) - copier_owed0
    facts = say(consumer_settle_status=settle_status, consumer_log=consumer_log,
                copied=(copied[0].hex()[:12], copied[1]),
                copier_paid=copier_paid, copier_gas=gas_since(m, start, copier), job_open=m.mc.is_open(job_id))
    assert copier_paid == 0, "a provider that did no work was paid: " + facts
    assert settle_status == 1, "the consumer's settle was blocked: " + facts


def copy_from_pending_settle(m, tx: dict) -> tuple[bytes, int]:
    """The copier's read of the consumer's pending settle: the first present (outputHash, tokenCount)."""
    _, args = m.chain.market.decode_function_input(tx["input"])
    present = next(x for x in args["results"] if bytes(x["r"]) != b"\x00" * 32)
    return bytes(present["outputHash"]), int(present["tokenCount"])


# ############################################################################# A6 — griefing locks

def test_a6_a_consumer_locks_providers_stake_without_their_consent(market):
    """A6 — stake lock-up without consent. A maxTokens = 1 job escrows 30 base units and locks
    1 MESH of each of three chosen providers, who never served it, until someone finalizes; their
    software never finalizes jobs it did not serve. Ten such jobs lock three 10 MESH providers'
    whole stake, so no honest consumer can hire them.

    PROPERTY: a provider's stake is never locked for a job it did not accept, or such a lock frees
    itself within a bounded time without the consumer: after the delivery window + a bounded grace
    (here the job's whole fallback life), the victims' free stake is back, with no consumer action
    and the honest software running.
    """
    m = market
    attacker, victims = m.consumer, m.providers[:3]
    for v in victims:
        shrink_stake(m, v, 10 * MESH)
    keepers = [keeper_for(m, v) for v in victims]
    start, attacker_before = block(m), holdings(m, attacker)
    jobs = [m.open(providers=[v.address for v in victims], max_tokens=1) for _ in range(10)]
    escrowed = sum(j[1].escrow for j in jobs)
    hire = revert_name(lambda: m.open(providers=[v.address for v in victims], max_tokens=1, consumer=m.consumer2))
    attacker_gas = gas_since(m, start, attacker)
    last = jobs[-1][1]
    mine_at(m, delivery_end(last) + JOB_LIFE + 1)  # the bound: delivery window + the whole fallback
    tick(keepers)
    free_then = [free_stake(m, v) for v in victims]
    m.advance(30 * 24 * 3600)
    tick(keepers)

    free_later = [free_stake(m, v) for v in victims]
    facts = say(stakes=[stake(m, v) for v in victims], free_after_bound=free_then, free_after_30_days=free_later,
                jobs=len(jobs), escrowed_by_attacker=escrowed, honest_consumer_hiring_them=hire,
                attacker_gas=attacker_gas, attacker_net_token_cost=attacker_before - holdings(m, attacker))
    assert free_then == [stake(m, v) for v in victims], "stake stays locked without the providers' consent: " + facts


# ############################################################################# A7 — reputation

def _launder(m, attacker, sybils, count: int, jobs: int = 4) -> None:
    """Jobs among the attacker's own sybils, all signing the same result with `count` tokens. Four,
    not three: proven means at least 3 decayed agreements, and three jobs a few seconds apart
    decay to just under 3 (the attacker simply runs one more)."""
    for _ in range(jobs):
        job_id, job, _ = m.open(providers=[s.address for s in sybils], max_tokens=MAX_TOKENS)
        m.mc.settle(attacker, job_id, job, [ResultClaim(job_id, EMPTY_OUT if count == 0 else BOGUS_OUT, count)
                                            .sign(s, m.chain.chain_id, m.chain.market.address) for s in sybils])


def _laundering(m, tmp_path, count: int, label: str):
    attacker, honest = m.consumer, m.providers
    honest_history(m, honest, m.consumer2)  # an established market: P0..P3 are proven
    start, attacker_before = block(m), holdings(m, attacker)
    sybils = sybils_of(m, attacker, label, 3, 1 * MESH)
    _launder(m, attacker, sybils, count)
    with open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as led:
        seen = ledger_scores(led, m, [*honest, *sybils])
        prices = {p.address: PRICE for p in [*honest, *sybils]}
        doubled = sybil_share(seen["rep"], list(prices), prices, seen["now"], {s.address for s in sybils})
    agreed = [round(seen["evidence"][s.address].agreed, 3) for s in sybils]
    proven = [seen["scores"][s.address].proven for s in sybils]
    facts = say(sybil_agreements=agreed, sybils_proven=proven, jobs_of_200_with_2plus_sybils=doubled,
                attacker_net_token_cost=attacker_before - holdings(m, attacker, *sybils),
                attacker_gas=gas_since(m, start, attacker, *sybils))
    return agreed, proven, doubled, facts


def test_a7_zero_token_jobs_among_sybils_launder_them_into_proven_providers(market, tmp_path):
    """A7 — reputation laundering: jobs among three sybils (three, plus one for the decay margin),
    all signing tokenCount 0, are indexed as agreements (ledger.indexer + ledger.Reputation); the
    sybils become "proven" and the at-most-one-unproven-provider rule no longer keeps two of them
    out of one job. The escrow is refunded in full: the attack costs gas only.

    PROPERTY: jobs whose outcome carries no paid work (tokenCount 0) never count as agreements,
    and sybils cannot become proven through jobs among themselves.
    """
    agreed, proven, doubled, facts = _laundering(market, tmp_path, 0, "a7-sybil")
    assert agreed == [0, 0, 0], "zero-token jobs counted as agreements: " + facts
    assert proven == [False] * 3, "sybils became proven among themselves: " + facts
    assert doubled == 0, "two sybils were chosen into one job: " + facts


def test_a7b_paid_jobs_among_sybils_launder_them_at_no_token_cost(market, tmp_path):
    """A7 (b), new — the same laundering with tokenCount 1: each job pays the sybils 10 base
    units, which are the attacker's own, so it still costs nothing but gas; the sybils are proven.

    PROPERTY: sybils cannot become proven through jobs among themselves.
    """
    agreed, proven, doubled, facts = _laundering(market, tmp_path, 1, "a7b-sybil")
    assert proven == [False] * 3, "sybils became proven among themselves: " + facts
    assert doubled == 0, "two sybils were chosen into one job: " + facts


def test_a11_reputation_smear_a_delivered_answer_is_recorded_as_missing(market, tmp_path):
    """A11, new — targeted reputation smear at no token cost. The victim delivers in five jobs
    with the attacker's two sybils; each time the attacker settles in the first block at the
    delivery deadline (A3 (a)) with the sybils' agreeing results and the victim left out. The
    ledger of every consumer indexes five "missing" results against the victim (weight 2 each);
    its score falls and consumers' ranking stops choosing it.

    PROPERTY: a job in which a provider delivered a signed answer never counts against its
    reputation (no "missing"), and does not lower its score.
    """
    m = market
    attacker, victim = m.consumer, m.providers[0]
    honest_history(m, m.providers, m.consumer2)
    keeper = keeper_for(m, victim)
    with open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as led:
        before = ledger_scores(led, m, m.providers)
        prices = {p.address: PRICE for p in m.providers}
        share_before = sum(victim.address in before["rep"].choose(list(prices), prices, before["now"], seed=s)
                           for s in range(200))
        start, attacker_before = block(m), holdings(m, attacker)
        sybils = sybils_of(m, attacker, "a11-sybil", 2, 1 * MESH)
        owed0 = owed(m, victim)
        for _ in range(5):
            job_id, job, _ = m.open(providers=[victim.address, *(s.address for s in sybils)], max_tokens=MAX_TOKENS)
            deliver(m, victim, job_id, job, 0, keeper)
            votes = [ResultClaim(job_id, BOGUS_OUT, 1).sign(s, m.chain.chain_id, m.chain.market.address)
                     for s in sybils]
            mine_at(m, delivery_end(job) - 1)
            tick([keeper])
            m.set_next_timestamp(delivery_end(job))
            m.mc.settle(attacker, job_id, job, [None, *votes])
            tick([keeper])
        after = ledger_scores(led, m, m.providers)
        share_after = sum(victim.address in after["rep"].choose(list(prices), prices, after["now"], seed=s)
                          for s in range(200))
    missing = round(after["evidence"][victim.address].missing, 3)
    s0, s1 = before["scores"][victim.address].score, after["scores"][victim.address].score
    facts = say(victim_missing=missing, victim_score_before=round(s0, 3), victim_score_after=round(s1, 3),
                victim_chosen_of_200_before=share_before, after=share_after, victim_paid=owed(m, victim) - owed0,
                attacker_net_token_cost=attacker_before - holdings(m, attacker, *sybils),
                attacker_gas=gas_since(m, start, attacker, *sybils))
    assert missing == 0, "delivered answers were recorded as missing: " + facts
    assert s1 >= s0, "the victim's score fell: " + facts


# ############################################################################# A8, A9 — the consumer library

def test_a8_a_provably_false_result_is_dropped_instead_of_punished(market, tmp_path):
    """A8 — a provable lie goes unpunished. A provider returns a validly signed result claiming
    maxTokens + 1 tokens. consumer.client.run_job refuses it ('bad_result'); with no spare the
    slot stays empty, so the job holds the escrow and both honest locks for the whole delivery
    window, and `mesh settle` then leaves the liar out: neither paid nor slashed.

    PROPERTY: a validly signed result with tokenCount > maxTokens is punished (its stake burned),
    and the honest providers are paid without waiting for the delivery window.
    """
    m = market
    consumer, (h0, h1, liar) = m.consumer, m.providers[:3]
    lock = lock_for(MAX_TOKENS)
    before = {p.address: (stake(m, p), owed(m, p)) for p in (h0, h1, liar)}
    events: list[str] = []
    journal = Journal(tmp_path / "consumer-jobs")
    with Mesh(m, [Host(h0, "honest"), Host(h1, "honest"), Host(liar, "overclaim")]):
        receipt = ask(m, consumer, journal, events)
    paid_at_once = [owed(m, p) - before[p.address][1] for p in (h0, h1)]
    locked_at_once = [m.mc.account(p.address)["locked"] for p in (h0, h1, liar)]
    mine_at(m, m.now() + P.delivery_window)  # then `mesh settle`
    settled = settle_pending(m.chain, consumer, journal, on_event=events.append)

    liar_lost = before[liar.address][0] - stake(m, liar)
    facts = say(agreement=receipt.agreement, settled_at_once=receipt.settled, paid_at_once=paid_at_once,
                locked_until_delivery_window=locked_at_once, settled_after_window=settled, liar_stake_lost=liar_lost,
                lock=lock, consumer_events=events)
    assert liar_lost == lock, "a provably false signed result went unpunished: " + facts
    assert paid_at_once == [HONEST_PAY] * 2, "honest providers waited for the delivery window: " + facts


def mesh_cli(*args: str) -> str:
    """Run a `mesh` command in this process (the user's view): its output."""
    from click.testing import CliRunner

    from cli.main import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"test harness: mesh {args[0]} failed: {result.output}"
    return result.output


def test_a9_a_withheld_answer_is_paid_for_but_never_shown_or_saved(market, monkeypatch):
    """A9 — a withheld answer. `mesh ask`: the provider that streams first dies mid-answer and
    there is no spare; the two others deliver the same signed answer. The query ends "pending":
    the user is shown only the dead provider's first tokens, the journal keeps the signatures but
    not the text, and after the delivery window `mesh settle` pays for an answer the consumer
    never saw (the text lived only in the in-memory Receipt of a finished command).

    PROPERTY: the consumer's receipt always contains the answer it will pay for (Receipt.text
    non-empty and equal to a delivered answer), the user is shown it, and it is saved in the
    consumer's journal.
    """
    m = market
    h0, h1, dying = m.providers[:3]
    m.chain.deployment.save()  # $MESH_HOME/deployment.json: where `mesh` finds the market
    receipts = []
    real_ask = Asker.ask
    monkeypatch.setattr(Asker, "ask", lambda self, *a, **k: receipts.append(real_ask(self, *a, **k)) or receipts[-1])
    with Mesh(m, [Host(h0, "honest"), Host(h1, "honest"), Host(dying, "die")]):
        shown = mesh_cli("ask", QUESTION[0][1], "--model", "0x" + MODEL.hex(), "--account", "dev:5",
                         "--max-tokens", str(MAX_TOKENS), "--max-price", str(PRICE))
    (receipt,) = receipts
    saved = [p.to_json() for p in Journal().pending()]
    mine_at(m, m.now() + P.delivery_window)
    settled = mesh_cli("settle", "--account", "dev:5", "--json")

    facts = say(agreement=receipt.agreement, receipt_text=repr(receipt.text), streamed=repr(receipt.streamed),
                shown_has_answer=HONEST_TEXT in shown, journal_has_text=any(HONEST_TEXT in j for j in saved),
                mesh_settle=" ".join(settled.split()))
    assert receipt.text == HONEST_TEXT, "the receipt lacks the answer paid for: " + facts
    assert HONEST_TEXT in shown, "the answer paid for was never shown: " + facts
    assert any(HONEST_TEXT in j for j in saved), "the answer paid for was not saved: " + facts


# ############################################################################# A10 — griefing locks

def test_a10_one_committed_provider_holds_the_job_hostage(market, tmp_path):
    """A10, new — one provider holds a job hostage. P2 computes the answer and commits to it right
    after the job opens, but never sends its signed result to the consumer. The consumer has two
    agreeing signed results yet cannot settle (P2 committed: it can be neither left out nor
    replaced), so the escrow and the honest providers' locks stay held for the whole two-hour
    fallback; the honest ClaimKeepers must commit, reveal and finalize, and P2 is paid in full.

    PROPERTY: once the consumer holds two agreeing delivered results the job settles without the
    fallback: the honest providers are paid and their locks freed by the delivery window, and a
    provider that withheld its result from the consumer is not paid.
    """
    m = market
    consumer, honest, hostage_taker = m.consumer, m.providers[:2], m.providers[2]
    keepers = [keeper_for(m, p) for p in honest]
    job_id, job, _ = m.open(max_tokens=MAX_TOKENS)
    owed0 = {p.address: owed(m, p) for p in m.providers[:3]}
    salt = keccak(b"hostage salt")
    m.mc.commit(hostage_taker, job_id, job, 2,
                commitment(job_id, hostage_taker.address, HONEST_OUT, HONEST_TOKENS, salt))
    journal = journal_with(tmp_path, job_id, job, {i: deliver(m, p, job_id, job, i, k)
                                                   for i, (p, k) in enumerate(zip(honest, keepers))})
    mine_at(m, delivery_end(job))
    consumer_log: list[str] = []
    settle_pending(m.chain, consumer, journal, on_event=consumer_log.append)  # `mesh settle`
    locked_at_window = [m.mc.account(p.address)["locked"] for p in honest]
    start = block(m)
    tick(keepers)
    mine_at(m, commit_end(job))
    tick(keepers)
    m.mc.reveal(hostage_taker, job_id, job, 2, HONEST_OUT, HONEST_TOKENS, salt)
    mine_at(m, reveal_end(job))
    tick(keepers)

    paid = {p.address: owed(m, p) - owed0[p.address] for p in m.providers[:3]}
    facts = say(consumer_log=consumer_log, honest_locked_at_delivery_window=locked_at_window,
                honest_fallback_gas=gas_since(m, start, *honest), paid=list(paid.values()),
                held_for_s=reveal_end(job) - job.opened_at)
    assert locked_at_window == [0, 0], "honest locks held past the delivery window: " + facts
    assert paid[hostage_taker.address] == 0, "the provider that withheld its result was paid: " + facts
