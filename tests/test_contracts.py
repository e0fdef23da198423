"""The v2 contracts (docs/PROTOCOL.md, part 1) against the real bytecode on a real Anvil.

Every test starts from the same snapshot: providers P0..P3 offer MODEL at PRICE in the open market,
staked STAKE (above weightCap, so all four weigh the same), two funded consumers and an outsider.
Court tests add the `world` (module scope, reverted at the end of the module): three seat providers
in their own pool GROUP, four jurors waiting in another pool (PARK) until a test convenes them into
GROUP after the seats were drawn, so that a job's seats and its jury are known sets.

Seats are drawn, never chosen: a test reads who sits where from the drawn Job and signs with that
seat's key (`acct_of`); nothing depends on which provider got which seat. A draw's seed includes
the draw block's prevrandao (on Anvil the block's mixHash): `seat_seed` and `jury_seed` mirror it
from the blocks, and `mirror_draw` the registry's draw. Private groups admit whom their admin (the
first to register) invited: the world's groups are set up so. Amounts are asserted to
the base unit, and every money path ends with the vault's books checked against its balance
(`vault_gap`: the registry's tokens minus stake, thawing stake, earnings and credit = what open
jobs hold).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError
from web3.logs import DISCARD

from meshmarket.contracts.deploy import deploy
from meshmarket.mesh.config import MarketParams
from meshmarket.mesh.errors import ChainError, ContractReverted
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.lifecycle import CONTEST_ABI, Contest
from meshmarket.mesh.market import (
    CLOSED,
    HARD,
    OUTCOME_AGREED,
    OUTCOME_JUDGED,
    OUTCOME_PROVISIONAL,
    OUTCOME_REFUNDED,
    PASS,
    SOFT,
    ResultClaim,
    commitment,
    pack_verdicts,
    vote_commitment,
)
from meshmarket.mesh.protocol import Job, output_hash, pack_tokens
from tests.conftest import FUNDS, MODEL, OTHER_MODEL, PRICE, STAKE

P = MarketParams()
MESH = 1_000_000
ZERO32 = b"\x00" * 32
ZERO_ADDRESS = "0x" + "00" * 20
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
#: The request `Market.open` hashes into promptHash: what a dispute must publish.
REQUEST = b"prompt"
#: The court's pool, and where jurors wait until a test convenes them.
GROUP = keccak(b"test group: the court's pool")
#: A private group for tests without the world.
MESH_GROUP = keccak(b"test group: a private mesh")
PARK = keccak(b"test group: jurors waiting")
LOCK = P.lock_for(100, PRICE)  # a seat's lock in a 100-token job at PRICE: minJobLock, 1 MESH


def job_id_for(consumer: str, open_block: int, slot: int) -> bytes:
    """The job id as PROTOCOL.md defines it, written here apart from mesh.protocol.Job.job_id."""
    return keccak(abi_encode(["address", "uint64", "uint8"], [to_checksum_address(consumer), open_block, slot]))


# ============================================================================= outputs and signatures

@dataclass(frozen=True)
class Output:
    """A generated answer: its text and token ids, as a seat signs and a jury reads them."""

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


def output(label: str, count: int = 40) -> Output:
    base = int.from_bytes(keccak(label.encode())[:2], "big")
    return Output(f"{label}: {count} tokens of it", tuple(range(base, base + count)))


A, B, C, D = output("answer A"), output("answer B"), output("answer C"), output("answer D")


def sign(m, job: Job, out, acct: LocalAccount, chain_id: int | None = None, market: str | None = None) -> ResultClaim:
    """`acct`'s EIP-712 Result for `job`; `out` an Output or (outputHash, tokenCount)."""
    out_hash, count = (out.hash, out.count) if isinstance(out, Output) else out
    return ResultClaim(job.job_id, out_hash, count).sign(acct, chain_id or m.chain.chain_id,
                                                         market or m.chain.market.address)


def claims(m, job: Job, outs) -> list[ResultClaim | None]:
    """Each seat's signed result: outs[i] for seat i (None: seat i's result is missing)."""
    return [None if o is None else sign(m, job, o, acct_of(job.seats[i])) for i, o in enumerate(outs)]


def reverts(name: str):
    """Expect a ContractReverted whose decoded custom error is `name`."""

    class _Ctx:
        def __enter__(self):
            return self

        def __exit__(self, et, ev, tb):
            assert et is ContractReverted, f"expected revert {name}, got {et and et.__name__}: {ev}"
            assert ev.name == name, f"expected {name}, got {ev.name}: {ev}"
            self.error = ev
            return True

    return _Ctx()


def call_error(m, fn, sender: str) -> ContractReverted:
    """The decoded revert of `fn` called (not sent) at the latest block."""
    try:
        fn.call({"from": sender}, block_identifier="latest")
    except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
        data = exc.data if isinstance(exc.data, str) else exc.args[0]
        return m.chain.decoder.decode(data)
    raise AssertionError("the call did not revert")


# ============================================================================= accounts

@cache
def dev(i: int) -> LocalAccount:
    return dev_account(i)


KNOWN: dict[str, LocalAccount] = {}


def acct_of(address: str) -> LocalAccount:
    address = to_checksum_address(address)
    if address not in KNOWN:
        KNOWN.update({dev(i).address: dev(i) for i in range(10)})
    return KNOWN[address]


def fresh(label: str) -> LocalAccount:
    """A new key, fixed by its label."""
    acct = Account.from_key(keccak(text=f"meshmarket contract test: {label}"))
    KNOWN[acct.address] = acct
    return acct


def fund(m, acct: LocalAccount, mesh: int = FUNDS) -> None:
    w3 = m.chain.w3
    tx = {"to": acct.address, "value": 10**20, "gas": 21_000, "gasPrice": w3.eth.gas_price,
          "chainId": m.chain.chain_id, "nonce": w3.eth.get_transaction_count(m.deployer.address, "pending")}
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(m.deployer.sign_transaction(tx).raw_transaction))
    m.chain.transact(m.deployer, m.chain.token.functions.mint(acct.address, mesh))


def add_provider(m, label: str, stake: int = STAKE, price: int = PRICE, group: bytes = ZERO32,
                 model: bytes = MODEL, admin: LocalAccount | None = None) -> LocalAccount:
    """A funded, staked provider in `group` (invited first by the group's `admin`, if given)."""
    acct = fresh(label)
    fund(m, acct)
    if admin is not None:
        m.mc.invite(admin, group, acct.address)
    m.mc.register(acct, model, keccak(b"manifest of " + label.encode()), price, group=group)
    if stake:
        m.mc.stake(acct, stake)
    m.chain.ensure_allowance(acct, m.chain.registry.address, FUNDS)  # bonds, deposits
    return acct


def approve(m, *accts) -> None:
    for a in accts:
        m.chain.ensure_allowance(a, m.chain.registry.address, FUNDS)


def account(m, who) -> dict:
    return m.mc.account(who if isinstance(who, str) else who.address)


def supply(m) -> int:
    return m.chain.token.functions.totalSupply().call()


def vault_gap(m, *extra) -> int:
    """The registry's token balance minus everything its books owe to accounts (stake, thawing
    stake, earnings, credit): exactly what open jobs hold (escrow and bonds)."""
    reg = m.chain.registry.functions
    who = {a.address for a in (*m.providers, m.consumer, m.consumer2, m.outsider, *extra, *WORLD_ACCOUNTS)}
    with m.chain.w3.batch_requests() as batch:  # one round trip
        batch.add(m.chain.token.functions.balanceOf(m.chain.registry.address))
        for a in who:
            batch.add(reg.accounts(a))
            batch.add(reg.thaws(a))
            batch.add(reg.credit(a))
        balance, *rows = batch.execute()
    books = 0
    for k in range(0, len(rows), 3):
        (stake, _locked, owed, _price), (thawing, _ready), credit = rows[k:k + 3]
        books += stake + owed + thawing + credit
    return balance - books


#: The world's accounts, once created (vault_gap counts them).
WORLD_ACCOUNTS: list[LocalAccount] = []


# ============================================================================= jobs and the clock

def open_job(m, max_tokens: int = 100, price_cap: int = PRICE, consumer=None, group: bytes = ZERO32,
             slot: int | None = None) -> Job:
    """Open and draw a job (Market.open); the drawn Job."""
    _, job = m.open(max_tokens=max_tokens, price_cap=price_cap, consumer=consumer, group=group, slot=slot)
    return job


def settle(m, job: Job, outs) -> dict:
    return m.mc.settle(acct_of(job.consumer), job, claims(m, job, outs))


def delivery_end(job: Job) -> int:
    return job.drawn_at + P.delivery_window


def claim_end(job: Job) -> int:
    return delivery_end(job) + P.claim_window


def reveal_end(job: Job) -> int:
    return claim_end(job) + P.reveal_window


def mine_blocks(m, n: int) -> None:
    m.rpc("anvil_mine", [hex(n)])


def fee(job: Job) -> int:
    return job.max_tokens * job.price_cap


# ============================================================================= the draw, mirrored

def pool_of(m, model: bytes = MODEL, group: bytes = ZERO32) -> bytes:
    return m.chain.registry.functions.poolKey(model, group).call()


def members(m, pool: bytes) -> list[tuple[str, int, int]]:
    reg = m.chain.registry.functions
    size = reg.poolSize(pool).call()
    if not size:
        return []
    with m.chain.w3.batch_requests() as batch:
        for i in range(size):
            batch.add(reg.poolMember(pool, i))
        return [tuple(x)[:3] for x in batch.execute()]  # (provider, price, free); its `touched` block aside


def mirror_draw(pool_members, seed: bytes, count: int, exclude=(), for_seat: bool = False, price_cap: int = 0,
                max_tokens: int = 0) -> list[str]:
    """ProviderRegistry.draw in Python: rejection sampling, at most 64 attempts."""
    exclude = {to_checksum_address(a) for a in exclude}
    picked: list[str] = []
    for attempt in range(64):
        if len(picked) >= min(count, 3) or not pool_members:
            break
        r = int.from_bytes(keccak(abi_encode(["bytes32", "uint256"], [seed, attempt])), "big")
        provider, price, free = pool_members[r % len(pool_members)]
        if (r >> 128) % P.weight_cap >= min(free, P.weight_cap):
            continue
        if provider in exclude or provider in picked:
            continue
        if for_seat and (price > price_cap or P.lock_for(max_tokens, price) * P.max_lock_share > free):
            continue
        picked.append(provider)
    return picked


def registry_draw(m, pool: bytes, seed: bytes, count: int, exclude=(), for_seat=False, price_cap=0,
                  max_tokens=0) -> list[str]:
    """The registry's own draw, called as the market would in the next block (eth_call at the
    pending block: nothing changes, and the pool is the one the next block begins with)."""
    spec = (pool, seed, count, price_cap, max_tokens, for_seat, ZERO_ADDRESS, 0)
    picked, _, found = m.chain.registry.functions.draw(spec, list(exclude)).call(
        {"from": m.chain.market.address}, block_identifier="pending")
    return list(picked[:found])


def seats_of(job: Job) -> list[str]:
    return [s for s in job.seats if s != ZERO_ADDRESS]


def prevrandao(m, block: int) -> bytes:
    """block.prevrandao of a mined block: on Anvil its mixHash."""
    return bytes(m.chain.w3.eth.get_block(block)["mixHash"])


def seat_seed(m, job: Job, draw_block: int) -> bytes:
    """keccak256(abi.encode(jobId, blockhash(openBlock), prevrandao of the draw's block))."""
    return keccak(abi_encode(["bytes32", "bytes32", "uint256"], [
        job.job_id, bytes(m.chain.w3.eth.get_block(job.open_block)["hash"]),
        int.from_bytes(prevrandao(m, draw_block), "big")]))


def jury_seed(m, job: Job, dispute_block: int, draw_block: int) -> bytes:
    """keccak256(abi.encode(keccak256(abi.encode(jobId, blockhash(disputeBlock), prevrandao)), "jury"))."""
    inner = keccak(abi_encode(["bytes32", "bytes32", "uint256"], [
        job.job_id, bytes(m.chain.w3.eth.get_block(dispute_block)["hash"]),
        int.from_bytes(prevrandao(m, draw_block), "big")]))
    return keccak(abi_encode(["bytes32", "string"], [inner, "jury"]))


#: A contract that calls the address in the first 20 bytes of its calldata with the rest, and returns (or
#: reverts with) what that call did: a smart-contract account of the simplest kind.
#:   PUSH1 20 CALLDATASIZE SUB; DUP1 PUSH1 20 PUSH0 CALLDATACOPY; CALL(GAS, calldata[0:20], 0, 0, size, 0, 0);
#:   RETURNDATACOPY(0, 0, RETURNDATASIZE); JUMPI ok; REVERT(0, RETURNDATASIZE); ok: RETURN(0, RETURNDATASIZE)
PROXY_RUNTIME = bytes.fromhex("60143603" "80601 45f37".replace(" ", "") + "5f5f825f5f" "5f3560601c" "5af1"
                              "3d5f5f3e" "601f57" "3d5ffd" "5b3d5ff3")


def deploy_proxy(m) -> str:
    assert PROXY_RUNTIME[0x1F] == 0x5B, "the JUMPDEST moved"
    n = len(PROXY_RUNTIME)
    init = bytes([0x60, n, 0x60, 0x0C, 0x5F, 0x39, 0x60, n, 0x5F, 0xF3, 0x00, 0x00])  # CODECOPY, RETURN
    w3 = m.chain.w3
    tx = {"data": init + PROXY_RUNTIME, "gas": 200_000, "gasPrice": w3.eth.gas_price, "chainId": m.chain.chain_id,
          "nonce": w3.eth.get_transaction_count(m.outsider.address, "pending")}
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(
        m.outsider.sign_transaction(tx).raw_transaction))
    assert receipt["status"] == 1
    return receipt["contractAddress"]


def through(m, proxy: str, contract, fn: str, args: list) -> str | None:
    """Have the proxy contract call `contract.fn(*args)`: the custom error's name if it reverts."""
    data = bytes.fromhex(contract.address[2:]) + bytes.fromhex(contract.encode_abi(fn, args)[2:])
    w3 = m.chain.w3
    call = {"from": m.outsider.address, "to": proxy, "data": "0x" + data.hex()}
    reply = w3.provider.make_request("eth_call", [call, "pending"])
    if "error" in reply:
        return m.chain.decoder.decode(reply["error"].get("data")).name
    tx = {**call, "gas": 2_000_000, "gasPrice": w3.eth.gas_price, "chainId": m.chain.chain_id,
          "nonce": w3.eth.get_transaction_count(m.outsider.address, "pending"), "data": data}
    del tx["from"]
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(
        m.outsider.sign_transaction(tx).raw_transaction))
    assert receipt["status"] == 1
    return None


# ============================================================================= the court

@dataclass
class World:
    seats: list[LocalAccount]  # S0..S2: registered in GROUP (S0 its admin), the only members until convened
    jurors: list[LocalAccount]  # J0..J3: waiting in PARK (J0 its admin), invited into GROUP


@pytest.fixture(scope="module")
def world(market_session):
    """Seat providers in GROUP and jurors in PARK, on the session chain, reverted after the module."""
    m = market_session
    snap = m.rpc("evm_snapshot")
    try:
        seats = [add_provider(m, "seat 0", group=GROUP)]  # GROUP's admin: the first to register
        seats += [add_provider(m, f"seat {i}", group=GROUP, admin=seats[0]) for i in (1, 2)]
        jurors = [add_provider(m, "juror 0", group=PARK)]
        jurors += [add_provider(m, f"juror {i}", group=PARK, admin=jurors[0]) for i in (1, 2, 3)]
        for a in (*jurors, m.consumer):  # may join GROUP later (convene; a test's consumer serves too)
            m.mc.invite(seats[0], GROUP, a.address)
        WORLD_ACCOUNTS[:] = seats + jurors
        yield World(seats, jurors)
    finally:
        WORLD_ACCOUNTS.clear()
        m.chain.fixed_gas = None
        assert m.rpc("evm_revert", [snap]) is True


@pytest.fixture
def court(world, market):
    return market, world


def convene(m, w: World) -> None:
    """The jurors join GROUP (after the seats were drawn: a seat draw in GROUP still finds only S0..S2)."""
    for j in w.jurors:
        m.mc.register(j, MODEL, keccak(b"manifest of " + j.address.encode()), PRICE, group=GROUP)


def contested(m, outs, max_tokens: int = 100, price_cap: int = PRICE, group: bytes = GROUP) -> tuple[Job, Contest]:
    """A job in `group` settled with `outs` by seat, which must contest it."""
    job = open_job(m, max_tokens=max_tokens, price_cap=price_cap, group=group)
    receipt = settle(m, job, outs)
    c = contest_of(m, receipt)
    assert c is not None, "test set-up: the job was not contested"
    return job, c


def dispute(m, job: Job, c: Contest, who: LocalAccount) -> dict:
    approve(m, who)
    return m.mc.dispute(who, job, c, REQUEST)


def draw_jury(m, job: Job, c: Contest) -> list[LocalAccount]:
    jurors, _ = m.mc.draw_jury(m.outsider, job, c)
    return [acct_of(j) for j in jurors]


def post_all_evidence(m, job: Job, c: Contest, outs, seats=None) -> None:
    for i in seats if seats is not None else c.seats(c.present):
        m.mc.post_evidence(m.outsider, job, c, i, outs[i].text_hash, outs[i].packed)


def jury_at(m, job: Job) -> int:
    return int(m.mc.dispute_of(job.job_id)["jury_at"])


def vote(m, job: Job, votes: dict, reveal=None) -> None:
    """Jurors commit `votes` ({juror: verdicts}) in the commit phase and reveal them (those in
    `reveal`, all by default) in the reveal phase; the clock is left at the court's end."""
    t = jury_at(m, job)
    salts = {j.address: keccak(b"vote salt " + j.address.encode()) for j in votes}
    m.set_next_timestamp(t + P.court_phase)
    for j, v in votes.items():
        m.mc.commit_vote(j, job.job_id, vote_commitment(job.job_id, j.address, v, salts[j.address]))
    m.set_next_timestamp(t + 2 * P.court_phase)
    for j, v in votes.items():
        if reveal is None or j in reveal:
            m.mc.reveal_vote(j, job.job_id, v, salts[j.address])
    m.set_next_timestamp(t + 3 * P.court_phase)


def contest_of(m, receipt) -> Contest | None:
    """The Contest in a receipt's JobContested event (None: the receipt closed or kept the job)."""
    return m.mc.contest_of(receipt)


def contested_hash(job: Job, c: Contest) -> bytes:
    """What the market stores for a contested job: keccak256(abi.encode(jobHash, contest)), the
    Contest a static struct encoded in place."""
    return keccak(job.hash() + abi_encode([CONTEST_ABI], [c.as_abi()]))


def jury_paid(m, receipt) -> dict:
    return dict(m.chain.market.events.JuryPaid().process_receipt(receipt, errors=DISCARD)[0]["args"])


def judged(m, w, outs, disputer, verdicts: dict[int, int], evidence=None, reveal_count: int = 3):
    """A GROUP job contested with `outs`, disputed by `disputer` ("consumer" or a seat index), the
    jury convened and drawn, evidence posted (for `evidence` seats, all present ones by default), and
    every juror voting `verdicts` ({seat: PASS|SOFT|HARD}); `reveal_count` of them reveal. Returns
    (job, contest, jurors, resolve receipt, the disputer's account)."""
    job, c = contested(m, outs)
    who = m.consumer if disputer == "consumer" else acct_of(job.seats[disputer])
    dispute(m, job, c, who)
    convene(m, w)
    jurors = draw_jury(m, job, c)
    assert len(jurors) == 3
    post_all_evidence(m, job, c, outs, evidence)
    v = pack_verdicts(verdicts)
    vote(m, job, {j: v for j in jurors}, reveal=set(jurors[:reveal_count]))
    receipt = m.mc.resolve(m.outsider, job, c)
    return job, c, jurors, receipt, who


# ############################################################################# the agreed path

def test_three_agree_all_paid_rest_refunded(market):
    m = market
    bal = m.chain.balance(m.consumer.address)
    job = open_job(m, max_tokens=100)
    assert m.chain.balance(m.consumer.address) == bal - 100 * PRICE * 4 == bal - job.held
    before = {s: account(m, s) for s in seats_of(job)}
    assert vault_gap(m) == job.held
    ev = m.mc.settled_event(settle(m, job, [A, A, A]))
    assert ev["outcome"] == OUTCOME_AGREED and ev["present"] == 0b111 and ev["slashMask"] == 0
    assert list(ev["paid"]) == [400, 400, 400, 0, 0] and ev["refund"] == 4000 - 1200
    assert m.mc.credit(m.consumer.address) == 2800
    for s in seats_of(job):
        a = account(m, s)
        assert a["owed"] == before[s]["owed"] + 400 and a["locked"] == 0 and a["stake"] == STAKE
    assert m.mc.job_slot(job) == CLOSED and not m.mc.is_open(job)
    assert vault_gap(m) == 0


def test_nothing_is_locked_by_a_draw_or_an_agreed_job(market):
    m = market
    job = open_job(m, max_tokens=100)
    assert [account(m, p)["locked"] for p in m.providers] == [0] * 4
    settle(m, job, [A, A, A])
    assert [account(m, p)["locked"] for p in m.providers] == [0] * 4
    assert [account(m, p)["stake"] for p in m.providers] == [STAKE] * 4


def test_pay_is_at_the_seat_price_under_a_higher_cap(market):
    m = market
    job = open_job(m, max_tokens=50, price_cap=3 * PRICE)
    assert job.prices[:3] == (PRICE,) * 3 and job.held == 50 * 30 * 4
    ev = m.mc.settled_event(settle(m, job, [output("x", 50)] * 3))
    assert list(ev["paid"])[:3] == [500] * 3 and ev["refund"] == 6000 - 1500
    assert vault_gap(m) == 0


def test_payout_never_above_escrow(market):
    """Every seat claims the maximum: the seats get three shares, the jury reserve comes back."""
    m = market
    job = open_job(m, max_tokens=77)
    ev = m.mc.settled_event(settle(m, job, [output("long", 77)] * 3))
    assert sum(ev["paid"]) == 3 * fee(job) and ev["refund"] == fee(job) == job.held - sum(ev["paid"])
    assert vault_gap(m) == 0


def test_price_change_does_not_alter_an_open_job(market):
    m = market
    job = open_job(m, max_tokens=100, price_cap=50)
    for p in m.providers:
        m.mc.register(p, MODEL, keccak(b"new manifest"), 50)
    ev = m.mc.settled_event(settle(m, job, [output("full", 100)] * 3))
    assert list(ev["paid"])[:3] == [100 * PRICE] * 3  # the price the seats were drawn at
    forged = job.model_copy(update={"prices": (50, 50, 50, 0, 0)})
    assert forged.hash() != job.hash()


# ############################################################################# provable lies

def test_token_count_above_max_is_slashed_even_on_an_agreed_job(market):
    m = market
    s0 = supply(m)
    job = open_job(m, max_tokens=100)
    liar = job.seats[2]
    ev = m.mc.settled_event(settle(m, job, [A, A, (A.hash, 101)]))
    assert ev["outcome"] == OUTCOME_AGREED and ev["present"] == 0b011 and ev["slashMask"] == 0b100
    assert list(ev["paid"]) == [400, 400, 0, 0, 0] and ev["refund"] == 4000 - 800
    assert account(m, liar)["stake"] == STAKE - LOCK and account(m, liar)["locked"] == 0
    assert supply(m) == s0 - LOCK  # burned: nobody receives it
    assert m.mc.job_slot(job) == CLOSED  # no contest, no dispute window
    assert vault_gap(m) == 0


def test_all_provable_lies_refund_everything_and_slash_all(market):
    m = market
    s0 = supply(m)
    job = open_job(m, max_tokens=100)
    ev = m.mc.settled_event(settle(m, job, [(A.hash, 101)] * 3))
    assert ev["outcome"] == OUTCOME_REFUNDED and ev["present"] == 0 and ev["slashMask"] == 0b111
    assert list(ev["paid"]) == [0] * 5 and ev["refund"] == job.held
    assert supply(m) == s0 - 3 * LOCK
    assert vault_gap(m) == 0


def test_same_hash_different_token_count_is_a_dissent(market):
    """An agreeing output hash with an inflated token count is an overcharge, not agreement."""
    m = market
    job = open_job(m, max_tokens=100)
    c = contest_of(m, settle(m, job, [(A.hash, 50), (A.hash, 99), (A.hash, 50)]))
    assert c is not None and c.provisional == 0b101 and c.present == 0b111 and c.slashed == 0


# ############################################################################# signatures

def test_signature_replayed_on_another_job_refused(market):
    m = market
    j1 = open_job(m)
    j2 = open_job(m)
    # Every seat of job 2 presents a signature its provider made for job 1.
    replay = [sign(m, j1, A, acct_of(s)) for s in seats_of(j2)]
    replay = [ResultClaim(j2.job_id, r.output_hash, r.token_count, r.signature) for r in replay]
    with reverts("BadSignature") as ctx:
        m.mc.settle(m.consumer, j2, replay)
    assert ctx.error.error_args == (0,)


def test_signature_of_a_closed_job_refused_on_the_next_job_in_its_slot(market):
    """A slot is reused, a job id never: the slot's next job has a new id, old signatures fail."""
    m = market
    j1 = open_job(m, slot=0)
    old = claims(m, j1, [A, A, A])
    m.mc.settle(m.consumer, j1, old)
    j2 = open_job(m, slot=0)
    assert j2.job_id != j1.job_id and j2.job_id == job_id_for(m.consumer.address, j2.open_block, 0)
    by_seat = {j1.seats[i]: old[i] for i in range(3)}
    replay = [ResultClaim(j2.job_id, by_seat[s].output_hash, by_seat[s].token_count, by_seat[s].signature)
              if s in by_seat else sign(m, j2, A, acct_of(s)) for s in seats_of(j2)]
    with reverts("BadSignature"):
        m.mc.settle(m.consumer, j2, replay)


def test_signature_for_another_chain_refused(market):
    m = market
    job = open_job(m)
    results = [sign(m, job, A, acct_of(s), chain_id=1) for s in seats_of(job)]
    with reverts("BadSignature") as ctx:
        m.mc.settle(m.consumer, job, results)
    assert ctx.error.error_args == (0,)


def test_signature_for_another_contract_refused(market):
    m = market
    job = open_job(m)
    results = [sign(m, job, A, acct_of(s), market=m.chain.registry.address) for s in seats_of(job)]
    with reverts("BadSignature"):
        m.mc.settle(m.consumer, job, results)


def test_malleable_signature_refused(market):
    """(r, n - s, v ^ 1) is the same signature in its other form: it must not be accepted."""
    m = market
    job = open_job(m)
    results = claims(m, job, [A, A, A])
    sig = results[0].signature
    s = int.from_bytes(sig[32:64], "big")
    flipped = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    assert ResultClaim(job.job_id, A.hash, A.count, flipped).signer(m.chain.chain_id, m.chain.market.address) \
        == job.seats[0]
    vs = ((flipped[64] - 27) << 255) | (SECP256K1_N - s)
    raw = [(A.hash, A.count, flipped[:32], vs.to_bytes(32, "big"))] + [x.as_abi() for x in results[1:]]
    with reverts("BadSignature") as ctx:
        m.chain.transact(m.consumer, m.chain.market.functions.settle(job.as_abi(), raw))
    assert ctx.error.error_args == (0,)


def test_zero_address_and_garbage_signatures_refused(market):
    m = market
    job = open_job(m)
    good = [c.as_abi() for c in claims(m, job, [A, A, A])]
    for r, vs in ((ZERO32, b"\x00" * 31 + b"\x01"), (b"\xff" * 32, b"\x00" * 31 + b"\x01"), (b"\x01" * 32, ZERO32),
                  (good[0][2], good[1][3])):
        raw = [(A.hash, A.count, r, vs)] + good[1:]
        with reverts("BadSignature"):
            m.chain.transact(m.consumer, m.chain.market.functions.settle(job.as_abi(), raw))


def test_signature_of_another_provider_refused(market):
    m = market
    job = open_job(m)
    s0, s1, s2 = (acct_of(s) for s in seats_of(job))
    with reverts("BadSignature") as ctx:
        m.mc.settle(m.consumer, job, [sign(m, job, A, s1), sign(m, job, A, s1), sign(m, job, A, s2)])
    assert ctx.error.error_args == (0,)
    with reverts("BadSignature") as ctx:  # the consumer signing for a seat
        m.mc.settle(m.consumer, job, [sign(m, job, A, s0), sign(m, job, A, s1), sign(m, job, A, m.consumer)])
    assert ctx.error.error_args == (2,)


def test_signed_result_covers_the_token_count(market):
    """A signature over (outputHash, 40) does not pass as (outputHash, 39)."""
    m = market
    job = open_job(m)
    results = claims(m, job, [A, A, A])
    raw = [x.as_abi() for x in results]
    raw[1] = (raw[1][0], raw[1][1] - 1, raw[1][2], raw[1][3])
    with reverts("BadSignature") as ctx:
        m.chain.transact(m.consumer, m.chain.market.functions.settle(job.as_abi(), raw))
    assert ctx.error.error_args == (1,)


# ############################################################################# opening and drawing

def test_open_takes_nothing_and_stores_only_a_hash(market):
    m = market
    bal = m.chain.balance(m.consumer.address)
    job_id, job, receipt = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 100, PRICE, slot=3)
    assert m.chain.balance(m.consumer.address) == bal and vault_gap(m) == 0
    assert job.slot == 3 and job.open_block == receipt["blockNumber"] and job.drawn_at == 0
    assert job_id == job.job_id == job_id_for(m.consumer.address, receipt["blockNumber"], 3)
    assert m.mc.job_slot(job) == job.hash() and m.mc.is_open(job)
    assert seats_of(job) == []


def test_max_tokens_and_price_cap_bounds(market):
    m = market
    with reverts("BadMaxTokens"):
        m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 0, PRICE)
    with reverts("BadMaxTokens"):
        m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), (1 << 20) + 1, PRICE)
    with reverts("ZeroPriceCap"):
        m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 10, 0)
    _, job, _ = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 1 << 20, PRICE, approve=False)
    assert job.max_tokens == 1 << 20


def test_draw_needs_a_later_block(market):
    """The seed is the hash of the block that includes openJob: no draw in that block."""
    m = market
    w3 = m.chain.w3
    slot = m.mc.free_slot(m.consumer.address)
    opened = w3.eth.block_number + 1
    job = Job(consumer=m.consumer.address, slot=slot, model_hash=MODEL, prompt_hash=keccak(REQUEST),
              max_tokens=100, price_cap=PRICE, open_block=opened)
    fns = [m.chain.market.functions.openJob(slot, MODEL, ZERO32, keccak(REQUEST), 100, PRICE),
           m.chain.market.functions.drawSeats(job.as_abi())]
    m.rpc("evm_setAutomine", [False])
    try:
        nonce = w3.eth.get_transaction_count(m.consumer.address)
        hashes = []
        for k, fn in enumerate(fns):
            tx = fn.build_transaction({"from": m.consumer.address, "nonce": nonce + k, "gas": 1_000_000,
                                       "chainId": m.chain.chain_id})
            hashes.append(w3.eth.send_raw_transaction(m.consumer.sign_transaction(tx).raw_transaction))
        m.rpc("evm_mine")
    finally:
        m.rpc("evm_setAutomine", [True])
    opened_r, drawn_r = (w3.eth.get_transaction_receipt(h) for h in hashes)
    assert opened_r["blockNumber"] == drawn_r["blockNumber"] == opened
    assert opened_r["status"] == 1 and drawn_r["status"] == 0
    err = call_error(m, m.chain.market.functions.drawSeats(job.as_abi()), m.consumer.address)
    assert err.name == "TooEarly" and err.error_args == (opened + 1,)
    drawn, _ = m.mc.draw_seats(m.consumer, job)  # the next block
    assert len(seats_of(drawn)) == 3


def test_seed_mixes_the_open_blocks_hash_with_the_draw_blocks_prevrandao(market):
    m = market
    job_id, job, _ = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 100, PRICE)
    pool_now = members(m, pool_of(m))
    drawn, receipt = m.mc.draw_seats(m.outsider, job)  # any externally owned account may draw
    assert drawn.seed == seat_seed(m, job, receipt["blockNumber"])
    assert drawn.drawn_at == m.chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    expected = mirror_draw(pool_now, drawn.seed, 3, exclude=[m.consumer.address], for_seat=True, price_cap=PRICE,
                           max_tokens=100)
    assert seats_of(drawn) == expected and len(set(expected)) == 3
    assert drawn.prices == (PRICE, PRICE, PRICE, 0, 0)
    assert m.mc.job_slot(drawn) == drawn.hash()


def test_the_consumer_never_chooses(market):
    """No entry point names a provider; the draw is a function of the pool and a seed nobody can
    compute before the draw's block (the node's answer for the pending block is not it); the same
    request drawn in another block gets another seed, each the pool's draw; a job is drawn once."""
    m = market
    abi = {f["name"]: f for f in m.chain.market.abi if f.get("type") == "function"}
    assert [i["type"] for i in abi["openJob"]["inputs"]] == ["uint8", "bytes32", "bytes32", "bytes32", "uint64",
                                                               "uint64"]
    assert [i["name"] for i in abi["drawSeats"]["inputs"]] == ["job"]
    assert [i["name"] for i in abi["addSeat"]["inputs"]] == ["job"]
    assert not {"replaceProvider", "removeSeat", "replaceSeat"} & set(abi)
    _, job, _ = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 100, PRICE)
    pool = members(m, pool_of(m))
    # PREVRANDAO PUSH1 1 MSTORE PUSH1 33 PUSH0 RETURN: what a call at the pending block sees
    pending = bytes.fromhex(m.rpc("eth_call", [{"data": "0x4460015260215ff3"}, "pending"])[2:])[1:33]
    block_hash = bytes(m.chain.w3.eth.get_block(job.open_block)["hash"])
    guess = keccak(abi_encode(["bytes32", "bytes32", "bytes32"], [job.job_id, block_hash, pending]))
    snap = m.rpc("evm_snapshot")
    early, r_early = m.mc.draw_seats(m.consumer, job)
    assert m.rpc("evm_revert", [snap]) is True
    mine_blocks(m, 5)
    late, r_late = m.mc.draw_seats(m.outsider, job)
    assert early.seed != guess and late.seed != guess, "the seed was known before the draw's block"
    assert early.seed == seat_seed(m, job, r_early["blockNumber"]) and late.seed == seat_seed(m, job, r_late["blockNumber"])
    assert late.seed != early.seed
    for d in (early, late):
        assert seats_of(d) == mirror_draw(pool, d.seed, 3, exclude=[m.consumer.address], for_seat=True,
                                          price_cap=PRICE, max_tokens=100)
    with reverts("AlreadyDrawn"):  # drawn once: the drawn job cannot be drawn again...
        m.mc.draw_seats(m.consumer, late)
    with reverts("JobNotOpen"):  # ...and the undrawn tuple is no longer the job
        m.mc.draw_seats(m.consumer, job)


def test_only_an_externally_owned_account_draws(court):
    """A contract could draw, look at the seats and revert (a conditional draw, many tries a block):
    drawSeats, addSeat and drawJury refuse any caller that is not the transaction's origin. (So a
    consumer that is a contract opens, settles and disputes, but cannot add a seat.)"""
    m, w = court
    proxy = deploy_proxy(m)
    market, registry, token = m.chain.market, m.chain.registry, m.chain.token
    _, job, _ = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 100, PRICE)
    assert through(m, proxy, market, "drawSeats", [job.as_abi()]) == "DrawByContract"
    m.mc.draw_seats(m.outsider, job)
    # A contract consumer: it opens a job (an EOA draws it), and cannot add a seat.
    m.chain.transact(m.deployer, token.functions.mint(proxy, 10**9))
    assert through(m, proxy, token, "approve", [registry.address, 10**9]) is None
    assert through(m, proxy, market, "openJob", [0, MODEL, ZERO32, keccak(REQUEST), 100, PRICE]) is None
    opened = market.events.JobOpened().get_logs(from_block=m.chain.w3.eth.block_number)[0]
    contract_job, _ = m.mc.draw_seats(m.outsider, Job.from_event(opened["args"], opened["blockNumber"]))
    assert contract_job.consumer == proxy
    assert through(m, proxy, market, "addSeat", [contract_job.as_abi()]) == "DrawByContract"
    job2, c = contested(m, [A, A, B])
    dispute(m, job2, c, m.consumer)
    convene(m, w)
    assert through(m, proxy, market, "drawJury", [job2.as_abi(), c.as_abi()]) == "DrawByContract"
    assert len(draw_jury(m, job2, c)) == 3


def test_consumer_is_never_its_own_seat(market):
    m = market
    p0 = m.providers[0]
    approve(m, p0)
    job = open_job(m, consumer=p0)  # P0 opens a job in the pool it serves
    assert set(seats_of(job)) == {p.address for p in m.providers[1:]}
    pool = pool_of(m)
    for k in range(60):
        seed = keccak(b"consumer excluded %d" % k)
        picked = registry_draw(m, pool, seed, 3, exclude=[p0.address], for_seat=True, price_cap=PRICE,
                               max_tokens=100)
        assert p0.address not in picked and len(picked) == 3


def test_price_cap_excludes_dearer_providers(market):
    m = market
    dear = m.providers[3]
    m.mc.register(dear, MODEL, keccak(b"dearer"), PRICE + 1)
    job = open_job(m, price_cap=PRICE)
    assert set(seats_of(job)) == {p.address for p in m.providers[:3]}
    job2 = open_job(m, price_cap=PRICE + 1)
    prices = {p.address: (PRICE + 1 if p is dear else PRICE) for p in m.providers}
    assert list(job2.prices[:3]) == [prices[s] for s in seats_of(job2)]
    assert job2.held == 100 * (PRICE + 1) * 4


def test_not_enough_providers_takes_no_escrow(market):
    m = market
    for p in m.providers[2:]:
        m.mc.register(p, MODEL, keccak(b"dearer"), PRICE + 1)
    _, job, _ = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 100, PRICE)
    bal, credit = m.chain.balance(m.consumer.address), m.mc.credit(m.consumer.address)
    with reverts("NotEnoughProviders") as ctx:
        m.mc.draw_seats(m.consumer, job)
    assert ctx.error.error_args == (2, 3)
    assert m.chain.balance(m.consumer.address) == bal and m.mc.credit(m.consumer.address) == credit
    assert m.mc.is_open(job) and vault_gap(m) == 0
    with reverts("NotEnoughProviders"):  # another model's pool is empty
        m.open(group=keccak(b"nobody here"))


def test_a_seat_never_risks_more_than_a_quarter_of_its_free_stake(market):
    """Seat eligibility: lockFor(maxTokens, price) * maxLockShare <= free stake."""
    m = market
    small = m.providers[3]
    m.mc.request_unstake(small, STAKE - (4 * LOCK - 1))  # one base unit short
    pool = pool_of(m)
    for k in range(40):
        seed = keccak(b"lock share %d" % k)
        picked = registry_draw(m, pool, seed, 3, for_seat=True, price_cap=PRICE, max_tokens=100)
        assert small.address not in picked and len(picked) == 3
    job = open_job(m)
    assert small.address not in job.seats
    m.mc.stake(small, 1)  # exactly four locks free: eligible again
    members_now = members(m, pool)
    seen = 0
    for k in range(200):
        seed = keccak(b"lock share again %d" % k)
        picked = registry_draw(m, pool, seed, 3, for_seat=True, price_cap=PRICE, max_tokens=100)
        assert picked == mirror_draw(members_now, seed, 3, for_seat=True, price_cap=PRICE, max_tokens=100)
        seen += small.address in picked
    assert seen > 0


def test_draws_are_weighted_by_free_stake_up_to_the_weight_cap(market):
    """A statistical test over fixed seeds (so it is deterministic), checked draw by draw against
    the Python mirror: weights 100 : 50 : 25 : 100 MESH for stakes of 100, 50, 25 and 1000 MESH."""
    m = market
    stakes = [100 * MESH, 50 * MESH, 25 * MESH, STAKE]
    for p, s in zip(m.providers, stakes):
        if s < STAKE:
            m.mc.request_unstake(p, STAKE - s)
    pool = pool_of(m)
    now = members(m, pool)
    assert [f for _, _, f in now] == [min(s, 2**32 - 1) for s in stakes]
    n = 300
    counts = {p.address: 0 for p in m.providers}
    for k in range(n):
        seed = keccak(b"weights %d" % k)
        picked = registry_draw(m, pool, seed, 1)
        assert picked == mirror_draw(now, seed, 1)
        counts[picked[0]] += 1
    c = [counts[p.address] for p in m.providers]
    weights = [min(s, P.weight_cap) for s in stakes]
    for got, w in zip(c, weights):
        expected = n * w / sum(weights)
        sigma = (n * (w / sum(weights)) * (1 - w / sum(weights))) ** 0.5
        assert abs(got - expected) < 4 * sigma, (c, weights)
    # 10x the stake above the cap buys no weight: P3 (1000 MESH) and P0 (100 MESH) are drawn alike.
    assert abs(c[3] - c[0]) < 0.25 * c[0], c
    # The mirror over many more seeds: the shares converge on the weights.
    big = [0] * 4
    index = {p.address: i for i, p in enumerate(m.providers)}
    for k in range(10_000):
        big[index[mirror_draw(now, keccak(b"mirror %d" % k), 1)[0]]] += 1
    for got, w in zip(big, weights):
        assert abs(got / 10_000 - w / sum(weights)) < 0.02, big


def _draw_at_next_block(m, job: Job) -> tuple[int, dict | None, ContractReverted | None]:
    """Send a draw as a transaction (fixed gas: an estimate would run with another block's
    prevrandao): (its block, its receipt or None, the decoded error if it reverted)."""
    m.chain.fixed_gas = 2_000_000
    try:
        receipt = m.chain.transact(m.consumer, m.chain.market.functions.drawSeats(job.as_abi()))
        return receipt["blockNumber"], receipt, None
    except ContractReverted as exc:
        return m.chain.w3.eth.block_number, None, exc
    finally:
        m.chain.fixed_gas = None


def test_a_failed_draw_may_be_retried_in_a_later_block(market):
    """A draw looks at 64 candidates at most, each accepted with probability free stake / weightCap:
    in a pool of light providers it may find fewer than three, and reverts (nothing taken). Every
    block of the draw window brings another seed: the same request is drawn in a later block.
    (Three providers at 5 MESH: most draws fail.)"""
    m = market
    for p in m.providers[:3]:
        if p is not m.providers[0]:
            m.mc.invite(m.providers[0], MESH_GROUP, p.address)
        m.mc.register(p, MODEL, keccak(b"m"), PRICE, group=MESH_GROUP)
        m.mc.request_unstake(p, STAKE - 5 * MESH)
    light = members(m, pool_of(m, group=MESH_GROUP))

    def funds() -> int:  # wallet and credit: a draw takes its escrow from credit first
        return m.chain.balance(m.consumer.address) + m.mc.credit(m.consumer.address)

    bal = funds()
    for _ in range(12):
        _, job, _ = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 100, PRICE, group=MESH_GROUP)
        failures, drawn = [], None
        while m.chain.w3.eth.block_number < job.open_block + 8:
            block, receipt, err = _draw_at_next_block(m, job)
            if err is None:
                ev = m.mc._event(receipt, "SeatsDrawn")
                drawn = job.drawn(ev["seed"], ev["drawnAt"], ev["seats"], ev["prices"])
                break
            seed = seat_seed(m, job, block)
            found = mirror_draw(light, seed, 3, exclude=[m.consumer.address], for_seat=True, price_cap=PRICE,
                                max_tokens=100)
            assert err.name == "NotEnoughProviders" and err.error_args == (len(found), 3) and len(found) < 3
            assert funds() == bal and m.mc.is_open(job) and vault_gap(m) == 0
            failures.append(seed)
        if failures and drawn is not None:
            break
        if drawn is None:
            m.mc.expire(m.outsider, job)
        else:
            m.mc.settle(m.consumer, drawn, claims(m, drawn, [A, A, A]))
            bal = funds()
    else:
        raise AssertionError("test set-up: no request failed a draw and then drew in its window")
    assert drawn.seed not in failures and len(set(failures)) == len(failures)
    assert seats_of(drawn) == mirror_draw(light, drawn.seed, 3, exclude=[m.consumer.address], for_seat=True,
                                          price_cap=PRICE, max_tokens=100)
    assert funds() == bal - drawn.held


def test_zero_free_stake_is_never_drawn(market):
    m = market
    idle = add_provider(m, "registered, never staked", stake=0)
    pool = pool_of(m)
    for k in range(60):
        seed = keccak(b"idle %d" % k)
        assert idle.address not in registry_draw(m, pool, seed, 3)


def test_the_draw_window_is_eight_blocks_and_anyone_expires_the_job(market):
    m = market
    assert m.chain.market.functions.DRAW_WINDOW().call() == 8
    bal = m.chain.balance(m.consumer.address)
    _, job, _ = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 100, PRICE)
    mine_blocks(m, 7 - (m.chain.w3.eth.block_number - job.open_block))  # the next block is openBlock + 8
    assert m.chain.w3.eth.block_number == job.open_block + 7
    snap = m.rpc("evm_snapshot")
    drawn, r = m.mc.draw_seats(m.consumer, job)  # the last block of the window
    assert r["blockNumber"] == job.open_block + 8 and len(seats_of(drawn)) == 3
    assert m.rpc("evm_revert", [snap]) is True
    with reverts("TooEarly") as ctx:
        m.mc.expire(m.outsider, job)
    assert ctx.error.error_args == (job.open_block + 9,)
    mine_blocks(m, 1)  # the next block is openBlock + 9
    with reverts("DrawExpired") as ctx:
        m.mc.draw_seats(m.consumer, job)
    assert ctx.error.error_args == (job.open_block,)
    ev = m.mc.settled_event(m.mc.expire(m.outsider, job))
    assert ev["outcome"] == OUTCOME_REFUNDED and ev["refund"] == 0 and list(ev["paid"]) == [0] * 5
    assert m.mc.job_slot(job) == CLOSED and m.chain.balance(m.consumer.address) == bal
    with reverts("JobNotOpen"):
        m.mc.draw_seats(m.consumer, job)
    assert vault_gap(m) == 0


def test_a_drawn_job_never_expires(market):
    m = market
    job = open_job(m)
    mine_blocks(m, 300)
    with reverts("AlreadyDrawn"):
        m.mc.expire(m.outsider, job)


# ############################################################################# slots

def test_slots_busy_bounded_and_exhausted(market):
    m = market
    m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 10, PRICE, slot=5)
    with reverts("SlotBusy") as ctx:
        m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 10, PRICE, slot=5)
    assert ctx.error.error_args == (5,)
    with reverts("SlotBusy") as ctx:
        m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 10, PRICE, slot=16)
    assert ctx.error.error_args == (16,)
    for _ in range(15):
        m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 10, PRICE)
    assert all(h not in (ZERO32, CLOSED) for h in m.chain.market.functions.slotsOf(m.consumer.address).call())
    with pytest.raises(ChainError):
        m.mc.free_slot(m.consumer.address)
    for slot in (0, 15):
        with reverts("SlotBusy"):
            m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 10, PRICE, slot=slot)
    # Slots are per consumer: another consumer is not affected.
    m.mc.open_job(m.consumer2, MODEL, keccak(REQUEST), 10, PRICE, slot=5)


def test_slot_reused_after_close_and_job_ids_never_reused(market):
    m = market
    ids = set()
    j1 = open_job(m, slot=7)
    ids.add(j1.job_id)
    settle(m, j1, [A, A, A])
    assert m.mc.job_slot(j1) == CLOSED
    j2 = open_job(m, slot=7)
    ids.add(j2.job_id)
    _, j3, _ = m.mc.open_job(m.consumer2, MODEL, keccak(REQUEST), 100, PRICE, slot=7)
    ids.add(j3.job_id)
    assert len(ids) == 3
    for j in (j1, j2, j3):
        assert j.job_id == job_id_for(j.consumer, j.open_block, j.slot)
    with reverts("JobNotOpen"):  # the closed job's tuple opens nothing
        m.mc.settle(m.consumer, j1, claims(m, j1, [A, A, A]))
    settle(m, j2, [A, A, A])
    assert vault_gap(m) == 0


def test_double_settle_refused(market):
    m = market
    job = open_job(m)
    results = claims(m, job, [A, A, A])
    m.mc.settle(m.consumer, job, results)
    with reverts("JobNotOpen"):
        m.mc.settle(m.consumer, job, results)


def test_tampered_job_parameters_refused(market):
    m = market
    job = open_job(m)
    results = claims(m, job, [A, A, A])
    for change in ({"prices": (1, 1, 1, 0, 0)}, {"max_tokens": 99}, {"seed": keccak(b"x")},
                   {"drawn_at": job.drawn_at + 1}, {"price_cap": PRICE + 1}, {"slot": (job.slot + 1) % 16},
                   {"seats": (job.seats[1], job.seats[0], *job.seats[2:])}):
        with reverts("JobNotOpen"):
            m.mc.settle(m.consumer, job.model_copy(update=change), results)
    m.mc.settle(m.consumer, job, results)


# ############################################################################# escrow

def test_draw_takes_exactly_four_shares_credit_first_then_transfer(market):
    m = market
    c = m.consumer
    reg = m.chain.registry.address
    bal = m.chain.balance(c.address)
    open_job(m, max_tokens=123)
    assert m.chain.balance(c.address) == bal - 123 * PRICE * 4 and m.mc.credit(c.address) == 0
    m.mc.deposit(c, 10_000)
    bal = m.chain.balance(c.address)
    open_job(m, max_tokens=100)  # from credit alone: no transfer
    assert m.chain.balance(c.address) == bal and m.mc.credit(c.address) == 10_000 - 4000
    m.mc.withdraw_credit(c)
    m.mc.deposit(c, 1500)
    bal, allowance = m.chain.balance(c.address), m.chain.allowance(c.address, reg)
    open_job(m, max_tokens=100)  # 1500 from credit, the other 2500 by transferFrom
    assert m.mc.credit(c.address) == 0 and m.chain.balance(c.address) == bal - 2500
    assert m.chain.allowance(c.address, reg) == allowance - 2500
    assert vault_gap(m) == 123 * PRICE * 4 + 4000 + 4000


def test_insufficient_allowance_decoded(market):
    m = market
    m.chain.transact(m.outsider, m.chain.token.functions.approve(m.chain.registry.address, 5))
    _, job, _ = m.mc.open_job(m.outsider, MODEL, keccak(REQUEST), 100, PRICE, approve=False)
    with reverts("ERC20InsufficientAllowance") as ctx:
        m.mc.draw_seats(m.outsider, job)
    assert ctx.error.error_args == (m.chain.registry.address, 5, 4000)
    assert "approve" in str(ctx.error)


# ############################################################################# addSeat

def test_add_seat_draws_one_more_and_escrows_one_share(market):
    m = market
    job = open_job(m, max_tokens=100)
    bal = m.chain.balance(m.consumer.address)
    rest = {p.address for p in m.providers} - set(seats_of(job))
    grown, index, receipt = m.mc.add_seat(m.consumer, job)
    ev = m.mc._event(receipt, "SeatAdded")
    assert index == 3 and grown.seats[3] in rest and ev["provider"] == grown.seats[3] and ev["price"] == PRICE
    assert grown.seats[:3] == job.seats[:3] and grown.seed == job.seed
    assert m.chain.balance(m.consumer.address) == bal - 1000 and grown.held == 5000
    assert vault_gap(m) == 5000
    ev = m.mc.settled_event(settle(m, grown, [A, A, A, A]))
    assert list(ev["paid"]) == [400] * 4 + [0] and ev["refund"] == 5000 - 1600
    assert vault_gap(m) == 0


def test_added_seats_follow_the_seed(market):
    """Seat n is drawn like the first three, with keccak256(abi.encode(seed, n, prevrandao)) of the
    block that adds it (the job's seed alone is known from the draw on: the pool could be arranged
    for it)."""
    m = market
    extra = [add_provider(m, f"fifth {i}") for i in range(3)]
    job = open_job(m, max_tokens=100)
    pool = pool_of(m)
    for n in (3, 4):
        now = members(m, pool)
        job, index, receipt = m.mc.add_seat(m.consumer, job)
        mix = int.from_bytes(prevrandao(m, receipt["blockNumber"]), "big")
        seed = keccak(abi_encode(["bytes32", "uint256", "uint256"], [job.seed, n, mix]))
        expected = mirror_draw(now, seed, 1, exclude=[*seats_of(job)[:n], m.consumer.address], for_seat=True,
                               price_cap=PRICE, max_tokens=100)
        assert index == n and [job.seats[n]] == expected
    assert len(set(seats_of(job))) == 5 and vault_gap(m, *extra) == 6000


def test_add_seat_rules(market):
    m = market
    _, undrawn, _ = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 100, PRICE)
    with reverts("NotDrawn"):
        m.mc.add_seat(m.consumer, undrawn)
    job = open_job(m)
    with reverts("NotConsumer"):
        m.mc.add_seat(m.outsider, job)
    job4, _, _ = m.mc.add_seat(m.consumer, job)
    assert set(seats_of(job4)) == {p.address for p in m.providers}
    with reverts("NotEnoughProviders") as ctx:  # every member of the pool already sits
        m.mc.add_seat(m.consumer, job4)
    assert ctx.error.error_args == (0, 1)
    fifth = add_provider(m, "fifth")
    job5, index, _ = m.mc.add_seat(m.consumer, job4)
    assert index == 4 and job5.seats[4] == fifth.address
    sixth = add_provider(m, "sixth")
    with reverts("SeatsFull"):
        m.mc.add_seat(m.consumer, job5)
    assert vault_gap(m, fifth, sixth) == 6000


def test_no_seat_is_ever_removed(market):
    m = market
    job = open_job(m)
    grown, _, _ = m.mc.add_seat(m.consumer, job)
    with reverts("JobNotOpen"):  # the three-seat tuple is gone
        m.mc.settle(m.consumer, job, claims(m, job, [A, A, A]))
    with reverts("MissingResult") as ctx:  # the added seat must answer, or wait for claimEnd
        settle(m, grown, [A, A, A, None])
    assert ctx.error.error_args == (3,)
    m.set_next_timestamp(claim_end(grown))
    ev = m.mc.settled_event(settle(m, grown, [A, A, A, None]))
    assert list(ev["paid"]) == [400, 400, 400, 0, 0] and ev["refund"] == 5000 - 1200


def test_add_seat_closes_at_the_delivery_deadline(market):
    m = market
    job = open_job(m)
    add_provider(m, "fifth")
    m.set_next_timestamp(delivery_end(job) - 1)
    grown, _, _ = m.mc.add_seat(m.consumer, job)
    m.set_next_timestamp(delivery_end(job))
    with reverts("TooLate") as ctx:
        m.mc.add_seat(m.consumer, grown)
    assert ctx.error.error_args == (delivery_end(job),)


# ############################################################################# settle: who, when, missing results

def test_only_the_consumer_settles(market):
    m = market
    job = open_job(m)
    with reverts("NotConsumer"):
        m.mc.settle(m.consumer2, job, claims(m, job, [A, A, A]))


def test_settle_before_the_draw_refused(market):
    m = market
    _, job, _ = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 100, PRICE)
    with reverts("NotDrawn"):
        m.mc.settle(m.consumer, job, [])


def test_settle_deadline_is_reveal_end(market):
    m = market
    job = open_job(m)
    snap = m.rpc("evm_snapshot")
    m.set_next_timestamp(reveal_end(job) - 1)
    settle(m, job, [A, A, A])
    assert m.rpc("evm_revert", [snap]) is True
    m.set_next_timestamp(reveal_end(job))
    with reverts("TooLate") as ctx:
        settle(m, job, [A, A, A])
    assert ctx.error.error_args == (reveal_end(job),)


def test_missing_result_refused_until_claim_end(market):
    m = market
    job = open_job(m, max_tokens=100)
    silent = job.seats[2]
    m.set_next_timestamp(claim_end(job) - 1)
    with reverts("MissingResult") as ctx:
        settle(m, job, [A, A, None])
    assert ctx.error.error_args == (2,)
    m.set_next_timestamp(claim_end(job))
    ev = m.mc.settled_event(m.mc.settle(m.consumer, job, claims(m, job, [A, A])))  # past the array: missing
    # The silent seat: unpaid, not slashed, its share refunded; the two agreeing seats paid at once.
    assert ev["outcome"] == OUTCOME_AGREED and ev["present"] == 0b011
    assert list(ev["paid"]) == [400, 400, 0, 0, 0] and ev["slashMask"] == 0 and ev["refund"] == 4000 - 800
    assert account(m, silent)["stake"] == STAKE and account(m, silent)["locked"] == 0
    assert vault_gap(m) == 0


def test_a_committed_seat_cannot_be_left_out(market):
    m = market
    job = open_job(m, max_tokens=100)
    s2 = acct_of(job.seats[2])
    m.set_next_timestamp(delivery_end(job))
    m.mc.commit(s2, job, 2, commitment(job.job_id, 2, s2.address, A.hash, A.count, keccak(b"s")))
    m.set_next_timestamp(claim_end(job))
    with reverts("AlreadyCommitted") as ctx:
        settle(m, job, [A, A, None])
    assert ctx.error.error_args == (2,)
    ev = m.mc.settled_event(settle(m, job, [A, A, A]))  # with its signed result it settles
    assert list(ev["paid"])[:3] == [400] * 3


def test_consumer_reclaims_everything_when_nobody_delivers(market):
    m = market
    job = open_job(m, max_tokens=100)
    m.set_next_timestamp(claim_end(job))
    ev = m.mc.settled_event(settle(m, job, [None, None, None]))
    assert ev["outcome"] == OUTCOME_REFUNDED and ev["refund"] == job.held
    assert m.mc.credit(m.consumer.address) == job.held and vault_gap(m) == 0


def test_a_single_valid_result_is_contested(market):
    m = market
    job = open_job(m, max_tokens=100)
    m.set_next_timestamp(claim_end(job))
    c = contest_of(m, settle(m, job, [None, A, None]))
    assert c.present == 0b010 and c.provisional == 0 and c.locks == (0, LOCK, 0, 0, 0)
    assert [account(m, s)["locked"] for s in seats_of(job)] == [0, LOCK, 0]


# ############################################################################# commit / reveal / finalize

def test_commit_window_and_rules(market):
    m = market
    job = open_job(m)
    s0, s1 = acct_of(job.seats[0]), acct_of(job.seats[1])
    good = commitment(job.job_id, 0, s0.address, A.hash, A.count, keccak(b"s"))
    m.set_next_timestamp(delivery_end(job) - 1)
    with reverts("TooEarly") as ctx:
        m.mc.commit(s0, job, 0, good)
    assert ctx.error.error_args == (delivery_end(job),)
    m.set_next_timestamp(delivery_end(job))
    with reverts("NotSeat") as ctx:
        m.mc.commit(s1, job, 0, good)
    assert ctx.error.error_args == (0,)
    with reverts("BadSeat"):
        m.mc.commit(s0, job, 3, good)
    with reverts("BadSeat"):
        m.mc.commit(s0, job, 7, good)
    with reverts("ZeroCommitment"):
        m.mc.commit(s0, job, 0, ZERO32)
    m.mc.commit(s0, job, 0, good)
    with reverts("AlreadyCommitted"):
        m.mc.commit(s0, job, 0, keccak(b"another"))
    assert m.chain.market.functions.commitments(job.job_id).call()[0] == good
    m.set_next_timestamp(claim_end(job))
    with reverts("TooLate") as ctx:  # nobody commits after reveals could have started
        m.mc.commit(s1, job, 1, commitment(job.job_id, 1, s1.address, A.hash, A.count, keccak(b"s")))
    assert ctx.error.error_args == (claim_end(job),)


def test_reveal_window_and_rules(market):
    m = market
    job = open_job(m)
    s0, s1 = acct_of(job.seats[0]), acct_of(job.seats[1])
    salt = keccak(b"salt")
    m.set_next_timestamp(delivery_end(job))
    m.mc.commit(s0, job, 0, commitment(job.job_id, 0, s0.address, A.hash, A.count, salt))
    m.set_next_timestamp(claim_end(job) - 1)
    with reverts("TooEarly") as ctx:
        m.mc.reveal(s0, job, 0, A.hash, A.count, salt)
    assert ctx.error.error_args == (claim_end(job),)
    m.set_next_timestamp(claim_end(job))
    with reverts("NoCommitment"):
        m.mc.reveal(s1, job, 1, A.hash, A.count, salt)
    with reverts("CommitmentMismatch"):
        m.mc.reveal(s0, job, 0, A.hash, A.count + 1, salt)
    with reverts("CommitmentMismatch"):
        m.mc.reveal(s0, job, 0, A.hash, A.count, keccak(b"other salt"))
    m.mc.reveal(m.outsider, job, 0, A.hash, A.count, salt)  # anyone may send it: it is bound to the seat
    with reverts("AlreadyRevealed"):
        m.mc.reveal(s0, job, 0, A.hash, A.count, salt)
    r = m.chain.market.functions.reveals(job.job_id).call()[0]
    assert (bytes(r[0]), r[1], r[2]) == (A.hash, A.count, True)
    m.set_next_timestamp(reveal_end(job))
    with reverts("TooLate") as ctx:
        m.mc.reveal(s0, job, 0, A.hash, A.count, salt)
    assert ctx.error.error_args == (reveal_end(job),)


def test_copied_commitment_never_reveals(market):
    """A lazy seat copies an honest seat's commitment: it can never open it, and it is slashed."""
    m = market
    s0_supply = supply(m)
    job = open_job(m, max_tokens=100)
    honest, copier = acct_of(job.seats[0]), acct_of(job.seats[1])
    salt = keccak(b"honest salt")
    c = commitment(job.job_id, 0, honest.address, A.hash, A.count, salt)
    m.set_next_timestamp(delivery_end(job))
    m.mc.commit(honest, job, 0, c)
    m.mc.commit(copier, job, 1, c)
    m.set_next_timestamp(claim_end(job))
    m.mc.reveal(honest, job, 0, A.hash, A.count, salt)
    for seat in (0, 1):  # even knowing the revealed values and the salt, under either seat
        with reverts("CommitmentMismatch" if seat == 1 else "AlreadyRevealed"):
            m.mc.reveal(copier, job, 1 if seat == 1 else 0, A.hash, A.count, salt)
    m.set_next_timestamp(reveal_end(job))
    contest = contest_of(m, m.mc.finalize(m.outsider, job))
    # One valid result is no majority; the copier committed and never revealed: slashed.
    assert contest.present == 0b001 and contest.slashed == 0b010 and contest.provisional == 0
    m.set_next_timestamp(contest.contested_at + P.dispute_window)
    ev = m.mc.settled_event(m.mc.resolve(m.outsider, job, contest))
    assert list(ev["paid"]) == [0] * 5 and ev["slashMask"] == 0b010
    assert account(m, copier)["stake"] == STAKE - LOCK and supply(m) == s0_supply - LOCK
    assert vault_gap(m) == 0


def test_commitment_is_bound_to_seat_and_provider(market):
    m = market
    job = open_job(m)
    s0, s1 = acct_of(job.seats[0]), acct_of(job.seats[1])
    salt = keccak(b"salt")
    m.set_next_timestamp(delivery_end(job))
    m.mc.commit(s0, job, 0, commitment(job.job_id, 1, s0.address, A.hash, A.count, salt))  # wrong seat inside
    m.mc.commit(s1, job, 1, commitment(job.job_id, 1, s0.address, A.hash, A.count, salt))  # wrong provider inside
    m.set_next_timestamp(claim_end(job))
    with reverts("CommitmentMismatch"):
        m.mc.reveal(s0, job, 0, A.hash, A.count, salt)
    with reverts("CommitmentMismatch"):
        m.mc.reveal(s1, job, 1, A.hash, A.count, salt)


def test_finalize_from_claim_end_when_nobody_committed(market):
    m = market
    _, undrawn, _ = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 100, PRICE)
    with reverts("NotDrawn"):
        m.mc.finalize(m.outsider, undrawn)
    job = open_job(m)
    m.set_next_timestamp(claim_end(job) - 1)
    with reverts("TooEarly") as ctx:
        m.mc.finalize(m.outsider, job)
    assert ctx.error.error_args == (claim_end(job),)
    m.set_next_timestamp(claim_end(job))
    ev = m.mc.settled_event(m.mc.finalize(m.outsider, job))
    assert ev["outcome"] == OUTCOME_REFUNDED and ev["refund"] == job.held
    assert m.mc.credit(m.consumer.address) == job.held and vault_gap(m) == 0


def test_double_finalize_refused(market):
    m = market
    job = open_job(m)
    m.set_next_timestamp(claim_end(job))
    m.mc.finalize(m.outsider, job)
    with reverts("JobNotOpen"):
        m.mc.finalize(m.outsider, job)


def _commit_all(m, job, outs, salts):
    m.set_next_timestamp(delivery_end(job))
    for i, o in enumerate(outs):
        if o is not None:
            s = acct_of(job.seats[i])
            m.mc.commit(s, job, i, commitment(job.job_id, i, s.address, o.hash, o.count, salts[i]))


def test_consumer_walks_away_seats_paid_by_commit_reveal(market):
    m = market
    job = open_job(m, max_tokens=100)
    salts = [keccak(b"salt %d" % i) for i in range(3)]
    _commit_all(m, job, [A, A, A], salts)
    m.set_next_timestamp(claim_end(job))
    with reverts("TooEarly") as ctx:  # a seat committed: finalize waits for the reveals
        m.mc.finalize(m.outsider, job)
    assert ctx.error.error_args == (reveal_end(job),)
    for i in range(3):
        m.mc.reveal(m.outsider, job, i, A.hash, A.count, salts[i])
    m.set_next_timestamp(reveal_end(job) - 1)
    with reverts("TooEarly"):
        m.mc.finalize(m.outsider, job)
    m.set_next_timestamp(reveal_end(job))
    ev = m.mc.settled_event(m.mc.finalize(m.outsider, job))
    assert ev["outcome"] == OUTCOME_AGREED and list(ev["paid"]) == [400] * 3 + [0, 0]
    assert ev["slashMask"] == 0 and ev["refund"] == 4000 - 1200
    assert m.chain.market.functions.commitments(job.job_id).call() == [ZERO32] * 5  # cleaned up
    assert vault_gap(m) == 0


def test_revealed_disagreement_is_contested(market):
    m = market
    job = open_job(m, max_tokens=100)
    salts = [keccak(b"salt %d" % i) for i in range(3)]
    _commit_all(m, job, [A, A, B], salts)
    m.set_next_timestamp(claim_end(job))
    for i, o in enumerate([A, A, B]):
        m.mc.reveal(m.outsider, job, i, o.hash, o.count, salts[i])
    m.set_next_timestamp(reveal_end(job))
    c = contest_of(m, m.mc.finalize(m.outsider, job))
    assert c.present == 0b111 and c.provisional == 0b011 and c.slashed == 0 and c.locks[:3] == (LOCK,) * 3


def test_commit_without_reveal_is_slashed_no_free_veto(market):
    """A seat commits (so the consumer cannot leave it out), then never reveals. The other two
    reveal and are paid; the withholder loses its lock."""
    m = market
    s0_supply = supply(m)
    job = open_job(m, max_tokens=100)
    salts = [keccak(b"s%d" % i) for i in range(3)]
    _commit_all(m, job, [A, A, A], salts)
    withholder = job.seats[0]
    m.set_next_timestamp(claim_end(job))
    with reverts("AlreadyCommitted"):
        settle(m, job, [None, A, A])
    for i in (1, 2):
        m.mc.reveal(m.outsider, job, i, A.hash, A.count, salts[i])
    m.set_next_timestamp(reveal_end(job))
    ev = m.mc.settled_event(m.mc.finalize(m.outsider, job))
    assert ev["outcome"] == OUTCOME_AGREED and list(ev["paid"]) == [0, 400, 400, 0, 0]
    assert ev["slashMask"] == 0b001 and ev["refund"] == 4000 - 800
    assert account(m, withholder)["stake"] == STAKE - LOCK and supply(m) == s0_supply - LOCK
    assert vault_gap(m) == 0


def test_consumer_may_still_settle_while_seats_reveal(market):
    m = market
    job = open_job(m, max_tokens=100)
    salts = [keccak(b"s%d" % i) for i in range(3)]
    _commit_all(m, job, [A, A, A], salts)
    m.set_next_timestamp(claim_end(job))
    m.mc.reveal(m.outsider, job, 0, A.hash, A.count, salts[0])
    ev = m.mc.settled_event(settle(m, job, [A, A, A]))
    assert list(ev["paid"])[:3] == [400] * 3
    with reverts("JobNotOpen"):
        m.mc.finalize(m.outsider, job)


# ############################################################################# contest

def test_disagreement_takes_locks_and_names_a_provisional_majority(market):
    m = market
    job = open_job(m, max_tokens=100)
    receipt = settle(m, job, [A, A, B])
    c = contest_of(m, receipt)
    assert c.outputs[:3] == (A.hash, A.hash, B.hash) and c.counts[:3] == (40, 40, 40)
    assert c.present == 0b111 and c.slashed == 0 and c.provisional == 0b011 and c.locks == (LOCK,) * 3 + (0, 0)
    assert c.contested_at == m.chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    for s in seats_of(job):
        a = account(m, s)
        assert a["locked"] == LOCK and a["stake"] == STAKE
        assert m.chain.registry.functions.freeStake(s).call() == STAKE - LOCK
    assert m.mc.job_slot(job) == contested_hash(job, c)
    with reverts("JobNotOpen"):  # the open-job entry points no longer accept it
        settle(m, job, [A, A, A])
    with reverts("JobNotOpen"):
        m.mc.resolve(m.outsider, job, Contest(**{**c.__dict__, "provisional": 0b111}))
    assert m.mc.credit(m.consumer.address) == 0 and vault_gap(m) == job.held


def test_market_client_recognises_a_contested_job(market):
    """mesh.market: the Contest read from JobContested, Contest.slot_hash and
    MarketClient.is_contested / is_closed must match what the market stores for a contested job:
    keccak256(abi.encode(jobHash, contest)), the static Contest encoded in place."""
    m = market
    job = open_job(m)
    receipt = settle(m, job, [A, A, B])
    c = m.mc.contest_of(receipt)
    assert c.present == 0b111 and c.provisional == 0b011
    assert m.mc.job_slot(job) == contested_hash(job, c)
    assert c.slot_hash(job) == contested_hash(job, c), \
        "Contest.slot_hash hashes keccak256(contest encoding) instead of the encoding itself"
    assert m.mc.is_contested(job, c) and not m.mc.is_closed(job, c)


def test_tie_has_no_provisional_majority(market):
    m = market
    job = open_job(m)
    job, _, _ = m.mc.add_seat(m.consumer, job)
    c = contest_of(m, settle(m, job, [A, B, A, B]))
    assert c.present == 0b1111 and c.provisional == 0
    job2 = open_job(m)
    c2 = contest_of(m, settle(m, job2, [A, B, C]))
    assert c2.provisional == 0 and c2.locks[:3] == (LOCK,) * 3


def test_a_plurality_that_is_no_strict_majority_is_not_provisional(market):
    """PROTOCOL.md: `provisional` is the STRICT majority of two or more equal valid results. Two of
    four valid results (A, A, B, C) are a plurality, not a majority: nobody is provisional."""
    m = market
    job = open_job(m)
    job, _, _ = m.mc.add_seat(m.consumer, job)
    c = contest_of(m, settle(m, job, [A, A, B, C]))
    assert c.present == 0b1111
    assert c.provisional == 0, f"2 of 4 valid results were made provisional: mask {c.provisional:#06b}"


def _short_seat(m, contested_before: int = 4):
    """A private group of three: two providers at STAKE and one (SHORT) staked 4.5 locks of a
    1,250-token job at a price of 10,000 (lock 25 MESH; full draw weight, nothing thawing). Five
    jobs are drawn (each seats the three), the first `contested_before` contested: SHORT then has
    half a lock free for the last job. Returns (the last job, SHORT's seat in it)."""
    lock = P.lock_for(1250, 10_000)
    admin = add_provider(m, "short-lock admin", price=10_000, group=MESH_GROUP)
    other = add_provider(m, "short-lock other", price=10_000, group=MESH_GROUP, admin=admin)
    short = add_provider(m, "short-lock short", stake=4 * lock + lock // 2, price=10_000, group=MESH_GROUP,
                         admin=admin)
    jobs = [open_job(m, max_tokens=1250, price_cap=10_000, group=MESH_GROUP) for _ in range(contested_before + 1)]
    for job in jobs[:-1]:
        settle(m, job, [output("x", 40), output("x", 40), output("y", 40)])
    job = jobs[-1]
    assert account(m, short)["locked"] == 4 * lock and m.chain.registry.functions.freeStake(short.address).call() \
        == lock // 2, "test set-up"
    assert other.address in job.seats and admin.address in job.seats
    return job, job.seat_of(short.address), short, lock


def test_partial_lock_makes_a_seat_non_provisional(market):
    """A seat in many contested jobs at once may come up short: it locks what is free, and a seat
    that could not back its full lock is never paid provisionally (it must be judged)."""
    m = market
    job, k, short, lock = _short_seat(m)
    other = next(i for i in range(3) if i != k)
    outs = [output("x", 40)] * 3
    outs[3 - k - other] = output("y", 40)  # the third seat dissents: short and `other` are the pair
    c = contest_of(m, settle(m, job, outs))
    assert c.locks[k] == lock // 2 and all(c.locks[i] == lock for i in range(3) if i != k)
    assert c.provisional & (1 << k) == 0
    assert account(m, short)["locked"] == 4 * lock + lock // 2 and m.chain.registry.functions.freeStake(
        short.address).call() == 0


def test_a_majority_short_of_full_locks_is_no_majority(market):
    """PROTOCOL.md: `provisional` is the strict majority of two or more equal valid results WHOSE
    FULL LOCK COULD BE TAKEN (else nobody). A pair of which one seat is short is not two such results."""
    m = market
    job, k, short, lock = _short_seat(m)
    other = next(i for i in range(3) if i != k)
    outs = [output("x", 40)] * 3
    outs[3 - k - other] = output("y", 40)
    c = contest_of(m, settle(m, job, outs))
    assert c.provisional == 0, f"one fully locked seat of a pair was made provisional alone: {c.provisional:#05b}"


def test_a_lock_is_backed_by_stake_put_to_thaw_after_the_draw(market):
    """Nothing is locked by a draw, so a seat could move all its stake to thawing right after it is
    drawn. When its job is contested, the thawing stake comes back to back its lock (ThawReclaimed):
    it is then provisional like any seat, and a jury's slash burns the full lock."""
    m = market
    job = open_job(m, max_tokens=100)
    runner = acct_of(job.seats[2])
    m.mc.request_unstake(runner, STAKE)  # everything to thawing
    assert account(m, runner)["stake"] == 0 and account(m, runner)["thawing"] == STAKE
    receipt = settle(m, job, [A, B, B])
    c = contest_of(m, receipt)
    ev = m.chain.registry.events.ThawReclaimed().process_receipt(receipt, errors=DISCARD)
    assert [(e["args"]["provider"], e["args"]["amount"]) for e in ev] == [(runner.address, LOCK)]
    assert c.locks[:3] == (LOCK,) * 3 and c.provisional == 0b110
    a = account(m, runner)
    assert a["stake"] == LOCK == a["locked"] and a["thawing"] == STAKE - LOCK
    # Nobody disputes: the provisional pair is paid, and the lock is released as free stake.
    m.set_next_timestamp(c.contested_at + P.dispute_window)
    m.mc.resolve(m.outsider, job, c)
    a = account(m, runner)
    assert a["stake"] == LOCK and a["locked"] == 0 and a["thawing"] == STAKE - LOCK and a["owed"] == 400
    assert vault_gap(m) == 0


def test_a_thaw_backs_only_what_free_stake_lacks(court):
    """A seat with half a lock free and more thawing takes back only the other half; a seat with
    its lock free takes back nothing; a jury then burns the full lock."""
    m, w = court
    job = open_job(m, max_tokens=100, group=GROUP)
    half = acct_of(job.seats[2])
    m.mc.request_unstake(half, STAKE - LOCK // 2)
    m.mc.request_unstake(acct_of(job.seats[0]), LOCK)  # thawing too, but its lock is free: nothing taken back
    receipt = settle(m, job, [A, A, B])
    c = contest_of(m, receipt)
    ev = m.chain.registry.events.ThawReclaimed().process_receipt(receipt, errors=DISCARD)
    assert [(e["args"]["provider"], e["args"]["amount"]) for e in ev] == [(half.address, LOCK - LOCK // 2)]
    assert c.locks[:3] == (LOCK,) * 3
    s0 = supply(m)
    dispute(m, job, c, m.consumer)
    convene(m, w)
    jurors = draw_jury(m, job, c)
    post_all_evidence(m, job, c, [A, A, B])
    vote(m, job, {j: pack_verdicts({2: HARD}) for j in jurors})
    ev = m.mc.settled_event(m.mc.resolve(m.outsider, job, c))
    assert ev["slashMask"] == 0b100 and supply(m) == s0 - LOCK
    a = account(m, half)
    assert a["stake"] == 0 and a["locked"] == 0 and a["thawing"] == STAKE - LOCK, a
    assert vault_gap(m) == 0


# ############################################################################# resolve without a dispute

def test_resolve_without_dispute_pays_the_provisional_majority(market):
    m = market
    s0 = supply(m)
    job = open_job(m, max_tokens=100)
    dissenter = job.seats[2]
    c = contest_of(m, settle(m, job, [A, A, B]))
    m.set_next_timestamp(c.contested_at + P.dispute_window - 1)
    with reverts("TooEarly") as ctx:
        m.mc.resolve(m.outsider, job, c)
    assert ctx.error.error_args == (c.contested_at + P.dispute_window,)
    m.set_next_timestamp(c.contested_at + P.dispute_window)
    receipt = m.mc.resolve(m.outsider, job, c)
    ev = m.mc.settled_event(receipt)
    assert ev["outcome"] == OUTCOME_PROVISIONAL and list(ev["paid"]) == [400, 400, 0, 0, 0]
    assert ev["slashMask"] == 0 and ev["refund"] == 4000 - 800
    assert not m.chain.market.events.JuryPaid().process_receipt(receipt, errors=DISCARD)
    # Nobody is slashed for disagreeing; every lock is released.
    assert account(m, dissenter)["stake"] == STAKE and account(m, dissenter)["owed"] == 0
    assert [account(m, s)["locked"] for s in seats_of(job)] == [0, 0, 0] and supply(m) == s0
    assert m.mc.job_slot(job) == CLOSED and vault_gap(m) == 0


def test_resolve_without_a_majority_refunds_everything(market):
    m = market
    job = open_job(m, max_tokens=100)
    c = contest_of(m, settle(m, job, [A, B, C]))
    m.set_next_timestamp(c.contested_at + P.dispute_window)
    ev = m.mc.settled_event(m.mc.resolve(m.outsider, job, c))
    assert ev["outcome"] == OUTCOME_PROVISIONAL and list(ev["paid"]) == [0] * 5 and ev["refund"] == job.held
    assert [account(m, s)["stake"] for s in seats_of(job)] == [STAKE] * 3 and vault_gap(m) == 0


def test_a_provable_liar_in_a_contest_is_slashed_at_resolve(market):
    m = market
    s0 = supply(m)
    job = open_job(m, max_tokens=100)
    c = contest_of(m, settle(m, job, [A, B, (C.hash, 101)]))
    assert c.present == 0b011 and c.slashed == 0b100 and c.provisional == 0 and c.locks[:3] == (LOCK,) * 3
    m.set_next_timestamp(c.contested_at + P.dispute_window)
    ev = m.mc.settled_event(m.mc.resolve(m.outsider, job, c))
    assert ev["slashMask"] == 0b100 and list(ev["paid"]) == [0] * 5 and ev["refund"] == job.held
    assert account(m, job.seats[2])["stake"] == STAKE - LOCK and supply(m) == s0 - LOCK
    assert vault_gap(m) == 0


def test_locked_stake_cannot_be_requested_out(market):
    m = market
    job = open_job(m, max_tokens=100)
    settle(m, job, [A, A, B])
    p = acct_of(job.seats[2])
    with reverts("InsufficientFreeStake") as ctx:
        m.mc.request_unstake(p, STAKE - LOCK + 1)
    assert ctx.error.error_args == (p.address, STAKE - LOCK, STAKE - LOCK + 1)


def test_unstaking_after_the_draw_cannot_dodge_a_slash(market):
    """Successor of v1's test_unstaking_cannot_dodge_a_slash. Nothing is locked by a draw, so a
    seat can move all its stake to thawing right after it is drawn, then sign a provable lie
    (tokenCount > maxTokens). PROPERTY (PROTOCOL.md: "a provable lie ... is slashed whatever else
    happens"): it still loses its full lock."""
    m = market
    job = open_job(m, max_tokens=100)
    liar = acct_of(job.seats[2])
    m.mc.request_unstake(liar, STAKE)  # everything to thawing, before the job settles
    s0 = supply(m)
    ev = m.mc.settled_event(settle(m, job, [A, A, (A.hash, 101)]))
    assert ev["slashMask"] == 0b100
    lost = STAKE - account(m, liar)["stake"] - account(m, liar)["thawing"]
    assert lost == LOCK and supply(m) == s0 - LOCK, \
        f"the liar lost {lost} of its {LOCK} lock (stake {account(m, liar)['stake']}, " \
        f"thawing {account(m, liar)['thawing']})"


# ############################################################################# the court: dispute

def test_only_parties_may_dispute(court):
    m, w = court
    job, c = contested(m, [A, B, (C.hash, 101)])  # seat 2 lied provably: not present, not a party
    approve(m, m.outsider, m.consumer2, acct_of(job.seats[2]))
    for who in (m.outsider, m.consumer2, acct_of(job.seats[2])):
        with reverts("NotAParty"):
            m.mc.dispute(who, job, c, REQUEST)
    dispute(m, job, c, acct_of(job.seats[1]))  # a seat with a valid result is a party


def test_the_consumer_may_dispute_and_the_bond_takes_credit_first(court):
    m, w = court
    job, c = contested(m, [A, A, B])
    m.mc.deposit(m.consumer, 600)
    bal = m.chain.balance(m.consumer.address)
    receipt = dispute(m, job, c, m.consumer)
    ev = m.mc._event(receipt, "DisputeOpened")
    assert ev["disputer"] == m.consumer.address and ev["bond"] == fee(job) == 1000 and bytes(ev["request"]) == REQUEST
    assert m.mc.credit(m.consumer.address) == 0 and m.chain.balance(m.consumer.address) == bal - 400
    d = m.mc.dispute_of(job.job_id)
    assert d["disputer"] == m.consumer.address and d["opened_block"] == receipt["blockNumber"] and d["jury_at"] == 0
    assert vault_gap(m) == job.held + fee(job)


def test_dispute_request_must_hash_to_the_prompt(court):
    m, w = court
    job, c = contested(m, [A, A, B])
    approve(m, m.consumer)
    with reverts("RequestMismatch"):
        m.mc.dispute(m.consumer, job, c, REQUEST + b" ")


def test_one_dispute_per_job_within_the_window(court):
    m, w = court
    job, c = contested(m, [A, A, B])
    approve(m, *(acct_of(s) for s in seats_of(job)), m.consumer)
    snap = m.rpc("evm_snapshot")
    m.set_next_timestamp(c.contested_at + P.dispute_window)
    with reverts("TooLate") as ctx:
        m.mc.dispute(acct_of(job.seats[2]), job, c, REQUEST)
    assert ctx.error.error_args == (c.contested_at + P.dispute_window,)
    assert m.rpc("evm_revert", [snap]) is True
    snap = m.rpc("evm_snapshot")
    m.set_next_timestamp(c.contested_at + P.dispute_window - 1)  # the last second of the window
    m.mc.dispute(acct_of(job.seats[2]), job, c, REQUEST)
    assert m.rpc("evm_revert", [snap]) is True
    m.mc.dispute(acct_of(job.seats[2]), job, c, REQUEST)
    with reverts("AlreadyDisputed"):
        m.mc.dispute(m.consumer, job, c, REQUEST)
    with reverts("AlreadyDisputed"):
        m.mc.dispute(acct_of(job.seats[0]), job, c, REQUEST)


def test_a_disputed_job_waits_for_its_court(court):
    m, w = court
    job, c = contested(m, [A, A, B])
    dispute(m, job, c, m.consumer)
    m.set_next_timestamp(c.contested_at + P.dispute_window + 1)
    with reverts("NoJury"):  # no jury yet, and its seed block is still in reach
        m.mc.resolve(m.outsider, job, c)
    convene(m, w)
    draw_jury(m, job, c)
    end = jury_at(m, job) + 3 * P.court_phase
    with reverts("TooEarly") as ctx:
        m.mc.resolve(m.outsider, job, c)
    assert ctx.error.error_args == (end,)


# ############################################################################# the court: the jury

def test_jury_is_drawn_from_the_pool_without_seats_consumer_or_disputer(court):
    m, w = court
    job, c = contested(m, [A, A, B])
    s2 = acct_of(job.seats[2])
    d = dispute(m, job, c, s2)
    m.mc.register(m.consumer, MODEL, keccak(b"the consumer serves too"), PRICE, group=GROUP)
    m.mc.stake(m.consumer, STAKE)
    convene(m, w)
    pool = pool_of(m, group=GROUP)
    before = members(m, pool)
    assert len(before) == 8  # three seats, the consumer, four jurors
    receipt = m.mc.draw_jury(m.outsider, job, c)[1]
    seed = jury_seed(m, job, d["blockNumber"], receipt["blockNumber"])
    expected = mirror_draw(before, seed, 3, exclude=[*seats_of(job), m.consumer.address, s2.address])
    ev = m.mc._event(receipt, "JuryDrawn")
    assert [a for a in ev["jurors"] if int(a, 16)] == expected and len(expected) == 3
    assert set(expected) <= {j.address for j in w.jurors}
    dd = m.mc.dispute_of(job.job_id)
    assert dd["jury_at"] == m.chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"] and not dd["void"]
    with reverts("NoJury"):  # drawn once
        m.mc.draw_jury(m.outsider, job, c)


def test_a_jury_short_in_its_pool_is_drawn_full_from_the_models_open_market(court):
    """One juror in the job's group cannot judge alone: a jury is always full (jurySize), and when
    the job's pool cannot seat it, it is drawn from the model's open market, with the same seed and
    the same exclusions (the consumer, a provider of the open market here, is never its juror)."""
    m, w = court
    job, c = contested(m, [A, A, B])
    d = dispute(m, job, c, m.consumer)
    m.mc.register(w.jurors[0], MODEL, keccak(b"juror"), PRICE, group=GROUP)
    m.mc.register(m.consumer, MODEL, keccak(b"the consumer serves the open market"), PRICE)
    m.mc.stake(m.consumer, STAKE)
    group_members, open_members = members(m, pool_of(m, group=GROUP)), members(m, pool_of(m))
    receipt = m.mc.draw_jury(m.outsider, job, c)[1]
    seed = jury_seed(m, job, d["blockNumber"], receipt["blockNumber"])
    exclude = [*seats_of(job), m.consumer.address, m.consumer.address]
    assert len(mirror_draw(group_members, seed, 3, exclude)) == 1  # the group alone: one juror
    expected = mirror_draw(open_members, seed, 3, exclude)
    jurors = [a for a in m.mc._event(receipt, "JuryDrawn")["jurors"] if int(a, 16)]
    assert jurors == expected and len(jurors) == 3 and set(jurors) <= {p.address for p in m.providers}
    assert m.mc.dispute_of(job.job_id)["void"] is False


def test_draw_jury_needs_a_dispute_and_a_later_block(court):
    m, w = court
    job, c = contested(m, [A, A, B])
    with reverts("NoDispute"):
        m.mc.draw_jury(m.outsider, job, c)
    receipt = dispute(m, job, c, m.consumer)
    err = call_error(m, m.chain.market.functions.drawJury(job.as_abi(), c.as_abi()), m.outsider.address)
    assert err.name == "TooEarly" and err.error_args == (receipt["blockNumber"] + 1,)


def test_a_dispute_without_a_full_jury_is_void(court):
    """GROUP holds only the three seats and the model's open market only P0 and P1: no full jury
    anywhere. The dispute is void: the provisional outcome stands at once, the bond comes back
    whole."""
    m, w = court
    for p in m.providers[2:]:
        m.mc.deregister(p)
    job, c = contested(m, [A, A, B])
    s2 = acct_of(job.seats[2])
    dispute(m, job, c, s2)
    jurors, receipt = m.mc.draw_jury(m.outsider, job, c)
    assert jurors == [] and m.mc.dispute_of(job.job_id)["void"] is True
    assert list(m.mc._event(receipt, "JuryDrawn")["jurors"]) == [ZERO_ADDRESS] * 3
    with reverts("NoJury"):
        m.mc.draw_jury(m.outsider, job, c)
    with reverts("NoJury"):
        m.mc.post_evidence(s2, job, c, 2, B.text_hash, B.packed)
    receipt = m.mc.resolve(m.outsider, job, c)  # at once, not after the dispute window
    ev, paid = m.mc.settled_event(receipt), jury_paid(m, receipt)
    assert ev["outcome"] == OUTCOME_PROVISIONAL and list(ev["paid"]) == [400, 400, 0, 0, 0]
    assert ev["slashMask"] == 0 and ev["refund"] == 4000 - 800
    assert paid["share"] == 0 and paid["bondRefund"] == 1000 and m.mc.credit(s2.address) == 1000
    assert vault_gap(m) == 0


def test_a_jury_never_drawn_voids_the_dispute_after_its_draw_window(court):
    m, w = court
    job, c = contested(m, [A, A, B])
    receipt = dispute(m, job, c, m.consumer)
    convene(m, w)
    mine_blocks(m, 7 - (m.chain.w3.eth.block_number - receipt["blockNumber"]))  # the next block: dispute + 8
    snap = m.rpc("evm_snapshot")
    jurors, r = m.mc.draw_jury(m.outsider, job, c)  # the last block of the window
    assert r["blockNumber"] == receipt["blockNumber"] + 8 and len(jurors) == 3
    assert m.rpc("evm_revert", [snap]) is True
    with reverts("NoJury"):  # not drawn yet, and still drawable
        m.mc.resolve(m.outsider, job, c)
    mine_blocks(m, 1)
    with reverts("DrawExpired") as ctx:
        m.mc.draw_jury(m.outsider, job, c)
    assert ctx.error.error_args == (receipt["blockNumber"],)
    r = m.mc.resolve(m.outsider, job, c)
    ev, paid = m.mc.settled_event(r), jury_paid(m, r)
    assert ev["outcome"] == OUTCOME_PROVISIONAL and list(ev["paid"]) == [400, 400, 0, 0, 0]
    assert paid["bondRefund"] == 1000 and ev["refund"] == 3200
    assert m.mc.credit(m.consumer.address) == 3200 + 1000 and vault_gap(m) == 0


def test_a_dispute_needs_the_minimum_jury_fee(court):
    """Jurors are paid for work: a job whose jury fee (maxTokens x priceCap) is under minJuryFee
    (300) cannot be disputed by anyone; at exactly 300 it can, and each of three jurors earns 100."""
    m, w = court
    assert m.chain.market.functions.minJuryFee().call() == P.min_jury_fee == 300
    small, c = contested(m, [output("x", 29), output("x", 29), output("y", 29)], max_tokens=29)
    approve(m, m.consumer, acct_of(small.seats[2]))
    for who in (m.consumer, acct_of(small.seats[2])):
        with reverts("DisputeTooSmall") as ctx:
            m.mc.dispute(who, small, c, REQUEST)
        assert ctx.error.error_args == (290, 300)
    outs = [output("x", 30), output("x", 30), output("y", 30)]
    job, c = contested(m, outs, max_tokens=30)
    r = dispute(m, job, c, m.consumer)
    assert m.mc._event(r, "DisputeOpened")["bond"] == 300
    convene(m, w)
    jurors = draw_jury(m, job, c)
    post_all_evidence(m, job, c, outs)
    vote(m, job, {j: 0 for j in jurors})
    paid = jury_paid(m, m.mc.resolve(m.outsider, job, c))
    assert paid["share"] == 100 and [account(m, j)["owed"] for j in jurors] == [100] * 3
    assert vault_gap(m) == small.held  # the undisputable job waits for its dispute window


# ############################################################################# the court: evidence

def test_evidence_must_be_what_the_seat_signed(court):
    m, w = court
    outs = [A, A, B]
    job, c = contested(m, outs)
    with reverts("NoJury"):
        m.mc.post_evidence(m.outsider, job, c, 0, A.text_hash, A.packed)
    dispute(m, job, c, m.consumer)
    convene(m, w)
    draw_jury(m, job, c)
    with reverts("EvidenceMismatch") as ctx:
        m.mc.post_evidence(m.outsider, job, c, 2, A.text_hash, B.packed)  # another text
    assert ctx.error.error_args == (2,)
    with reverts("EvidenceMismatch"):
        m.mc.post_evidence(m.outsider, job, c, 2, B.text_hash, A.packed)  # another output's tokens
    with reverts("EvidenceMismatch"):
        m.mc.post_evidence(m.outsider, job, c, 2, B.text_hash, B.packed[:-4])  # one token short
    with reverts("EvidenceMismatch"):
        m.mc.post_evidence(m.outsider, job, c, 2, B.text_hash, B.packed + b"\x00\x00\x00\x01")
    with reverts("BadSeat"):
        m.mc.post_evidence(m.outsider, job, c, 3, A.text_hash, A.packed)
    receipt = m.mc.post_evidence(m.outsider, job, c, 2, B.text_hash, B.packed)  # anyone may post it
    ev = m.mc._event(receipt, "EvidencePosted")
    assert ev["seat"] == 2 and bytes(ev["textHash"]) == B.text_hash and bytes(ev["tokens"]) == B.packed
    assert m.mc.dispute_of(job.job_id)["evidence"] == 0b100
    m.set_next_timestamp(jury_at(m, job) + P.court_phase)
    with reverts("TooLate") as ctx:
        m.mc.post_evidence(m.outsider, job, c, 0, A.text_hash, A.packed)
    assert ctx.error.error_args == (jury_at(m, job) + P.court_phase,)


def test_evidence_of_a_seat_without_a_valid_result_refused(court):
    m, w = court
    job, c = contested(m, [A, B, (C.hash, 101)])
    dispute(m, job, c, m.consumer)
    convene(m, w)
    draw_jury(m, job, c)
    with reverts("BadSeat"):
        m.mc.post_evidence(m.outsider, job, c, 2, C.text_hash, C.packed)


# ############################################################################# the court: votes

def test_vote_phases_and_jurors(court):
    m, w = court
    job, c = contested(m, [A, A, B])
    with reverts("NoJury"):
        m.mc.commit_vote(w.jurors[0], job.job_id, keccak(b"x"))
    dispute(m, job, c, m.consumer)
    convene(m, w)
    jurors = draw_jury(m, job, c)
    j0, j1 = jurors[0], jurors[1]
    not_drawn = next(j for j in w.jurors if j not in jurors)
    t = jury_at(m, job)
    v = pack_verdicts({2: HARD})
    salt = keccak(b"salt")
    mine_c = vote_commitment(job.job_id, j0.address, v, salt)
    m.set_next_timestamp(t + P.court_phase - 1)
    with reverts("TooEarly") as ctx:
        m.mc.commit_vote(j0, job.job_id, mine_c)
    assert ctx.error.error_args == (t + P.court_phase,)
    m.set_next_timestamp(t + P.court_phase)
    for who in (not_drawn, acct_of(job.seats[0]), m.consumer):
        with reverts("NotJuror"):
            m.mc.commit_vote(who, job.job_id, mine_c)
    with reverts("ZeroCommitment"):
        m.mc.commit_vote(j0, job.job_id, ZERO32)
    m.mc.commit_vote(j0, job.job_id, mine_c)
    with reverts("AlreadyCommitted"):
        m.mc.commit_vote(j0, job.job_id, keccak(b"again"))
    m.mc.commit_vote(j1, job.job_id, mine_c)  # a copied commitment: bound to j0, j1 cannot open it
    with reverts("TooEarly"):
        m.mc.reveal_vote(j0, job.job_id, v, salt)
    m.set_next_timestamp(t + 2 * P.court_phase)
    with reverts("TooLate"):
        m.mc.commit_vote(jurors[2], job.job_id, keccak(b"late"))
    with reverts("CommitmentMismatch"):
        m.mc.reveal_vote(j1, job.job_id, v, salt)
    with reverts("CommitmentMismatch"):
        m.mc.reveal_vote(j0, job.job_id, pack_verdicts({2: SOFT}), salt)
    m.mc.reveal_vote(j0, job.job_id, v, salt)
    with reverts("AlreadyRevealed"):
        m.mc.reveal_vote(j0, job.job_id, v, salt)
    d = m.mc.dispute_of(job.job_id)
    assert d["revealed"] == 1 << [x.address for x in jurors].index(j0.address)
    m.set_next_timestamp(t + 3 * P.court_phase)
    with reverts("TooLate") as ctx:
        m.mc.reveal_vote(j1, job.job_id, v, salt)
    assert ctx.error.error_args == (t + 3 * P.court_phase,)


# ############################################################################# the court: verdicts and who pays

def test_judged_hard_fail_is_slashed_and_burned(court):
    m, w = court
    s0 = supply(m)
    bal = m.chain.balance(m.consumer.address)
    job, c, jurors, receipt, _ = judged(m, w, [A, A, B], "consumer", {0: PASS, 1: PASS, 2: HARD})
    ev, paid = m.mc.settled_event(receipt), jury_paid(m, receipt)
    assert ev["outcome"] == OUTCOME_JUDGED and ev["present"] == 0b111
    assert list(ev["paid"]) == [400, 400, 0, 0, 0] and ev["slashMask"] == 0b100
    liar = job.seats[2]
    assert account(m, liar)["stake"] == STAKE - LOCK and account(m, liar)["locked"] == 0
    assert supply(m) == s0 - LOCK  # burned: exactly the lock
    # A seat was proven wrong: the bond comes back, the consumer's jury reserve pays the jury.
    assert paid["share"] == 333 and paid["bondRefund"] == 1000
    assert [account(m, j)["owed"] for j in jurors] == [333] * 3
    assert ev["refund"] == 4000 + 1000 - 800 - 999 - 1000
    assert m.mc.credit(m.consumer.address) == ev["refund"] + 1000
    assert bal - m.chain.balance(m.consumer.address) - m.mc.credit(m.consumer.address) == 800 + 999
    assert [account(m, s)["locked"] for s in seats_of(job)] == [0, 0, 0]
    assert vault_gap(m) == 0


def test_judged_soft_fail_is_unpaid_not_slashed(court):
    m, w = court
    s0 = supply(m)
    job, c, jurors, receipt, _ = judged(m, w, [A, A, B], "consumer", {2: SOFT})
    ev, paid = m.mc.settled_event(receipt), jury_paid(m, receipt)
    assert list(ev["paid"]) == [400, 400, 0, 0, 0] and ev["slashMask"] == 0 and supply(m) == s0
    assert account(m, job.seats[2])["stake"] == STAKE
    # Nothing changed in the consumer's favour (the provisional pair passed): its bond pays the jury.
    assert paid["share"] == 333 and paid["bondRefund"] == 1
    assert ev["refund"] == 4000 - 800 and m.mc.credit(m.consumer.address) == 3200 + 1
    assert vault_gap(m) == 0


def test_two_different_honest_outputs_are_both_paid(court):
    """The minority seat (another build, another honest output) disputes; the jury passes every
    seat: all three are paid, and since the disputer passed where it was not provisionally paid, its
    bond comes back and the consumer's reserve pays the jury."""
    m, w = court
    job, c, jurors, receipt, who = judged(m, w, [A, A, B], 2, {})
    ev, paid = m.mc.settled_event(receipt), jury_paid(m, receipt)
    assert list(ev["paid"]) == [400, 400, 400, 0, 0] and ev["slashMask"] == 0
    assert paid["bondRefund"] == 1000 and m.mc.credit(who.address) == 1000
    assert ev["refund"] == 5000 - 1200 - 999 - 1000 and [account(m, j)["owed"] for j in jurors] == [333] * 3
    assert vault_gap(m) == 0


def test_a_seat_dispute_that_changes_nothing_is_paid_by_its_bond(court):
    m, w = court
    job, c, jurors, receipt, who = judged(m, w, [A, A, B], 2, {2: SOFT})
    ev, paid = m.mc.settled_event(receipt), jury_paid(m, receipt)
    assert list(ev["paid"]) == [400, 400, 0, 0, 0] and ev["slashMask"] == 0
    assert paid["bondRefund"] == 1 and m.mc.credit(who.address) == 1
    assert ev["refund"] == 4000 - 800 and m.mc.credit(m.consumer.address) == 3200
    assert vault_gap(m) == 0


def test_a_consumer_dispute_that_undoes_a_provisional_payment_is_paid_by_the_reserve(court):
    m, w = court
    job, c, jurors, receipt, _ = judged(m, w, [A, A, B], "consumer", {0: SOFT, 1: SOFT})
    ev, paid = m.mc.settled_event(receipt), jury_paid(m, receipt)
    assert list(ev["paid"]) == [0, 0, 400, 0, 0] and ev["slashMask"] == 0
    assert paid["bondRefund"] == 1000 and ev["refund"] == 5000 - 400 - 999 - 1000
    assert m.mc.credit(m.consumer.address) == ev["refund"] + 1000
    assert vault_gap(m) == 0


def test_a_disputer_proven_wrong_pays_the_jury(court):
    """The minority seat disputes and the jury finds its own result a hard fail: the dispute
    changed nothing in its favour (PROTOCOL.md: then "the disputer's bond pays them"), so the
    consumer does not pay the jury for it, although "a seat was proven wrong" (itself)."""
    m, w = court
    job, c, jurors, receipt, who = judged(m, w, [A, A, B], 2, {2: HARD})
    ev, paid = m.mc.settled_event(receipt), jury_paid(m, receipt)
    assert ev["slashMask"] == 0b100 and list(ev["paid"]) == [400, 400, 0, 0, 0]
    assert paid["bondRefund"] == 1 and m.mc.credit(who.address) == 1
    assert account(m, who)["stake"] == STAKE - LOCK
    assert m.mc.credit(m.consumer.address) == 4000 - 800, \
        f"the consumer paid the jury of a dispute lost by the disputer: refund {ev['refund']}, " \
        f"bond back {paid['bondRefund']}"
    assert vault_gap(m) == 0


def test_missing_evidence_is_slashed(court):
    m, w = court
    s0 = supply(m)
    job, c, jurors, receipt, _ = judged(m, w, [A, A, B], "consumer", {}, evidence=[0, 1])
    ev = m.mc.settled_event(receipt)
    # Every juror voted pass; seat 2 never showed what it signed: slashed, unpaid.
    assert ev["slashMask"] == 0b100 and list(ev["paid"]) == [400, 400, 0, 0, 0]
    assert supply(m) == s0 - LOCK and vault_gap(m) == 0


def test_jurors_who_did_not_reveal_are_unpaid(court):
    m, w = court
    job, c, jurors, receipt, _ = judged(m, w, [A, A, B], "consumer", {2: HARD}, reveal_count=1)
    ev, paid = m.mc.settled_event(receipt), jury_paid(m, receipt)
    # One "hard" of three jurors is no majority (2 needed): seat 2 passes and is paid.
    assert list(ev["paid"]) == [400, 400, 400, 0, 0] and ev["slashMask"] == 0
    assert [account(m, j)["owed"] for j in jurors] == [333, 0, 0]
    assert [a for a in paid["jurors"] if int(a, 16)] == [jurors[0].address]
    assert paid["share"] == 333 and paid["bondRefund"] == 1000 - 333  # nothing in its favour: the bond pays
    assert ev["refund"] == 4000 - 1200 and vault_gap(m) == 0


def test_the_majority_counts_the_jurors_drawn(court):
    """A verdict needs floor(J/2) + 1 votes of the J jurors DRAWN (three), not of those who
    revealed: two jurors reveal, one "hard" and one "pass", the third is silent: no majority, the
    seat passes and is paid; the two who revealed are paid."""
    m, w = court
    job, c = contested(m, [A, A, B])
    dispute(m, job, c, m.consumer)
    convene(m, w)
    jurors = draw_jury(m, job, c)
    assert len(jurors) == 3
    post_all_evidence(m, job, c, [A, A, B])
    vote(m, job, {jurors[0]: pack_verdicts({2: HARD}), jurors[1]: 0, jurors[2]: pack_verdicts({2: HARD})},
         reveal={jurors[0], jurors[1]})
    r = m.mc.resolve(m.outsider, job, c)
    ev, paid = m.mc.settled_event(r), jury_paid(m, r)
    assert ev["slashMask"] == 0 and list(ev["paid"]) == [400, 400, 400, 0, 0]
    assert [account(m, j)["owed"] for j in jurors] == [333, 333, 0] and paid["share"] == 333
    assert vault_gap(m) == 0


def test_registry_and_market_are_bound_at_deployment(market):
    """Successor of v1's bindMarket test: each contract holds the other as an immutable; nothing
    can rebind them."""
    m = market
    assert m.chain.registry.functions.market().call() == m.chain.market.address
    assert m.chain.market.functions.registry().call() == m.chain.registry.address
    names = {f.get("name") for f in m.chain.registry.abi + m.chain.market.abi if f.get("type") == "function"}
    assert not {n for n in names if "bind" in n.lower() or "setmarket" in n.lower() or "owner" in n.lower()}


# ############################################################################# vault, registry, pools

def test_conservation_on_every_path(court):
    """Open, drawn, grown, agreed (with a slashed liar), refunded, expired, contested, resolved,
    disputed and judged jobs side by side: the vault holds exactly its books plus what open jobs hold."""
    m, w = court
    held = 0
    agreed = open_job(m)
    held += agreed.held
    grown, _, _ = m.mc.add_seat(m.consumer, open_job(m))
    held += grown.held
    refunded = open_job(m)
    held += refunded.held
    assert vault_gap(m) == held
    settle(m, agreed, [A, A, (A.hash, 101)])
    held -= agreed.held
    assert vault_gap(m) == held
    grown_contest = contest_of(m, settle(m, grown, [A, B, C, D]))  # contested, nobody provisional
    assert grown_contest.provisional == 0 and vault_gap(m) == held
    job1, c1 = contested(m, [A, A, B], group=ZERO32)
    held += job1.held
    job2, c2 = contested(m, [A, A, B])
    held += job2.held
    dispute(m, job2, c2, m.consumer)
    held += fee(job2)
    assert vault_gap(m) == held
    _, undrawn, _ = m.mc.open_job(m.consumer, MODEL, keccak(REQUEST), 10, PRICE)
    assert vault_gap(m) == held
    convene(m, w)
    jurors = draw_jury(m, job2, c2)
    post_all_evidence(m, job2, c2, [A, A, B])
    vote(m, job2, {j: pack_verdicts({2: HARD}) for j in jurors})
    m.mc.resolve(m.outsider, job2, c2)
    held -= job2.held + fee(job2)
    assert vault_gap(m) == held
    m.mc.finalize(m.outsider, refunded)  # past its claim window, nobody committed
    held -= refunded.held
    m.mc.resolve(m.outsider, job1, c1)
    held -= job1.held
    assert vault_gap(m) == held
    mine_blocks(m, 300)
    m.mc.expire(m.outsider, undrawn)
    for p in (*m.providers, *w.seats, *w.jurors):
        if account(m, p)["owed"]:
            m.mc.withdraw_earnings(p)
    m.mc.withdraw_credit(m.consumer)
    assert held == grown.held and vault_gap(m) == held  # only the grown job still holds escrow
    m.mc.resolve(m.outsider, grown, grown_contest)
    assert vault_gap(m) == 0


def test_only_the_market_moves_money(market):
    m = market
    reg = m.chain.registry.functions
    seats = [p.address for p in m.providers[:3]] + [ZERO_ADDRESS] * 2
    spec = (pool_of(m), keccak(b"s"), 3, PRICE, 100, True, m.outsider.address, 4000)
    close = (keccak(b"job"), m.outsider.address, 4000, seats, [0] * 5, [0] * 5, 0, 4000, ZERO_ADDRESS, 0,
             [ZERO_ADDRESS] * 3, 0)
    for fn in (reg.collect(m.consumer.address, 1), reg.draw(spec, []), reg.lockSeats(seats, [PRICE] * 5, 100, 0b111),
               reg.payOut(m.outsider.address, 4000, seats, [0] * 5), reg.close(close)):
        with reverts("OnlyMarket"):
            m.chain.transact(m.outsider, fn)
        with reverts("OnlyMarket"):
            m.chain.transact(m.providers[0], fn)


def test_register_moves_pools_and_deregister_leaves(market):
    m = market
    reg = m.chain.registry.functions
    open_pool, group_pool = pool_of(m), pool_of(m, group=MESH_GROUP)

    def check(pool):
        for i, (p, price, free) in enumerate(members(m, pool)):
            listing = reg.listings(p).call()
            assert listing[3] == i + 1 and pool_of(m, bytes(listing[0]), bytes(listing[2])) == pool
            stake, locked, _, acct_price = reg.accounts(p).call()
            assert price == acct_price and free == stake - locked

    p0, p1 = m.providers[0], m.providers[1]
    m.mc.register(p0, MODEL, keccak(b"m"), PRICE, group=MESH_GROUP)
    assert reg.poolSize(open_pool).call() == 3 and [x[0] for x in members(m, group_pool)] == [p0.address]
    assert account(m, p0)["group"] == MESH_GROUP
    check(open_pool)
    check(group_pool)
    m.mc.register(p1, MODEL, keccak(b"m"), 2 * PRICE)  # same pool: a price change only
    assert reg.poolSize(open_pool).call() == 3 and account(m, p1)["price"] == 2 * PRICE
    check(open_pool)
    m.mc.deregister(m.providers[2])
    assert reg.poolSize(open_pool).call() == 2 and not account(m, m.providers[2])["listed"]
    check(open_pool)
    with reverts("NotRegistered"):
        m.mc.deregister(m.providers[2])
    m.mc.register(m.providers[2], OTHER_MODEL, keccak(b"m"), PRICE)
    assert reg.poolSize(pool_of(m, OTHER_MODEL)).call() == 1
    m.mc.register(p0, MODEL, keccak(b"m"), PRICE)  # back: appended
    assert members(m, open_pool)[-1][0] == p0.address and reg.poolSize(group_pool).call() == 0
    check(open_pool)


def test_group_draws_stay_inside_the_group(market):
    m = market
    admin = m.providers[1]
    m.mc.register(admin, MODEL, keccak(b"m"), PRICE, group=MESH_GROUP)
    for p in m.providers[2:]:
        m.mc.invite(admin, MESH_GROUP, p.address)
        m.mc.register(p, MODEL, keccak(b"m"), PRICE, group=MESH_GROUP)
    job = open_job(m, group=MESH_GROUP)
    assert set(seats_of(job)) == {p.address for p in m.providers[1:]} and job.group == MESH_GROUP
    with reverts("NotEnoughProviders") as ctx:  # the open market has only P0 left
        open_job(m)
    assert ctx.error.error_args == (1, 3)
    settle(m, job, [A, A, A])
    # Deregistering does not touch jobs already drawn, and stops future draws.
    job2 = open_job(m, group=MESH_GROUP)
    m.mc.deregister(acct_of(job2.seats[0]))
    ev = m.mc.settled_event(settle(m, job2, [A, A, A]))
    assert list(ev["paid"])[:3] == [400] * 3
    with reverts("NotEnoughProviders"):
        open_job(m, group=MESH_GROUP)


def test_a_private_groups_first_provider_is_its_admin_and_others_need_its_invitation(market):
    """Consent both ways: a provider joins only the meshes it registers in, and a mesh holds only
    the providers its admin (the first to register in it) invited. The open market needs no one."""
    m = market
    admin, p1, p2 = m.providers[:3]
    assert m.mc.group_admin(MESH_GROUP) is None
    r = m.mc.register(admin, MODEL, keccak(b"m"), PRICE, group=MESH_GROUP)
    ev = m.chain.registry.events.GroupClaimed().process_receipt(r, errors=DISCARD)
    assert [(bytes(e["args"]["group"]), e["args"]["admin"]) for e in ev] == [(MESH_GROUP, admin.address)]
    assert m.mc.group_admin(MESH_GROUP) == admin.address
    with reverts("NotInvited") as ctx:
        m.mc.register(p1, MODEL, keccak(b"m"), PRICE, group=MESH_GROUP)
    assert ctx.error.error_args == (MESH_GROUP, p1.address)
    assert account(m, p1)["group"] == ZERO32 and account(m, p1)["listed"]  # still in the open market
    r = m.mc.invite(admin, MESH_GROUP, p1.address)
    ev = m.chain.registry.events.GroupInvite().process_receipt(r, errors=DISCARD)
    assert [(e["args"]["provider"], e["args"]["admitted"]) for e in ev] == [(p1.address, True)]
    m.mc.register(p1, MODEL, keccak(b"m"), PRICE, group=MESH_GROUP)
    assert [x[0] for x in members(m, pool_of(m, group=MESH_GROUP))] == [admin.address, p1.address]
    r = m.mc.register(admin, MODEL, keccak(b"m2"), 2 * PRICE, group=MESH_GROUP)  # the admin re-registers freely
    assert not m.chain.registry.events.GroupClaimed().process_receipt(r, errors=DISCARD)
    # Another model, same group name: the group's admission holds for every model.
    with reverts("NotInvited"):
        m.mc.register(p2, OTHER_MODEL, keccak(b"m"), PRICE, group=MESH_GROUP)
    m.mc.register(p2, MODEL, keccak(b"m"), PRICE)  # the open market: anyone


def test_only_the_admin_invites_and_a_withdrawn_invitation_stops_future_registrations(market):
    m = market
    admin, p1, p2 = m.providers[:3]
    m.mc.register(admin, MODEL, keccak(b"m"), PRICE, group=MESH_GROUP)
    for who in (p1, m.outsider):
        with reverts("NotGroupAdmin") as ctx:
            m.mc.invite(who, MESH_GROUP, p2.address)
        assert ctx.error.error_args == (MESH_GROUP,)
    with reverts("NotGroupAdmin"):  # a group nobody claimed has no admin yet
        m.mc.invite(admin, keccak(b"unclaimed"), p2.address)
    m.mc.invite(admin, MESH_GROUP, p1.address)
    m.mc.register(p1, MODEL, keccak(b"m"), PRICE, group=MESH_GROUP)
    m.mc.invite(admin, MESH_GROUP, p1.address, admitted=False)
    assert m.chain.registry.functions.invited(MESH_GROUP, p1.address).call() is False
    assert account(m, p1)["group"] == MESH_GROUP and account(m, p1)["listed"]  # a member stays listed...
    with reverts("NotInvited"):  # ...but cannot register there again (not even a new price)...
        m.mc.register(p1, MODEL, keccak(b"m"), 2 * PRICE, group=MESH_GROUP)
    assert p1.address in [x[0] for x in members(m, pool_of(m, group=MESH_GROUP))]
    m.mc.register(p1, MODEL, keccak(b"m"), PRICE)  # ...and once it leaves, it stays out
    assert p1.address not in [x[0] for x in members(m, pool_of(m, group=MESH_GROUP))]


def test_endpoint_is_announced_and_bounded(market):
    m = market
    endpoint = "/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2HAmExample"
    r = m.mc.register(m.providers[0], MODEL, keccak(b"manifest"), PRICE, endpoint)
    ev = m.chain.registry.events.ProviderRegistered().process_receipt(r)[0]["args"]
    assert ev["endpoint"] == endpoint and ev["price"] == PRICE and ev["group"] == ZERO32
    m.mc.register(m.providers[0], MODEL, keccak(b"manifest"), PRICE, "x" * 256)
    with reverts("EndpointTooLong") as ctx:
        m.mc.register(m.providers[0], MODEL, keccak(b"manifest"), PRICE, "x" * 257)
    assert ctx.error.error_args == (257,)


def test_price_and_hash_bounds(market):
    m = market
    p = m.providers[0]
    m.mc.register(p, MODEL, keccak(b"m"), 2**40 - 1)
    assert account(m, p)["price"] == 2**40 - 1 and members(m, pool_of(m))[0][1] == 2**40 - 1
    for bad in (0, 2**40):
        with reverts("ZeroPrice"):
            m.mc.register(p, MODEL, keccak(b"m"), bad)
    with reverts("ZeroHash"):
        m.mc.register(p, ZERO32, keccak(b"m"), PRICE)
    with reverts("ZeroHash"):
        m.mc.register(p, MODEL, ZERO32, PRICE)


# ############################################################################# stake, earnings, credit

def test_stake_thaws_then_withdraws_once(market):
    m = market
    p = m.providers[3]
    m.mc.request_unstake(p, 1000)
    ready = account(m, p)["thaw_ready_at"]
    assert account(m, p)["thawing"] == 1000 and account(m, p)["stake"] == STAKE - 1000
    m.set_next_timestamp(ready - 1)
    with reverts("StillThawing"):
        m.mc.withdraw_stake(p)
    m.set_next_timestamp(ready)
    bal = m.chain.balance(p.address)
    m.mc.withdraw_stake(p)
    assert m.chain.balance(p.address) == bal + 1000
    with reverts("NothingThawing"):
        m.mc.withdraw_stake(p)
    with reverts("ZeroAmount"):
        m.mc.request_unstake(p, 0)
    with reverts("InsufficientFreeStake"):
        m.mc.request_unstake(p, STAKE)


def test_double_withdraw_earnings_refused(market):
    m = market
    job = open_job(m)
    settle(m, job, [A, A, A])
    p = acct_of(job.seats[0])
    bal = m.chain.balance(p.address)
    m.mc.withdraw_earnings(p)
    assert m.chain.balance(p.address) == bal + 400
    with reverts("NothingOwed"):
        m.mc.withdraw_earnings(p)


def test_double_withdraw_credit_refused(market):
    m = market
    m.mc.deposit(m.consumer, 500)
    bal = m.chain.balance(m.consumer.address)
    m.mc.withdraw_credit(m.consumer)
    assert m.chain.balance(m.consumer.address) == bal + 500
    with reverts("NothingToWithdraw"):
        m.mc.withdraw_credit(m.consumer)


# ############################################################################# reentrancy

@pytest.fixture
def hostile(market):
    """A market deployed on HostileToken (calls back into a target on every transfer), with the four
    providers registered and staked and the consumer funded."""
    m = market
    from meshmarket.contracts.compile import TESTS
    from meshmarket.contracts.deploy import deploy_contract
    from meshmarket.mesh.chain import Chain
    from meshmarket.mesh.market import MarketClient

    art = json.loads((TESTS.build / "HostileToken.json").read_text())
    token_addr, _ = deploy_contract(m.chain.w3, m.deployer, art)
    dep = deploy(m.chain.w3, m.deployer, m.url, MarketParams(), token_address=token_addr)
    token = m.chain.w3.eth.contract(address=token_addr, abi=art["abi"])
    chain = Chain(m.chain.w3, dep)
    mc = MarketClient(chain)
    for i, p in enumerate(m.providers):
        chain.transact(p, token.functions.mint(p.address, STAKE))
        mc.register(p, MODEL, keccak(b"manifest %d" % i), PRICE)
        mc.stake(p, STAKE)
    chain.transact(m.consumer, token.functions.mint(m.consumer.address, 10**9))
    chain.transact(m.consumer, token.functions.approve(dep.registry, 10**9))
    return chain, mc, token


def _armed(chain, token, who, target, payload) -> None:
    chain.transact(who, token.functions.arm(target, payload))


def _refused_reentry(token) -> bool:
    return (token.functions.lastReentrySucceeded().call() is False
            and bytes(token.functions.lastRevertData().call())[:4] == keccak(text="ReentrancyGuardReentrantCall()")[:4])


def test_reentrancy_through_a_hostile_token_refused(market, hostile):
    """During deposit's transferFrom, the token re-enters withdrawCredit() to take the credit twice."""
    m = market
    chain, mc, token = hostile
    c = m.consumer
    _armed(chain, token, c, chain.registry.address, chain.registry.encode_abi("withdrawCredit", []))
    chain.transact(c, chain.registry.functions.deposit(1000))
    assert token.functions.attempts().call() == 1 and _refused_reentry(token)
    assert chain.registry.functions.credit(c.address).call() == 1000
    assert token.functions.balanceOf(chain.registry.address).call() == 4 * STAKE + 1000


def test_reentrancy_during_a_draw_and_a_slash_refused(market, hostile):
    """The draw's escrow pull and the slash's burn move tokens mid-call: re-entering the registry
    (withdrawCredit) or the market (drawSeats again) meets the guards, and the books stay exact."""
    m = market
    chain, mc, token = hostile
    c = m.consumer
    chain.transact(c, chain.registry.functions.deposit(500))
    _, job, _ = mc.open_job(c, MODEL, keccak(REQUEST), 100, PRICE, approve=False)
    _armed(chain, token, c, chain.registry.address, chain.registry.encode_abi("withdrawCredit", []))
    job, _ = mc.draw_seats(c, job)  # 500 from credit, 3500 by transferFrom: the token calls back
    assert token.functions.attempts().call() == 1 and _refused_reentry(token)
    assert chain.registry.functions.credit(c.address).call() == 0
    _, job2, _ = mc.open_job(c, MODEL, keccak(REQUEST), 100, PRICE, approve=False)
    _armed(chain, token, c, chain.market.address, chain.market.encode_abi("drawSeats", [job2.as_abi()]))
    job2, _ = mc.draw_seats(c, job2)
    assert token.functions.attempts().call() == 2 and _refused_reentry(token)
    # A provable lie is slashed by burning: the burn calls back; the registry is still guarded.
    _armed(chain, token, c, chain.registry.address, chain.registry.encode_abi("withdrawCredit", []))
    outs = [A, A, (A.hash, 101)]
    results = [None if o is None else ResultClaim(job.job_id, *((o.hash, o.count) if isinstance(o, Output) else o))
               .sign(acct_of(job.seats[i]), chain.chain_id, chain.market.address) for i, o in enumerate(outs)]
    mc.settle(c, job, results)
    assert token.functions.attempts().call() == 3 and _refused_reentry(token)
    assert chain.registry.functions.credit(c.address).call() == 4000 - 800
    assert token.functions.balanceOf(chain.registry.address).call() == 4 * STAKE - LOCK + 4000 + 4000
