"""Randomized invariant test of the v2 contracts: short random operation sequences against the real
MeshToken, ProviderRegistry and JobMarket on a real Anvil, each transaction predicted exactly by a
reference model in Python.

The chain is this test's own Anvil (fixture `fixed_market`: the `market` fixture's deployment, on
a chain started at a fixed genesis time with one second per block, so that block hashes, hence
the draws, and so every sequence of a seed, are the same on every run). Every sequence starts from
the same state (the fixture's four providers, plus a setup made once:
two light providers X0 and X1 and the outsider O registered with stakes below, around and above the
draw's weight cap, the second consumer C2 registered at a price above the usual caps (a juror,
rarely a seat), P3 thinned to 30 MESH, a private mesh (MODEL, GROUP) whose admin is X1), runs 3-12
operations, each with valid or invalid arguments, then drains the market: it advances past every
window, closes every job (draws or expires it, finalizes it, draws its jury, resolves it; in most
"claims" and "court" sequences the seats and jurors first play their part: commits, reveals, a
consumer settling late, evidence, votes) and withdraws all credit, earnings and thawed stake.
evm_snapshot before, evm_revert after.

Sequences come in flavors so that short ones still reach deep paths: "agreed" (open, draw, add
seats, settle with every kind of result set), "claims" (the consumer stays silent: seats commit,
time moves to the reveal window, they reveal, anyone finalizes), "court" (a contested settlement,
then a dispute by the consumer or a seat, the jury drawn, evidence, vote commits and reveals,
resolve; or no dispute and a provisional resolve), "expire" (the 8-block draw window passes before
the draw) and "mixed" (anything, registry operations, private-mesh invitations and pool moves most
of all).

The model mirrors the contracts check by check and predicts, for every transaction, either success
with its exact effects and exact events, or the exact custom error with its arguments. It covers
the job ring (SlotBusy, reuse of a closed slot, job ids from the open block), the draw exactly as
the registry does it (seed keccak256(abi.encode(jobId, blockhash(openBlock), prevrandao)) within
DRAW_WINDOW = 8 blocks of the open, attempt k hashes keccak256(abi.encode(seed, k)), member
r % size, acceptance (r >> 128) % weightCap < min(free, weightCap), exclusions, price cap,
lock * maxLockShare <= free, 64 attempts; addSeat's seed keccak256(seed, n, prevrandao); the jury's
keccak256(abi.encode(seed of the dispute block, "jury")), a full jury from the job's pool or else
the model's open market, or a void dispute), settlement
(agreed, refunded, contested; provable lies; a seat left out only from claimEnd and only without a
commitment; EIP-712 signatures with wrong signers, jobs, counts, high s, garbage), commit, reveal
and finalize (a commitment never revealed is slashed), contests with their locks (stake a seat put
to thaw after its draw taken back to back them, ThawReclaimed; partial when even that is short)
and the provisional strict majority of fully backed seats, resolve without dispute, dispute (bond,
minJuryFee, request hash, parties), drawJury (void when no full jury can be drawn, void by timeout
after the draw window), evidence, vote commit/reveal, the judged resolve (hard/soft/pass tallies,
missing evidence, who pays the jury: a disputer found wrong itself never wins), register/deregister/
pool moves with the pool's Member entries, private meshes (the first registrant is the admin,
invite, NotInvited), stake/unstake/withdraw, deposit/withdrawCredit, mint and approve. Block hashes
and a draw block's prevrandao are the inputs it cannot predict: it reads each block's hash from its
receipt, and models a draw once its block is mined, with that block's prevrandao (mixHash).

After every operation the whole observable state (balances, allowances, supply, accounts, listings,
thaws, credit, every consumer's 16 job slots, every pool's entries, and commitments, reveals and
disputes of every job of the sequence) must equal the model, a reverted operation must leave it bit
for bit unchanged, and these invariants are checked on the chain's own numbers:

  1. token.balanceOf(registry) == sum(stake) + sum(thawing) + sum(owed) + sum(credit)
                                   + what drawn and contested jobs hold (escrow, and the bond of a dispute)
  2. token.balanceOf(market) == 0
  3. token.totalSupply() == initial supply + minted (Transfer from 0) - burned (sum of the Slashed
     amounts), and == the sum of every holder's balance
  4. locked <= stake for every provider, and locked == the sum of its locks in contested jobs'
     Contest.locks (as JobContested reported them)
  5. every pool Member entry == (provider, price, min(stake - locked, 2^32 - 1)) of its account,
     at the index its listing records
  6. for every JobSettled (with its JuryPaid): sum(paid) + refund + jury pay + bond refund == what
     the job held (escrow of max(3, seats) + 1 shares, plus the bond if disputed)
  7. after the drain: token.balanceOf(registry) == sum(stake); nothing locked, owed, thawing,
     credited or held, no job slot in use

Reproduce a failure: the seed and the failing sequence are printed, then
    MESH_INVARIANT_SEED=<seed> MESH_INVARIANT_ONLY=<sequence index> pytest tests/test_invariants.py -x
MESH_INVARIANT_SEQUENCES overrides the number of sequences (default 1000); MESH_INVARIANT_VERBOSE=1
prints every sequence's operations (with -s); MESH_INVARIANT_BUILD=<dir> deploys the artifacts of
<dir> (see fixed_market) to check that a deliberately broken contract is caught.

Why not hypothesis.stateful. A RuleBasedStateMachine would bring shrinking, and the question was
weighed: (1) its rules are drawn uniformly among those whose preconditions hold, with no weights,
so the deep paths (a judged dispute needs open, draw, a contested settle, dispute, drawJury,
evidence, three time jumps, votes committed and revealed, resolve, in that order) are reached only
by writing each step's preconditions to force the order, i.e. by re-writing this generator inside
rules; (2) shrinking replays candidate sequences against Anvil, and a shrunk sequence diverges from
the original as soon as a removed step changes a block number (job ids, seeds and the draws all
depend on block numbers and hashes), so most shrink attempts test something else; (3) its
per-example overhead and data generation cost more than this whole loop, and its health checks and
deadlines have to be turned off for a chain-backed test. What shrinking would give is already
here: sequences are short (3-12 operations before the drain), every failure prints its numbered
operation log with the model's prediction per step, and one environment variable replays exactly
that sequence. So the test keeps its own generator, seeded per sequence ("seed/index").

Speed. mesh.chain.send costs ~15-30 ms per transaction: 9 RPCs (eth_getTransactionCount,
eth_chainId twice, eth_estimateGas, eth_maxPriorityFeePerGas, eth_getBlockByNumber,
eth_sendRawTransaction, receipt polling) plus web3's Python overhead; a web3 contract call costs
~5-10 ms. About 15,000 operations, each followed by a read of ~120 values, would take many minutes
that way. So this file sends most transactions its own way: one keep-alive HTTP connection, nonces
kept locally, fixed gas and fees, calldata encoded with eth_abi, transactions signed locally with
the dev keys and submitted with `eth_sendRawTransactionSync` (one round trip returns the receipt),
and the whole state read in ONE eth_simulateV1 of ~90 calls (~1.5 ms; a JSON-RPC batch of eth_calls
where the node lacks it). Result signatures are EIP-712 digests
signed directly with the key (one in seven through mesh.market.ResultClaim, which must agree). They
are still real signed transactions mined by Anvil; a reverted one is mined with status 0 and its
reason is recovered by replaying it with eth_call at its block, then decoded by mesh.chain's
RevertDecoder into the project's ContractReverted. Some registry operations and draws go through
mesh.market.MarketClient (estimateGas path) instead.

Time and blocks are exact: Anvil's block timestamp interval is 1 s, so every transaction is one
block, one second after the previous one (the model's clock + 1, checked on every receipt), without
an evm_setNextBlockTimestamp round trip each time; "advance" mines one block at a chosen time,
often one second around a job's delivery, claim, reveal, dispute or court deadline or a thaw's end
(MarketParams); "mine" adds blocks at once (anvil_mine) so that the next transaction is one block
at, or one or two after, the end of a draw window (DrawExpired, expire, a dispute void by timeout).

The table printed at the end counts every path reached; COVERAGE_FLOORS holds the default seed to
them.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import random
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple
from urllib.parse import urlparse

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import collapse_if_tuple, keccak, to_checksum_address

from meshmarket.mesh.errors import ContractReverted
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.lifecycle import Contest
from meshmarket.mesh.market import (
    HARD,
    PASS,
    SOFT,
    MarketClient,
    ResultClaim,
    commitment,
    compact_signature,
    vote_commitment,
)
from meshmarket.mesh.protocol import Job, output_hash, pack_tokens
from meshmarket.contracts.deploy import deploy, deploy_contract, get_create_address
from meshmarket.mesh.anvil import DEV_MNEMONIC, AnvilProcess, find_anvil, free_port, rpc_call
from meshmarket.mesh.chain import CONTRACT_NAMES, Chain, connect
from meshmarket.mesh.config import Deployment, MarketParams
from tests.conftest import FUNDS, MODEL, OTHER_MODEL, Market
from tests.conftest import PRICE as FIXTURE_PRICE
from tests.conftest import STAKE as FIXTURE_STAKE

pytestmark = pytest.mark.slow

DEFAULT_SEED = 20260521
SEQUENCES = int(os.environ.get("MESH_INVARIANT_SEQUENCES", "1000"))
VERBOSE = bool(os.environ.get("MESH_INVARIANT_VERBOSE"))
#: flavor -> (share of sequences, fewest operations, most operations) before the drain
FLAVORS = {"court": (0.32, 7, 12), "claims": (0.2, 7, 10), "agreed": (0.2, 3, 5), "mixed": (0.23, 3, 7),
           "expire": (0.05, 3, 5)}
#: Paths that 1,000 sequences of the default seed must reach at least this often (about a third of
#: what they reach), so that a change to the generator cannot silently drop a path.
COVERAGE_FLOORS = {
    "openJob:ok": 350, "openJob:SlotBusy": 45, "openJob:BadMaxTokens": 8, "drawSeats:ok": 330,
    "drawSeats:NotEnoughProviders": 20, "drawSeats:DrawExpired": 2, "expire:ok": 28, "expire:TooEarly": 10,
    "addSeat:ok": 50, "addSeat:NotEnoughProviders": 14, "addSeat:TooLate": 8, "settle:ok": 140,
    "settle:BadSignature": 12, "settle:MissingResult": 40, "settle:AlreadyCommitted": 19, "  settle[agree_lie]:ok": 8,
    "  settle[split]:ok": 32, "  settle[tie]:ok": 6, "commitResult:ok": 170, "commitResult:TooEarly": 10,
    "revealResult:ok": 120, "finalize:ok": 190, "dispute:ok": 55, "  dispute[seat]:ok": 25,
    "  dispute[consumer]:ok": 28, "dispute:RequestMismatch": 11, "dispute:DisputeTooSmall": 18, "drawJury:ok": 55,
    "drawJury:DrawExpired": 2, "postEvidence:ok": 60, "postEvidence:EvidenceMismatch": 3, "commitVote:ok": 60,
    "revealVote:ok": 50, "resolve:ok": 130, "  settled -> agreed": 45, "  settled -> agreed + slash": 5,
    "  settled -> refunded + slash": 13, "  lock backed by reclaimed thawing stake": 20,
    "  settled -> contested with a provisional majority": 70, "  settled -> judged": 5,
    "  settled -> judged + slash": 23, "  settled -> provisional": 85, "  settled -> provisional + slash": 7,
    "  jury: none found (void)": 27, "  jury paid from the bond": 6, "  jury of 3": 28,
    "  draw: 2 of the light providers": 30, "register:ok": 110, "register:NotInvited": 30, "invite:ok": 40,
    "invite:NotGroupAdmin": 8, "deregister:ok": 35, "requestUnstake:InsufficientFreeStake": 20,
    "withdrawStake:ok": 120, "stake:SafeCastOverflowedUintDowncast": 14, "mint:ERC20ExceededCap": 5,
    "  (via mesh.market.MarketClient)": 65,
}

ZERO32 = b"\x00" * 32
CLOSED = b"\x00" * 31 + b"\x01"  # JobMarket's marker of a closed job slot
ZERO_ADDR = "0x" + "00" * 20
U40, U32, U64, U256 = 2**40 - 1, 2**32 - 1, 2**64 - 1, 2**256 - 1
RING, FIRST_SEATS, MAX_DRAW_ATTEMPTS, DRAW_WINDOW = 16, 3, 64, 8
MAX_TOKENS_LIMIT = 1 << 20
MAX_ENDPOINT_BYTES = 256
AGREED, PROVISIONAL, JUDGED, REFUNDED = range(4)
RESULT_TYPEHASH = keccak(b"Result(bytes32 jobId,bytes32 outputHash,uint64 tokenCount)")
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
GROUP = keccak(b"a private mesh")
GROUPS = (GROUP,)  # the private meshes whose admin and invitations the state includes
POOL_NAMES = {keccak(MODEL + ZERO32): "MODEL/open", keccak(MODEL + GROUP): "MODEL/group",
              keccak(OTHER_MODEL + ZERO32): "OTHER/open"}
TX_GAS = 3_000_000
MAX_FEE = 10**10  # 10 gwei: Anvil's base fee starts at 1 gwei and only falls with our tiny blocks


# ============================================================================ raw JSON-RPC

class RpcError(Exception):
    def __init__(self, error: dict) -> None:
        super().__init__(error.get("message"))
        self.error = error

    @property
    def data(self) -> str | None:
        data = self.error.get("data")
        if isinstance(data, dict):
            data = data.get("data")
        return data if isinstance(data, str) else None


class Rpc:
    """JSON-RPC over one keep-alive HTTP connection with TCP_NODELAY: ~0.5 ms a call."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.conn: http.client.HTTPConnection | None = None
        self.next_id = 0

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _post(self, payload: Any) -> Any:
        body = json.dumps(payload).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = self._connect()
            try:
                self.conn.request("POST", "/", body, {"Content-Type": "application/json"})
                return json.loads(self.conn.getresponse().read())
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, params: list) -> Any:
        self.next_id += 1
        reply = self._post({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        if "error" in reply:
            raise RpcError(reply["error"])
        return reply["result"]

    def batch(self, calls: list[tuple[str, list]]) -> list[Any]:
        """Results in order; None for a call that failed (a reverted eth_call)."""
        base = self.next_id + 1
        self.next_id += len(calls)
        replies = self._post([{"jsonrpc": "2.0", "id": base + i, "method": m, "params": p}
                              for i, (m, p) in enumerate(calls)])
        out: list[Any] = [None] * len(calls)
        for reply in replies:
            out[reply["id"] - base] = reply.get("result")  # None where the call failed
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# ============================================================================ ABI codec

def _norm(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    return value


class Codec:
    """Function calldata with precomputed selectors, and log decoding, for the three contracts."""

    def __init__(self, chain) -> None:
        self.address = {"token": chain.token.address, "registry": chain.registry.address,
                        "market": chain.market.address}
        self.key_of = {a.lower(): k for k, a in self.address.items()}
        self.fns: dict[tuple[str, str], tuple[bytes, list[str]]] = {}
        self.events: dict[tuple[str, bytes], tuple[str, list[dict]]] = {}
        for key, contract in (("token", chain.token), ("registry", chain.registry), ("market", chain.market)):
            for item in contract.abi:
                if item["type"] == "function":
                    types = [collapse_if_tuple(i) for i in item["inputs"]]
                    assert (key, item["name"]) not in self.fns, f"overloaded {item['name']}"
                    self.fns[(key, item["name"])] = (keccak(text=f"{item['name']}({','.join(types)})")[:4], types)
                elif item["type"] == "event":
                    types = [collapse_if_tuple(i) for i in item["inputs"]]
                    topic = keccak(text=f"{item['name']}({','.join(types)})")
                    self.events[(key, topic)] = (item["name"], item["inputs"])

    def data(self, key: str, fn: str, args: tuple) -> str:
        selector, types = self.fns[(key, fn)]
        return "0x" + (selector + abi_encode(types, list(args))).hex()

    def decode_logs(self, logs: list) -> list[tuple[str, str, dict]]:
        """(contract key, event name, args) for every log of our contracts, in order."""
        out = []
        for log in logs:
            addr = log["address"] if isinstance(log["address"], str) else str(log["address"])
            key = self.key_of.get(addr.lower())
            if key is None:
                continue
            topics = [bytes.fromhex(t[2:]) if isinstance(t, str) else bytes(t) for t in log["topics"]]
            data = log["data"]
            data = bytes.fromhex(data[2:]) if isinstance(data, str) else bytes(data)
            name, inputs = self.events[(key, topics[0])]
            args: dict[str, Any] = {}
            plain = [i for i in inputs if not i["indexed"]]
            values = abi_decode([collapse_if_tuple(i) for i in plain], data)
            ti = 1
            for inp in inputs:
                if inp["indexed"]:
                    args[inp["name"]] = abi_decode([inp["type"]], topics[ti])[0]
                    ti += 1
            for inp, v in zip(plain, values):
                args[inp["name"]] = v
            out.append((key, name, {k: _norm(v) for k, v in args.items()}))
        return out


# ============================================================================ fast transactions

class FastSender:
    """Real signed transactions, without web3's per-transaction round trips."""

    def __init__(self, rpc: Rpc, codec: Codec, decoder, chain_id: int) -> None:
        self.rpc, self.codec, self.decoder, self.chain_id = rpc, codec, decoder, chain_id
        self.nonces: dict[str, int] = {}

    def send(self, acct, key: str, fn: str, args: tuple, timestamp: int) -> tuple[dict, ContractReverted | None]:
        """Mine `fn(args)` from `acct` in the next block, which must be at `timestamp`. Returns the receipt and, for a
        transaction mined with status 0, its error decoded by mesh.chain's RevertDecoder."""
        to = self.codec.address[key]
        data = self.codec.data(key, fn, args)
        nonce = self.nonces[acct.address]
        signed = acct.sign_transaction({
            "type": 2, "chainId": self.chain_id, "nonce": nonce, "to": to, "value": 0, "data": data,
            "gas": TX_GAS, "maxFeePerGas": MAX_FEE, "maxPriorityFeePerGas": 0,
        })
        # Anvil mines every block one second after the previous one (anvil_setBlockTimestampInterval)
        receipt = self.rpc.call("eth_sendRawTransactionSync", ["0x" + bytes(signed.raw_transaction).hex()])
        self.nonces[acct.address] = nonce + 1
        mined_at = receipt["blockTimestamp"]  # Anvil 1.7 returns a number here, not a hex string
        assert (int(mined_at, 16) if isinstance(mined_at, str) else mined_at) == timestamp, "block not mined at the time set"
        if receipt["status"] == "0x1":
            return receipt, None
        # A mined revert changes only the sender's nonce and gas, so replaying it at its block
        # reverts the same way and yields the reason.
        try:
            self.rpc.call("eth_call", [{"from": acct.address, "to": to, "data": data, "gas": hex(TX_GAS)},
                                       receipt["blockNumber"]])
        except RpcError as exc:
            return receipt, self.decoder.decode(exc.data, fn)
        raise AssertionError(f"{fn} failed on chain but its replay succeeds (out of gas at {TX_GAS}?)")


# ============================================================================ reference model

class Revert(Exception):
    """The model predicts that the contracts revert with this custom error and these arguments."""

    def __init__(self, name: str, *args: Any) -> None:
        super().__init__(name)
        self.name = name
        self.error_args = args


def _w(v: int) -> bytes:
    return v.to_bytes(32, "big")


def _a(addr: str) -> bytes:
    return bytes(12) + bytes.fromhex(addr[2:])


class J(NamedTuple):
    """JobMarket.Job (what the market stores the keccak256 of), immutable and cheap to hash."""

    consumer: str
    slot: int
    model: bytes
    group: bytes
    prompt: bytes
    max_tokens: int
    price_cap: int
    open_block: int
    drawn_at: int = 0
    seed: bytes = ZERO32
    seats: tuple = (ZERO_ADDR,) * 5
    prices: tuple = (0,) * 5

    def abi(self) -> tuple:
        return (self.consumer, self.slot, self.model, self.group, self.prompt, self.max_tokens, self.price_cap,
                self.open_block, self.drawn_at, self.seed, list(self.seats), list(self.prices))

    def enc(self) -> bytes:
        return b"".join((_a(self.consumer), _w(self.slot), self.model, self.group, self.prompt, _w(self.max_tokens),
                         _w(self.price_cap), _w(self.open_block), _w(self.drawn_at), self.seed,
                         *(_a(s) for s in self.seats), *(_w(p) for p in self.prices)))

    def hash(self) -> bytes:
        return keccak(self.enc())

    @property
    def jid(self) -> bytes:
        return keccak(_a(self.consumer) + _w(self.open_block) + _w(self.slot))

    @property
    def n_seats(self) -> int:
        """JobMarket._seatCount: the leading non-empty seats."""
        n = 0
        while n < 5 and self.seats[n] != ZERO_ADDR:
            n += 1
        return n

    @property
    def held(self) -> int:
        return self.max_tokens * self.price_cap * (max(3, self.n_seats) + 1)

    @property
    def fee(self) -> int:
        return self.max_tokens * self.price_cap

    def with_seat(self, i: int, provider: str, price: int) -> J:
        seats, prices = list(self.seats), list(self.prices)
        seats[i], prices[i] = provider, price
        return self._replace(seats=tuple(seats), prices=tuple(prices))

    def protocol_job(self) -> Job:
        """The same job as mesh.protocol.Job (what MarketClient takes)."""
        return Job(consumer=self.consumer, slot=self.slot, model_hash=self.model, group=self.group,
                   prompt_hash=self.prompt, max_tokens=self.max_tokens, price_cap=self.price_cap,
                   open_block=self.open_block, drawn_at=self.drawn_at, seed=self.seed, seats=self.seats,
                   prices=self.prices)


class C(NamedTuple):
    """JobMarket.Contest."""

    outputs: tuple
    counts: tuple
    present: int
    slashed: int
    provisional: int
    contested_at: int
    locks: tuple

    def abi(self) -> tuple:
        return (list(self.outputs), list(self.counts), self.present, self.slashed, self.provisional,
                self.contested_at, list(self.locks))

    def event(self) -> tuple:
        return (tuple(self.outputs), tuple(self.counts), self.present, self.slashed, self.provisional,
                self.contested_at, tuple(self.locks))

    def enc(self) -> bytes:
        return b"".join((*self.outputs, *(_w(n) for n in self.counts), _w(self.present), _w(self.slashed),
                         _w(self.provisional), _w(self.contested_at), *(_w(n) for n in self.locks)))


def contested_slot(job: J, c: C) -> bytes:
    """keccak256(abi.encode(jobHash, contest)): what a contested job's slot holds (both are static)."""
    return keccak(job.hash() + c.enc())


def pool_key(model: bytes, group: bytes) -> bytes:
    return keccak(model + group)


@dataclass
class Rec:
    """A job of the sequence as the model knows it (the market itself keeps only hashes)."""

    job: J
    status: str  # "open" (undrawn or drawn), "contested", "closed"
    contest: C | None = None


@dataclass
class Env:
    token: str
    registry: str
    market: str
    deployer: str
    accounts: tuple  # providers, consumers, others (checksummed)
    chain_id: int
    thaw: int
    min_lock: int
    ratio: int
    weight_cap: int
    lock_share: int
    delivery: int
    claim: int
    reveal: int
    dispute: int
    court: int
    jury: int
    min_jury_fee: int
    domain: bytes = b""  # EIP-712 domain separator of the market

    @property
    def holders(self) -> tuple:
        return self.accounts + (self.deployer, self.registry, self.market)

    def lock_for(self, max_tokens: int, price: int) -> int:
        return max(self.ratio * max_tokens * price, self.min_lock)


STAKE, LOCKED, OWED, PRICE = range(4)
#: Dispute fields, as JobMarket.disputes(jobId) returns them.
D_DISPUTER, D_BLOCK, D_JURY_AT, D_VOID, D_EVIDENCE, D_REVEALED, D_JURORS, D_COMMITS, D_VERDICTS = range(9)


def new_dispute() -> list:
    return [ZERO_ADDR, 0, 0, False, 0, 0, [ZERO_ADDR] * 3, [ZERO32] * 3, [0] * 3]


class Model:
    """What the token, registry and market must hold. Methods mirror the contracts' checks in their
    order and raise Revert(name, *args) where the contracts revert; otherwise they apply the effects
    and return the registry/market events expected, in order. `now` and `block` are the time and
    number of the block the modelled transaction is mined in; `hashes` the block hashes the chain
    reported (blockhash() inputs: the model cannot predict a block's hash, only use it)."""

    def __init__(self, env: Env, state: dict, clock: int, number: int) -> None:
        self.env = env
        self.bal = {a: state[("bal", a)] for a in env.holders}
        self.allow = {a: state[("allow", a)] for a in env.accounts}
        self.supply = state[("supply",)]
        self.acc = {a: list(state[("acc", a)]) for a in env.accounts}
        self.lst = {a: [_w(w) for w in state[("lst", a)][:3]] + [state[("lst", a)][3]] for a in env.accounts}
        self.thaw = {a: list(state[("thaw", a)]) for a in env.accounts}
        self.credit = {a: state[("credit", a)] for a in env.accounts}
        self.slots = {a: [_w(w) for w in state[("slots", a)]] for a in env.accounts}
        self.pools: dict[bytes, list] = {}
        for key, v in state.items():
            if key[0] == "member":
                self.pools.setdefault(key[1], []).append((to_checksum_address("0x%040x" % v[0]), v[1], v[2]))
            elif key[0] == "psize":
                self.pools.setdefault(key[1], [])
        self.admin = {g: to_checksum_address("0x%040x" % state[("admin", g)]) for g in GROUPS}
        self.invited = {(g, a): bool(state[("invited", g, a)]) for g in GROUPS for a in env.accounts}
        self.prevrandao = ZERO32  # of the block being modelled (known once it is mined)
        self.commits: dict[bytes, list] = {}
        self.reveals: dict[bytes, list] = {}
        self.disputes: dict[bytes, list] = {}
        self.jobs: dict[bytes, Rec] = {}
        self.hashes: dict[int, bytes] = {}
        self.minted = self.burned = 0
        self.clock = self.now = clock
        self.number = self.block = number

    def clone(self) -> Model:
        c = copy.copy(self)
        c.bal, c.allow, c.credit = dict(self.bal), dict(self.allow), dict(self.credit)
        c.admin, c.invited = dict(self.admin), dict(self.invited)
        c.acc = {a: list(v) for a, v in self.acc.items()}
        c.lst = {a: list(v) for a, v in self.lst.items()}
        c.thaw = {a: list(v) for a, v in self.thaw.items()}
        c.slots = {a: list(v) for a, v in self.slots.items()}
        c.pools = {k: list(v) for k, v in self.pools.items()}
        c.commits = {k: list(v) for k, v in self.commits.items()}
        c.reveals = {k: list(v) for k, v in self.reveals.items()}
        c.disputes = {k: [*v[:6], list(v[6]), list(v[7]), list(v[8])] for k, v in self.disputes.items()}
        c.jobs = {k: copy.copy(v) for k, v in self.jobs.items()}
        c.hashes = dict(self.hashes)
        return c

    def live(self) -> list[Rec]:
        return [r for r in self.jobs.values() if r.status != "closed"]

    def expected_state(self) -> dict:
        s: dict = {("supply",): self.supply}
        for a in self.env.holders:
            s[("bal", a)] = self.bal[a]
        for a in self.env.accounts:
            s[("allow", a)] = self.allow[a]
            s[("acc", a)] = tuple(self.acc[a])
            l = self.lst[a]
            s[("lst", a)] = (int.from_bytes(l[0], "big"), int.from_bytes(l[1], "big"), int.from_bytes(l[2], "big"), l[3])
            s[("thaw", a)] = tuple(self.thaw[a])
            s[("credit", a)] = self.credit[a]
            s[("slots", a)] = tuple(int.from_bytes(h, "big") for h in self.slots[a])
            for g in GROUPS:
                s[("invited", g, a)] = int(self.invited[(g, a)])
        for g in GROUPS:
            s[("admin", g)] = int(self.admin[g], 16)
        for pool, members in self.pools.items():
            s[("psize", pool)] = len(members)
            for i, (p, price, free) in enumerate(members):
                s[("member", pool, i)] = (int(p, 16), price, free)
        for jid in self.jobs:
            s[("commits", jid)] = tuple(int.from_bytes(c, "big") for c in self.commits.get(jid, [ZERO32] * 5))
            words: list = []
            for r in self.reveals.get(jid, [None] * 5):
                words += [0, 0, 0] if r is None else [int.from_bytes(r[0], "big"), r[1], 1]
            s[("reveals", jid)] = tuple(words)
            d = self.disputes.get(jid) or new_dispute()
            s[("dispute", jid)] = (int(d[0], 16), d[1], d[2], int(d[3]), d[4], d[5], *(int(j, 16) for j in d[6]),
                                   *(int.from_bytes(c, "big") for c in d[7]), *d[8])
        return s

    # -- token
    def _pull(self, owner: str, amount: int) -> None:
        """token.transferFrom(owner, registry, amount), called by the registry (OpenZeppelin 5:
        allowance first, then balance)."""
        reg = self.env.registry
        if self.allow[owner] != U256:
            if self.allow[owner] < amount:
                raise Revert("ERC20InsufficientAllowance", reg, self.allow[owner], amount)
            self.allow[owner] -= amount
        if self.bal[owner] < amount:
            raise Revert("ERC20InsufficientBalance", owner, self.bal[owner], amount)
        self.bal[owner] -= amount
        self.bal[reg] += amount

    def _pay(self, to: str, amount: int) -> None:
        reg = self.env.registry
        if self.bal[reg] < amount:
            raise Revert("ERC20InsufficientBalance", reg, self.bal[reg], amount)
        self.bal[reg] -= amount
        self.bal[to] += amount

    def approve(self, sender: str, amount: int) -> list:
        self.allow[sender] = amount
        return []

    def mint(self, sender: str, to: str, amount: int) -> list:
        if sender != self.env.deployer:
            raise Revert("OwnableUnauthorizedAccount", sender)
        if self.supply + amount > U64:
            raise Revert("ERC20ExceededCap", self.supply + amount, U64)
        self.supply += amount
        self.bal[to] += amount
        self.minted += amount
        return []

    # -- registry internals
    def _sync(self, p: str) -> None:
        l = self.lst[p]
        if l[3] == 0:
            return
        a = self.acc[p]
        self.pools[pool_key(l[0], l[2])][l[3] - 1] = (p, a[PRICE] & U40, min(a[STAKE] - a[LOCKED], U32))

    def _leave_pool(self, p: str) -> None:
        l = self.lst[p]
        pool = self.pools[pool_key(l[0], l[2])]
        idx = l[3]
        last = pool[-1]
        pool[idx - 1] = last
        self.lst[last[0]][3] = idx
        pool.pop()
        l[3] = 0

    def _collect(self, payer: str, amount: int) -> None:
        c = self.credit[payer]
        if c >= amount:
            self.credit[payer] = c - amount
            return
        self.credit[payer] = 0
        self._pull(payer, amount - c)

    def draw(self, pool: bytes, seed: bytes, count: int, price_cap: int, max_tokens: int, for_seat: bool,
             payer: str, amount: int, exclude: list) -> list:
        """ProviderRegistry.draw: [(provider, price)] of whom it found."""
        if amount:
            self._collect(payer, amount)
        members = self.pools.get(pool, [])
        size, cap, picked = len(members), self.env.weight_cap, []
        attempt = 0
        while attempt < MAX_DRAW_ATTEMPTS and len(picked) < min(count, 3) and size:
            r = int.from_bytes(keccak(seed + _w(attempt)), "big")
            attempt += 1
            provider, price, free = members[r % size]
            if (r >> 128) % cap >= min(free, cap):
                continue
            if provider in exclude or any(provider == q for q, _ in picked):
                continue
            if for_seat and (price > price_cap or self.env.lock_for(max_tokens, price) * self.env.lock_share > free):
                continue
            picked.append((provider, price))
        return picked

    def _lock_seats(self, job: J, mask: int, events: list) -> tuple:
        """ProviderRegistry.lockSeats: up to the full lock from free stake, taking back stake the
        seat put to thaw (ThawReclaimed) when free stake is short."""
        locks = [0] * 5
        for i in range(5):
            if mask >> i & 1:
                p = job.seats[i]
                a = self.acc[p]
                want, free = self.env.lock_for(job.max_tokens, job.prices[i]), a[STAKE] - a[LOCKED]
                if free < want:
                    t = self.thaw[p]
                    back = min(want - free, t[0])
                    if back:
                        t[0] -= back
                        a[STAKE] += back
                        free += back
                        events.append(("ThawReclaimed", {"provider": p, "amount": back}))
                locks[i] = min(want, free)
                a[LOCKED] += locks[i]
                self._sync(p)
        return tuple(locks)

    # -- registry: providers
    def register(self, sender: str, model: bytes, manifest: bytes, price: int, group: bytes, endpoint: bytes) -> list:
        if model == ZERO32 or manifest == ZERO32:
            raise Revert("ZeroHash")
        if price == 0 or price > U40:
            raise Revert("ZeroPrice")
        if len(endpoint) > MAX_ENDPOINT_BYTES:
            raise Revert("EndpointTooLong", len(endpoint))
        events = []
        if group != ZERO32:
            # a private mesh admits whom its admin (its first provider) invited
            admin = self.admin.setdefault(group, ZERO_ADDR)
            if admin == ZERO_ADDR:
                self.admin[group] = sender
                events.append(("GroupClaimed", {"group": group, "admin": sender}))
            elif admin != sender and not self.invited.get((group, sender)):
                raise Revert("NotInvited", group, sender)
        l = self.lst[sender]
        pool = pool_key(model, group)
        if l[3] != 0 and pool_key(l[0], l[2]) != pool:
            self._leave_pool(sender)
        if l[3] == 0:
            self.pools.setdefault(pool, []).append((sender, 0, 0))
            l[3] = len(self.pools[pool])
        l[0], l[1], l[2] = model, manifest, group
        self.acc[sender][PRICE] = price
        self._sync(sender)
        return events + [("ProviderRegistered", {"provider": sender, "modelHash": model, "group": group,
                                                 "manifestHash": manifest, "price": price,
                                                 "endpoint": endpoint.decode()})]

    def invite(self, sender: str, group: bytes, provider: str, admitted: bool) -> list:
        if self.admin.get(group, ZERO_ADDR) != sender:
            raise Revert("NotGroupAdmin", group)
        self.invited[(group, provider)] = admitted
        return [("GroupInvite", {"group": group, "provider": provider, "admitted": admitted})]

    def deregister(self, sender: str) -> list:
        if self.lst[sender][0] == ZERO32:
            raise Revert("NotRegistered", sender)
        self._leave_pool(sender)
        self.lst[sender] = [ZERO32, ZERO32, ZERO32, 0]
        return [("ProviderDeregistered", {"provider": sender})]

    def stake(self, sender: str, amount: int) -> list:
        if amount == 0:
            raise Revert("ZeroAmount")
        a = self.acc[sender]
        if a[STAKE] + amount > U64:
            raise Revert("SafeCastOverflowedUintDowncast", 64, a[STAKE] + amount)
        a[STAKE] += amount
        self._sync(sender)
        self._pull(sender, amount)
        return [("Staked", {"provider": sender, "amount": amount})]

    def request_unstake(self, sender: str, amount: int) -> list:
        if amount == 0:
            raise Revert("ZeroAmount")
        a = self.acc[sender]
        free = a[STAKE] - a[LOCKED]
        if amount > free:
            raise Revert("InsufficientFreeStake", sender, free, amount)
        a[STAKE] -= amount
        self._sync(sender)
        t = self.thaw[sender]
        t[0] += amount
        t[1] = self.now + self.env.thaw
        return [("UnstakeRequested", {"provider": sender, "amount": amount, "readyAt": t[1]})]

    def withdraw_stake(self, sender: str) -> list:
        amount, ready = self.thaw[sender]
        if amount == 0:
            raise Revert("NothingThawing")
        if self.now < ready:
            raise Revert("StillThawing", ready)
        self.thaw[sender] = [0, 0]
        self._pay(sender, amount)
        return [("StakeWithdrawn", {"provider": sender, "amount": amount})]

    def withdraw_earnings(self, sender: str) -> list:
        amount = self.acc[sender][OWED]
        if amount == 0:
            raise Revert("NothingOwed")
        self.acc[sender][OWED] = 0
        self._pay(sender, amount)
        return [("EarningsWithdrawn", {"provider": sender, "amount": amount})]

    # -- registry: consumers
    def deposit(self, sender: str, amount: int) -> list:
        if amount == 0:
            raise Revert("ZeroAmount")
        self.credit[sender] += amount
        self._pull(sender, amount)
        return [("Deposited", {"consumer": sender, "amount": amount})]

    def withdraw_credit(self, sender: str) -> list:
        amount = self.credit[sender]
        if amount == 0:
            raise Revert("NothingToWithdraw")
        self.credit[sender] = 0
        self._pay(sender, amount)
        return [("CreditWithdrawn", {"consumer": sender, "amount": amount})]

    # -- market: checks
    def _check_open(self, job: J) -> bytes:
        jid = job.jid
        if job.slot >= RING or self.slots[job.consumer][job.slot] != job.hash():
            raise Revert("JobNotOpen", jid)
        return jid

    def _check_contest(self, job: J, c: C) -> bytes:
        jid = job.jid
        if job.slot >= RING or self.slots[job.consumer][job.slot] != contested_slot(job, c):
            raise Revert("JobNotOpen", jid)
        return jid

    def _seed(self, jid: bytes, from_block: int) -> bytes:
        """JobMarket._seed: keccak256(jobId, blockhash(fromBlock), prevrandao) within DRAW_WINDOW
        blocks after fromBlock (every sender here is an externally owned account)."""
        if self.block <= from_block:
            raise Revert("TooEarly", from_block + 1)
        if self.block > from_block + DRAW_WINDOW:
            raise Revert("DrawExpired", from_block)
        return keccak(jid + self.hashes[from_block] + self.prevrandao)

    # -- market: a job
    def open_job(self, sender: str, slot: int, model: bytes, group: bytes, prompt: bytes, max_tokens: int,
                 cap: int) -> list:
        if max_tokens == 0 or max_tokens > MAX_TOKENS_LIMIT:
            raise Revert("BadMaxTokens", max_tokens)
        if cap == 0:
            raise Revert("ZeroPriceCap")
        if slot >= RING:
            raise Revert("SlotBusy", slot)
        if self.slots[sender][slot] not in (ZERO32, CLOSED):
            raise Revert("SlotBusy", slot)
        job = J(sender, slot, model, group, prompt, max_tokens, cap, self.block)
        self.slots[sender][slot] = job.hash()
        self.jobs[job.jid] = Rec(job, "open")
        return [("JobOpened", {"jobId": job.jid, "consumer": sender, "modelHash": model, "slot": slot, "group": group,
                               "promptHash": prompt, "maxTokens": max_tokens, "priceCap": cap})]

    def draw_seats(self, sender: str, job: J) -> list:
        jid = self._check_open(job)
        if job.drawn_at != 0:
            raise Revert("AlreadyDrawn", jid)
        seed = self._seed(jid, job.open_block)
        found = self.draw(pool_key(job.model, job.group), seed, FIRST_SEATS, job.price_cap, job.max_tokens, True,
                          job.consumer, job.max_tokens * job.price_cap * (FIRST_SEATS + 1), [job.consumer])
        if len(found) < FIRST_SEATS:
            raise Revert("NotEnoughProviders", len(found), FIRST_SEATS)
        seats = tuple(p for p, _ in found) + (ZERO_ADDR,) * 2
        prices = tuple(q for _, q in found) + (0, 0)
        drawn = job._replace(drawn_at=self.now, seed=seed, seats=seats, prices=prices)
        self.slots[job.consumer][job.slot] = drawn.hash()
        self.jobs[jid].job = drawn
        return [("SeatsDrawn", {"jobId": jid, "seed": seed, "drawnAt": self.now, "seats": seats[:3],
                                "prices": prices[:3]})]

    def add_seat(self, sender: str, job: J) -> list:
        jid = self._check_open(job)
        if sender != job.consumer:
            raise Revert("NotConsumer")
        if job.drawn_at == 0:
            raise Revert("NotDrawn", jid)
        if self.now >= job.drawn_at + self.env.delivery:
            raise Revert("TooLate", job.drawn_at + self.env.delivery)
        n = job.n_seats
        if n == 5:
            raise Revert("SeatsFull")
        found = self.draw(pool_key(job.model, job.group), keccak(job.seed + _w(n) + self.prevrandao), 1, job.price_cap,
                          job.max_tokens,
                          True, job.consumer, job.max_tokens * job.price_cap, [*job.seats[:n], job.consumer])
        if not found:
            raise Revert("NotEnoughProviders", 0, 1)
        nxt = job.with_seat(n, *found[0])
        self.slots[job.consumer][job.slot] = nxt.hash()
        self.jobs[jid].job = nxt
        return [("SeatAdded", {"jobId": jid, "seat": n, "provider": found[0][0], "price": found[0][1]})]

    def expire(self, sender: str, job: J) -> list:
        jid = self._check_open(job)
        if job.drawn_at != 0:
            raise Revert("AlreadyDrawn", jid)
        if self.block <= job.open_block + DRAW_WINDOW:
            raise Revert("TooEarly", job.open_block + DRAW_WINDOW + 1)
        self.slots[job.consumer][job.slot] = CLOSED
        self.jobs[jid].status = "closed"
        return [("JobSettled", {"jobId": jid, "outcome": REFUNDED, "present": 0, "paid": (0,) * 5, "slashMask": 0,
                                "refund": 0})]

    def settle(self, sender: str, job: J, results: list) -> list:
        """results[i]: None (r = vs = 0) or (outputHash, tokenCount, valid signature by seat i?)."""
        jid = self._check_open(job)
        if sender != job.consumer:
            raise Revert("NotConsumer")
        if job.drawn_at == 0:
            raise Revert("NotDrawn", jid)
        claim_end = job.drawn_at + self.env.delivery + self.env.claim
        if self.now >= claim_end + self.env.reveal:
            raise Revert("TooLate", claim_end + self.env.reveal)
        outputs, counts, present, slashed = [ZERO32] * 5, [0] * 5, 0, 0
        commits = self.commits.get(jid, [ZERO32] * 5)
        for i in range(5):
            if job.seats[i] == ZERO_ADDR:
                continue
            r = results[i] if i < len(results) else None
            if r is None:
                if self.now < claim_end:
                    raise Revert("MissingResult", i)
                if commits[i] != ZERO32:
                    raise Revert("AlreadyCommitted", i)
                continue
            if not r[2]:
                raise Revert("BadSignature", i)
            outputs[i], counts[i] = r[0], r[1]
            if r[1] > job.max_tokens:
                slashed |= 1 << i
            else:
                present |= 1 << i
        return self._conclude(jid, job, outputs, counts, present, slashed)

    def commit_result(self, sender: str, job: J, seat: int, commitment_: bytes) -> list:
        jid = self._check_open(job)
        if seat >= 5 or job.seats[seat] == ZERO_ADDR:
            raise Revert("BadSeat", seat)
        if sender != job.seats[seat]:
            raise Revert("NotSeat", seat)
        delivery_end = job.drawn_at + self.env.delivery
        if self.now < delivery_end:
            raise Revert("TooEarly", delivery_end)
        if self.now >= delivery_end + self.env.claim:
            raise Revert("TooLate", delivery_end + self.env.claim)
        commits = self.commits.setdefault(jid, [ZERO32] * 5)
        if commits[seat] != ZERO32:
            raise Revert("AlreadyCommitted", seat)
        if commitment_ == ZERO32:
            raise Revert("ZeroCommitment")
        commits[seat] = commitment_
        return [("ResultCommitted", {"jobId": jid, "seat": seat, "provider": sender, "commitment": commitment_})]

    def reveal_result(self, sender: str, job: J, seat: int, output: bytes, count: int, salt: bytes) -> list:
        jid = self._check_open(job)
        if seat >= 5 or job.seats[seat] == ZERO_ADDR:
            raise Revert("BadSeat", seat)
        claim_end = job.drawn_at + self.env.delivery + self.env.claim
        if self.now < claim_end:
            raise Revert("TooEarly", claim_end)
        if self.now >= claim_end + self.env.reveal:
            raise Revert("TooLate", claim_end + self.env.reveal)
        c = self.commits.get(jid, [ZERO32] * 5)[seat]
        if c == ZERO32:
            raise Revert("NoCommitment", seat)
        reveals = self.reveals.setdefault(jid, [None] * 5)
        if reveals[seat] is not None:
            raise Revert("AlreadyRevealed", seat)
        if commitment(jid, seat, job.seats[seat], output, count, salt) != c:
            raise Revert("CommitmentMismatch", seat)
        reveals[seat] = (output, count)
        return [("ResultRevealed", {"jobId": jid, "seat": seat, "provider": job.seats[seat], "outputHash": output,
                                    "tokenCount": count})]

    def finalize(self, sender: str, job: J) -> list:
        jid = self._check_open(job)
        if job.drawn_at == 0:
            raise Revert("NotDrawn", jid)
        claim_end = job.drawn_at + self.env.delivery + self.env.claim
        commits = self.commits.get(jid, [ZERO32] * 5)
        any_commit = any(c != ZERO32 for c in commits)
        opens = claim_end + self.env.reveal if any_commit else claim_end
        if self.now < opens:
            raise Revert("TooEarly", opens)
        outputs, counts, present, slashed = [ZERO32] * 5, [0] * 5, 0, 0
        reveals = self.reveals.get(jid, [None] * 5)
        for i in range(5):
            if reveals[i] is not None:
                outputs[i], counts[i] = reveals[i]
                if counts[i] > job.max_tokens:
                    slashed |= 1 << i
                else:
                    present |= 1 << i
            elif commits[i] != ZERO32:
                slashed |= 1 << i
        if any_commit:
            self.commits.pop(jid, None)
            self.reveals.pop(jid, None)
        return self._conclude(jid, job, outputs, counts, present, slashed)

    @staticmethod
    def _majority(outputs: list, counts: list, present: int) -> tuple:
        seats = [i for i in range(5) if present >> i & 1]
        if all((outputs[i], counts[i]) == (outputs[seats[0]], counts[seats[0]]) for i in seats):
            return len(seats), len(seats), present, False
        best, best_mask, tie = 0, 0, False
        for i in seats:
            mask = sum(1 << k for k in seats if (outputs[k], counts[k]) == (outputs[i], counts[i]))
            n = bin(mask).count("1")
            if n > best:
                best, best_mask, tie = n, mask, False
            elif n == best and mask != best_mask:
                tie = True
        return len(seats), best, best_mask, tie

    def _conclude(self, jid: bytes, job: J, outputs: list, counts: list, present: int, slashed: int) -> list:
        valid, best, best_mask, tie = self._majority(outputs, counts, present)
        agreed = valid >= 2 and best == valid
        outcome = REFUNDED if valid == 0 else AGREED
        events: list = []
        if (agreed or valid == 0) and slashed == 0:
            # the fast path: registry.payOut, nothing locked
            self.slots[job.consumer][job.slot] = CLOSED
            self.jobs[jid].status = "closed"
            pays = tuple(counts[i] * job.prices[i] if best_mask >> i & 1 else 0 for i in range(5))
            held = job.held
            for i in range(5):
                if pays[i]:
                    self.acc[job.seats[i]][OWED] += pays[i]
            self.credit[job.consumer] += held - sum(pays)
            return [("JobSettled", {"jobId": jid, "outcome": outcome, "present": present, "paid": pays, "slashMask": 0,
                                    "refund": held - sum(pays)})]
        if agreed or valid == 0:
            locks = self._lock_seats(job, slashed, events)
            c = C(tuple(outputs), tuple(counts), present, slashed, best_mask, 0, locks)
            return events + self._close(jid, job, outcome, c, best_mask, 0, 0, None, 0)
        locks = self._lock_seats(job, present | slashed, events)
        # a strict majority (more than half the valid results, two or more) of fully backed seats
        provisional = 0
        if not tie and best * 2 > valid:
            provisional = sum(1 << i for i in range(5) if best_mask >> i & 1
                              and locks[i] >= self.env.lock_for(job.max_tokens, job.prices[i]))
            backed = bin(provisional).count("1")
            if backed < 2 or backed * 2 <= valid:
                provisional = 0
        c = C(tuple(outputs), tuple(counts), present, slashed, provisional, self.now, locks)
        self.slots[job.consumer][job.slot] = contested_slot(job, c)
        rec = self.jobs[jid]
        rec.status, rec.contest = "contested", c
        return events + [("JobContested", {"jobId": jid, "contest": c.event()})]

    def _close(self, jid: bytes, job: J, outcome: int, c: C, pay_mask: int, share: int, from_bond: int,
               d: list | None, bond: int) -> list:
        """JobMarket._close then ProviderRegistry.close: release locks, pay, slash (burn), pay the
        revealed jurors, refund the bond's rest and the escrow's rest."""
        self.slots[job.consumer][job.slot] = CLOSED
        self.jobs[jid].status = "closed"
        held = job.held + bond
        pays = tuple(c.counts[i] * job.prices[i] if pay_mask >> i & 1 else 0 for i in range(5))
        jurors = [ZERO_ADDR] * 3
        if share:
            jurors = [d[D_JURORS][j] if d[D_REVEALED] >> j & 1 else ZERO_ADDR for j in range(3)]
        jury_paid = share * sum(j != ZERO_ADDR for j in jurors)
        disputer = d[D_DISPUTER] if d is not None else ZERO_ADDR
        bond_refund = bond - from_bond
        refund = held - sum(pays) - jury_paid - bond_refund
        events: list = []
        burn = 0
        for i in range(5):
            p = job.seats[i]
            if p == ZERO_ADDR:
                continue
            a = self.acc[p]
            a[LOCKED] -= c.locks[i]
            a[OWED] += pays[i]
            if c.slashed >> i & 1 and c.locks[i]:
                a[STAKE] -= c.locks[i]
                burn += c.locks[i]
                events.append(("Slashed", {"provider": p, "jobId": jid, "amount": c.locks[i]}))
            self._sync(p)
        if share:
            for j in jurors:
                if j != ZERO_ADDR:
                    self.acc[j][OWED] += share
        assert refund >= 0, "the model pays out more than the job holds"
        self.credit[job.consumer] += refund
        if bond_refund:
            self.credit[disputer] += bond_refund
        self.bal[self.env.registry] -= burn
        self.supply -= burn
        self.burned += burn
        events.append(("JobSettled", {"jobId": jid, "outcome": outcome, "present": c.present, "paid": pays,
                                      "slashMask": c.slashed, "refund": refund}))
        if disputer != ZERO_ADDR:
            events.append(("JuryPaid", {"jobId": jid, "jurors": tuple(jurors), "share": share,
                                        "bondRefund": bond_refund}))
        return events

    # -- market: the court
    def dispute(self, sender: str, job: J, c: C, request: bytes) -> list:
        jid = self._check_contest(job, c)
        if self.now >= c.contested_at + self.env.dispute:
            raise Revert("TooLate", c.contested_at + self.env.dispute)
        d = self.disputes.get(jid)
        if d is not None and d[D_DISPUTER] != ZERO_ADDR:
            raise Revert("AlreadyDisputed", jid)
        if sender != job.consumer and not any(job.seats[i] == sender and c.present >> i & 1 for i in range(5)):
            raise Revert("NotAParty")
        if keccak(request) != job.prompt:
            raise Revert("RequestMismatch")
        if job.fee < self.env.min_jury_fee:
            raise Revert("DisputeTooSmall", job.fee, self.env.min_jury_fee)
        self._collect(sender, job.fee)
        d = self.disputes.setdefault(jid, new_dispute())
        d[D_DISPUTER], d[D_BLOCK] = sender, self.block
        return [("DisputeOpened", {"jobId": jid, "disputer": sender, "bond": job.fee, "request": request})]

    def draw_jury(self, sender: str, job: J, c: C) -> list:
        jid = self._check_contest(job, c)
        d = self.disputes.get(jid)
        if d is None or d[D_DISPUTER] == ZERO_ADDR:
            raise Revert("NoDispute", jid)
        if d[D_JURY_AT] != 0 or d[D_VOID]:
            raise Revert("NoJury", jid)
        seed = keccak(abi_encode(["bytes32", "string"], [self._seed(jid, d[D_BLOCK]), "jury"]))
        exclude = [*job.seats, job.consumer, d[D_DISPUTER]]
        found = self.draw(pool_key(job.model, job.group), seed, self.env.jury, 0, 0, False, ZERO_ADDR, 0, exclude)
        if len(found) < self.env.jury and job.group != ZERO32:
            # a private mesh too small for a full jury: the model's open market
            found = self.draw(pool_key(job.model, ZERO32), seed, self.env.jury, 0, 0, False, ZERO_ADDR, 0, exclude)
        jurors = [ZERO_ADDR] * 3
        if len(found) < self.env.jury:
            d[D_VOID] = True
        else:
            jurors = [p for p, _ in found] + [ZERO_ADDR] * (3 - len(found))
            d[D_JURY_AT], d[D_JURORS] = self.now, list(jurors)
        return [("JuryDrawn", {"jobId": jid, "jurors": tuple(jurors)})]

    def post_evidence(self, sender: str, job: J, c: C, seat: int, text_hash: bytes, tokens: bytes) -> list:
        jid = self._check_contest(job, c)
        d = self.disputes.get(jid) or new_dispute()
        if d[D_JURY_AT] == 0:
            raise Revert("NoJury", jid)
        if self.now >= d[D_JURY_AT] + self.env.court:
            raise Revert("TooLate", d[D_JURY_AT] + self.env.court)
        if seat >= 5 or not c.present >> seat & 1:
            raise Revert("BadSeat", seat)
        if len(tokens) != c.counts[seat] * 4 or keccak(text_hash + keccak(tokens)) != c.outputs[seat]:
            raise Revert("EvidenceMismatch", seat)
        d[D_EVIDENCE] |= 1 << seat
        return [("EvidencePosted", {"jobId": jid, "seat": seat, "textHash": text_hash, "tokens": tokens})]

    def _juror(self, sender: str, jid: bytes) -> tuple:
        d = self.disputes.get(jid) or new_dispute()
        if d[D_JURY_AT] == 0:
            raise Revert("NoJury", jid)
        if sender not in d[D_JURORS]:
            raise Revert("NotJuror")
        return d, d[D_JURORS].index(sender)

    def commit_vote(self, sender: str, jid: bytes, commitment_: bytes) -> list:
        d, j = self._juror(sender, jid)
        opens = d[D_JURY_AT] + self.env.court
        if self.now < opens:
            raise Revert("TooEarly", opens)
        if self.now >= opens + self.env.court:
            raise Revert("TooLate", opens + self.env.court)
        if commitment_ == ZERO32:
            raise Revert("ZeroCommitment")
        if d[D_COMMITS][j] != ZERO32:
            raise Revert("AlreadyCommitted", j)
        d[D_COMMITS][j] = commitment_
        return [("VoteCommitted", {"jobId": jid, "juror": sender})]

    def reveal_vote(self, sender: str, jid: bytes, verdicts: int, salt: bytes) -> list:
        d, j = self._juror(sender, jid)
        opens = d[D_JURY_AT] + 2 * self.env.court
        if self.now < opens:
            raise Revert("TooEarly", opens)
        if self.now >= opens + self.env.court:
            raise Revert("TooLate", opens + self.env.court)
        if d[D_REVEALED] >> j & 1:
            raise Revert("AlreadyRevealed", j)
        if vote_commitment(jid, sender, verdicts, salt) != d[D_COMMITS][j]:
            raise Revert("CommitmentMismatch", j)
        d[D_VERDICTS][j] = verdicts
        d[D_REVEALED] |= 1 << j
        return [("VoteRevealed", {"jobId": jid, "juror": sender, "verdicts": verdicts})]

    def resolve(self, sender: str, job: J, c: C) -> list:
        jid = self._check_contest(job, c)
        d = self.disputes.get(jid) or new_dispute()
        disputer = d[D_DISPUTER]
        if disputer == ZERO_ADDR or d[D_VOID]:
            if disputer == ZERO_ADDR and self.now < c.contested_at + self.env.dispute:
                raise Revert("TooEarly", c.contested_at + self.env.dispute)
            bond = 0 if disputer == ZERO_ADDR else job.fee
            return self._close(jid, job, PROVISIONAL, c, c.provisional, 0, 0, d, bond)
        if d[D_JURY_AT] == 0:
            if self.block <= d[D_BLOCK] + DRAW_WINDOW:
                raise Revert("NoJury", jid)
            return self._close(jid, job, PROVISIONAL, c, c.provisional, 0, 0, d, job.fee)
        court_end = d[D_JURY_AT] + 3 * self.env.court
        if self.now < court_end:
            raise Revert("TooEarly", court_end)
        # judged: a tally per present seat over the jurors who revealed
        n_jurors = sum(j != ZERO_ADDR for j in d[D_JURORS])
        need = n_jurors // 2 + 1
        paid, slashed = 0, c.slashed
        for i in range(5):
            if not c.present >> i & 1:
                continue
            votes = [d[D_VERDICTS][j] >> (2 * i) & 3 for j in range(3) if d[D_REVEALED] >> j & 1]
            hard, soft = votes.count(HARD), votes.count(SOFT)
            if not d[D_EVIDENCE] >> i & 1 or hard >= need:
                slashed |= 1 << i
            elif hard + soft < need:
                paid |= 1 << i
        seat = next((i for i in range(5) if job.seats[i] == disputer and c.present >> i & 1), 5)
        own = 1 << seat if seat < 5 else 0
        # a disputer found wrong itself never wins, whatever else the jury found
        won = slashed & own == 0 and (
            slashed & c.present & ~own != 0 or (own != 0 and paid & own != 0 and c.provisional & own == 0)
            or (disputer == job.consumer and c.provisional & ~paid != 0))
        share = job.fee // n_jurors
        revealed = bin(d[D_REVEALED]).count("1")
        return self._close(jid, job, JUDGED, c._replace(slashed=slashed), paid, share, 0 if won else share * revealed,
                           d, job.fee)
# ============================================================================ steps

@dataclass
class Step:
    desc: str
    sender: Any  # LocalAccount
    contract: str  # "token" | "registry" | "market"
    fn: str
    args: tuple
    model: Callable[[Model], list]
    slow: Callable[[], Any] | None = None  # the same operation through mesh.market.MarketClient
    tag: str = ""  # a finer kind for the coverage table
    force: bool = False  # the drain sends it even when the model predicts a revert
    randao: bool = False  # a draw: modelled once its block (and so its prevrandao) is mined


@dataclass
class Advance:
    to: int  # the timestamp the next transaction will run at

    @property
    def desc(self) -> str:
        return f"advance: next transaction at t={self.to}"


@dataclass
class Mine:
    blocks: int  # blocks mined at once (anvil_mine), one second apart

    @property
    def desc(self) -> str:
        return f"mine {self.blocks} blocks"


@dataclass(frozen=True)
class Out:
    """An output a seat may sign: its hash, token count and the evidence behind it."""

    hash: bytes
    count: int
    text_hash: bytes
    tokens: bytes


@dataclass
class Meta:
    """What the generator remembers of a job (never what the model predicts from)."""

    request: bytes
    outs: list  # [A, B, C]: A the honest output
    commits: dict = field(default_factory=dict)  # seat -> (output, count, salt)
    votes: dict = field(default_factory=dict)  # juror -> (verdicts, salt)
    play: bool | None = None  # whether the drain plays the court (evidence, votes) or lets it lapse
    woke: bool = False  # whether the consumer already tried to settle during the drain's claims
    drain_drew: bool = False  # whether the drain tried this job's draw (of seats or jury)


def _short(b: bytes) -> str:
    return b.hex()[:8]


def make_out(rng: random.Random, count: int) -> Out:
    text = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(0, 12)))
    tokens = [rng.randrange(2**32) for _ in range(count)]
    return Out(output_hash(text, tokens), count, keccak(text.encode()), pack_tokens(tokens))


class Generator:
    """Random operations with valid and invalid arguments, biased by the model's state and the
    sequence's flavor towards the next step of each job's life."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.flavor = "mixed"
        self.meta: dict[bytes, Meta] = {}
        mk = h.market
        self.P = [p.address for p in mk.providers]
        self.C1, self.C2, self.O = mk.consumer.address, mk.consumer2.address, mk.outsider.address
        self.X = [a.address for a in h.extra]
        self.all = list(h.env.accounts)
        self.deployer = mk.deployer.address

    def acct(self, address: str):
        return self.h.acct[address]

    def name(self, address: str) -> str:
        return self.h.names.get(address, address[:8])

    def step(self, desc: str, sender: str, contract: str, fn: str, args: tuple, model, slow=None, tag="",
             randao: bool = False, force: bool = False) -> Step:
        return Step(desc, self.acct(sender), contract, fn, args, model, slow, tag, force, randao)

    # -- the next natural operations
    def pick(self, rng: random.Random, m: Model) -> list:
        f, t, e = self.flavor, m.clock + 1, m.env
        cands: list = []

        def add(w: float, fn: Callable, *a) -> None:
            if w > 0:
                cands.append((w, fn, a))

        live = m.live()
        n_live = len(live)
        add({"mixed": 8, "agreed": 12, "claims": 8, "court": 10, "expire": 10}[f] / (1 + 3 * n_live) + 0.5,
            self.g_open)
        court = f == "court"
        for rec in live:
            j = rec.job
            if rec.status == "open" and j.drawn_at == 0:
                drawable = self.would_succeed(m, lambda t: t.draw_seats(j.consumer, j))
                expire = f == "expire"
                add(3 if expire else 25 if drawable else 1.5, self.g_draw, rec)
                add(12 if expire else 0.2 if drawable else 1, self.g_mine, rec)
                add(6 if expire else 0.5, self.g_expire, rec)
                add(0.5, rng.choice([self.g_settle, self.g_add_seat, self.g_finalize, self.g_commit]), rec)
                continue
            if rec.status == "open":
                de = j.drawn_at + e.delivery
                ce, re_ = de + e.claim, de + e.claim + e.reveal
                commits = m.commits.get(j.jid, [ZERO32] * 5)
                uncommitted = [i for i in range(j.n_seats) if commits[i] == ZERO32]
                unrevealed = [i for i in range(5) if commits[i] != ZERO32 and (m.reveals.get(j.jid) or [None] * 5)[i] is None]
                # at a deadline to the second: the operations whose window closes or opens there
                if t == de:
                    add(5, self.g_add_seat, rec)
                    add(3, self.g_commit, rec)
                elif t == ce:
                    add(6, self.g_commit, rec)
                    add(3, self.g_reveal, rec)
                elif t == re_:
                    add(4, self.g_settle, rec)
                    add(4, self.g_reveal, rec)
                if t < de:
                    add({"agreed": 25, "court": 25, "claims": 3}.get(f, 10), self.g_settle, rec)
                    add(3 * court + 0.5, self.g_thin, rec)
                    add(4 + 3 * (f == "agreed") + 4 * (court and j.n_seats < 4), self.g_add_seat, rec)
                    add(1 + 18 * (f == "claims"), self.g_advance_to, rng.choice([de, de, de - 1, de + 1]))
                    add(1, self.g_commit, rec)
                elif t < ce:
                    add(3 + 20 * bool(uncommitted) * (f == "claims"), self.g_commit, rec)
                    add(4, self.g_settle, rec)
                    add(1, self.g_add_seat, rec)
                    add(1, self.g_reveal, rec)
                    add(2 + 10 * (not uncommitted or (f != "claims" and len(uncommitted) < j.n_seats)),
                        self.g_advance_to, rng.choice([ce, ce, ce - 1]))
                elif t < re_:
                    add(2 + 25 * bool(unrevealed), self.g_reveal, rec)
                    add(10 if f == "claims" else 6 + 6 * court, self.g_settle, rec)
                    add(4, self.g_finalize, rec)
                    add(1, self.g_commit, rec)
                    add(3 + 6 * (not unrevealed), self.g_advance_to, rng.choice([re_, re_, re_ - 1]))
                else:
                    add(25, self.g_finalize, rec)
                    add(1.5, self.g_settle, rec)
                    add(0.5, self.g_reveal, rec)
                continue
            # contested
            c = rec.contest
            d = m.disputes.get(j.jid) or new_dispute()
            end = c.contested_at + e.dispute
            if t == end:
                add(5, self.g_dispute, rec)
            if d[D_JURY_AT]:
                ja, cp = d[D_JURY_AT], e.court
                if t == ja + cp:
                    add(4, self.g_evidence, rec)
                    add(4, self.g_commit_vote, rec)
                elif t == ja + 2 * cp:
                    add(4, self.g_commit_vote, rec)
                    add(4, self.g_reveal_vote, rec)
                elif t == ja + 3 * cp:
                    add(4, self.g_reveal_vote, rec)
            if d[D_DISPUTER] == ZERO_ADDR:
                if t < end:
                    add(4 + 22 * court, self.g_dispute, rec)
                    add(1, self.g_resolve, rec)
                    add(2 + 3 * (not court), self.g_advance_to, rng.choice([end, end, end - 1]))
                    add(0.5, self.g_draw_jury, rec)
                else:
                    add(20, self.g_resolve, rec)
                    add(1, self.g_dispute, rec)
                continue
            if d[D_VOID]:
                add(20, self.g_resolve, rec)
                add(1, self.g_draw_jury, rec)
                continue
            if d[D_JURY_AT] == 0:
                add(25, self.g_draw_jury, rec)
                add(1, self.g_resolve, rec)
                add(0.4, self.g_mine, rec)
                add(1, self.g_evidence, rec)
                add(0.5, self.g_dispute, rec)
                continue
            ja, cp = d[D_JURY_AT], e.court
            jurors = [x for x in d[D_JURORS] if x != ZERO_ADDR]
            if t < ja + cp:
                missing = [i for i in range(5) if c.present >> i & 1 and not d[D_EVIDENCE] >> i & 1]
                add(3 + 20 * bool(missing), self.g_evidence, rec)
                add(1, self.g_commit_vote, rec)
                add(2 + 12 * (not missing), self.g_advance_to, rng.choice([ja + cp, ja + cp, ja + cp - 1]))
                add(1, self.g_resolve, rec)
            elif t < ja + 2 * cp:
                todo = [x for x in jurors if d[D_COMMITS][d[D_JURORS].index(x)] == ZERO32]
                add(3 + 20 * bool(todo), self.g_commit_vote, rec)
                add(1, self.g_evidence, rec)
                add(1, self.g_reveal_vote, rec)
                add(2 + 12 * (not todo), self.g_advance_to, rng.choice([ja + 2 * cp, ja + 2 * cp - 1]))
            elif t < ja + 3 * cp:
                todo = [x for i, x in enumerate(d[D_JURORS]) if x != ZERO_ADDR and d[D_COMMITS][i] != ZERO32
                        and not d[D_REVEALED] >> i & 1]
                add(3 + 20 * bool(todo), self.g_reveal_vote, rec)
                add(1, self.g_commit_vote, rec)
                add(1, self.g_resolve, rec)
                add(2 + 12 * (not todo), self.g_advance_to, rng.choice([ja + 3 * cp, ja + 3 * cp - 1]))
            else:
                add(25, self.g_resolve, rec)
                add(1, self.g_reveal_vote, rec)
        reg = {"mixed": 4, "agreed": 1, "claims": 0.12, "court": 0.12, "expire": 0.5}[f]
        for fn, w in ((self.g_register, 5), (self.g_invite, 2), (self.g_deregister, 1.5), (self.g_stake, 4), (self.g_unstake, 5),
                      (self.g_withdraw_stake, 2), (self.g_withdraw_earnings, 3), (self.g_deposit, 3),
                      (self.g_withdraw_credit, 3), (self.g_mint, 1), (self.g_approve, 1.5)):
            add(w * reg, fn)
        add(1 + 2 * (f == "mixed"), self.g_advance)
        w, fns = zip(*[(w, (fn, a)) for w, fn, a in cands])
        fn, a = rng.choices(fns, weights=w)[0]
        out = fn(rng, m, *a)
        return out if isinstance(out, list) else [out]

    # -- helpers
    @staticmethod
    def would_succeed(m: Model, op: Callable[[Model], list]) -> bool:
        """Whether the model says `op` succeeds as the next transaction (to steer, never to check)."""
        trial = m.clone()
        trial.now, trial.block = m.clock + 1, m.number + 1
        try:
            op(trial)
        except Revert:
            return False
        return True

    @staticmethod
    def eligible(m: Model, consumer: str, model_: bytes, group: bytes, max_tokens: int, cap: int) -> int:
        """How many pool members a seat draw could accept (whatever the seed)."""
        e = m.env
        return sum(1 for p, price, free in m.pools.get(pool_key(model_, group), [])
                   if p != consumer and free and price <= cap and e.lock_for(max_tokens, price) * e.lock_share <= free)

    def any_sender(self, rng: random.Random) -> str:
        return rng.choice(self.all)

    def pass_job(self, rng: random.Random, m: Model, rec: Rec, p_bad: float = 0.06) -> J:
        """The job as last seen, or now and then a stale, tampered or other job (JobNotOpen)."""
        j = rec.job
        if rng.random() >= p_bad:
            return j
        kind = rng.randrange(6)
        if kind == 0:
            return j._replace(price_cap=j.price_cap + 1)
        if kind == 1:
            return j._replace(slot=rng.choice([16, 255, (j.slot + 1) % RING]))
        if kind == 2 and j.drawn_at:
            return j._replace(drawn_at=0, seed=ZERO32, seats=(ZERO_ADDR,) * 5, prices=(0,) * 5)  # before the draw
        if kind == 3 and j.n_seats:
            return j._replace(prices=(j.prices[0] + 1,) + j.prices[1:])
        if kind == 4:
            others = [r.job for r in m.jobs.values() if r.job.jid != j.jid]
            if others:
                return rng.choice(others)
        return j._replace(prompt=keccak(j.prompt))

    def pass_contest(self, rng: random.Random, rec: Rec, p_bad: float = 0.05) -> C:
        c = rec.contest
        if c is None:
            return C((ZERO32,) * 5, (0,) * 5, 0, 0, 0, 0, (0,) * 5)
        if rng.random() >= p_bad:
            return c
        kind = rng.randrange(3)
        if kind == 0:
            return c._replace(provisional=c.provisional ^ 1)
        if kind == 1:
            return c._replace(contested_at=c.contested_at + 10**6)  # a later dispute window
        return c._replace(locks=(c.locks[0] + 1,) + c.locks[1:])

    def sign_result(self, rng: random.Random, m: Model, signer: str, jid: bytes, out: bytes, count: int) -> tuple:
        """(r, vs) of an EIP-712 Result signed by `signer`."""
        if rng.random() < 0.15:
            claim = ResultClaim(jid, out, count).sign(self.acct(signer), m.env.chain_id, m.env.market)
            return compact_signature(claim.signature)
        digest = keccak(b"\x19\x01" + m.env.domain + keccak(RESULT_TYPEHASH + jid + out + _w(count)))
        sig = self.acct(signer)._key_obj.sign_msg_hash(digest)
        return _w(sig.r), _w(sig.v << 255 | sig.s)

    # -- jobs
    def g_open(self, rng: random.Random, m: Model) -> Step:
        r = rng.random()
        sender = self.C1 if r < 0.6 else self.C2 if r < 0.85 else rng.choice([self.P[0], self.X[0], self.O])
        slots = m.slots[sender]
        free = [i for i in range(RING) if slots[i] in (ZERO32, CLOSED)]
        busy = [i for i in range(RING) if i not in free]
        r = rng.random()
        if busy and r < 0.08:
            slot = rng.choice(busy)
        elif r < 0.1:
            slot = rng.choice([16, 17, 255])
        else:
            slot = rng.choice(free[:3]) if free else 0
        r = rng.random()
        model_, group = ((MODEL, ZERO32) if r < 0.88 else (MODEL, GROUP) if r < 0.94 else (OTHER_MODEL, ZERO32)
                         if r < 0.98 else (keccak(b"nobody's model"), ZERO32))
        max_tokens = rng.choices([1, 3, 20, 100, 5000, MAX_TOKENS_LIMIT, 0, MAX_TOKENS_LIMIT + 1],
                                 weights=[6, 10, 20, 20, 6, 3, 1, 1] if self.flavor != "court" else
                                 [1, 1, 6, 30, 6, 2, 0.5, 0.5])[0]  # a dispute needs minJuryFee
        cap = rng.choices([9, 10, 12, 15, 30, 1000, 2**40, 0], weights=[3, 20, 8, 6, 6, 2, 0.15, 0.6])[0]
        if self.flavor != "expire" and self.eligible(m, sender, model_, group, max_tokens, cap) < 3 and rng.random() < 0.8:
            # a job nobody can serve ends only by expiring, 256 blocks later (the costliest path):
            # keep it rare outside the "expire" flavor
            model_, group, cap = MODEL, ZERO32, 10
        request = b"request " + rng.randbytes(8)
        prompt = keccak(request) if rng.random() < 0.97 else keccak(b"another request")
        n = min(max_tokens, 6) if max_tokens else 1
        jid = keccak(_a(sender) + _w(m.number + 1) + _w(slot))
        self.meta[jid] = Meta(request, [make_out(rng, rng.randint(0, n)) for _ in range(3)])
        args = (slot, model_, group, prompt, max_tokens, cap)
        return self.step(f"openJob by {self.name(sender)}: slot {slot} pool {POOL_NAMES.get(pool_key(model_, group), '?')}"
                         f" maxTokens {max_tokens} cap {cap}", sender, "market", "openJob", args,
                         lambda t: t.open_job(sender, *args))

    def g_draw(self, rng: random.Random, m: Model, rec: Rec) -> Step:
        sender = rec.job.consumer if rng.random() < 0.7 else self.any_sender(rng)
        job = self.pass_job(rng, m, rec)
        return self.step(f"drawSeats {_short(job.jid)} by {self.name(sender)}", sender, "market", "drawSeats",
                         (job.abi(),), lambda t: t.draw_seats(sender, job), randao=True)

    def g_add_seat(self, rng: random.Random, m: Model, rec: Rec) -> Step:
        sender = rec.job.consumer if rng.random() < 0.93 else self.any_sender(rng)
        job = self.pass_job(rng, m, rec)
        return self.step(f"addSeat {_short(job.jid)} by {self.name(sender)}", sender, "market", "addSeat",
                         (job.abi(),), lambda t: t.add_seat(sender, job), randao=True)

    def g_expire(self, rng: random.Random, m: Model, rec: Rec) -> Step:
        sender = self.any_sender(rng)
        job = self.pass_job(rng, m, rec)
        return self.step(f"expire {_short(job.jid)} by {self.name(sender)}", sender, "market", "expire",
                         (job.abi(),), lambda t: t.expire(sender, job))

    def g_mine(self, rng: random.Random, m: Model, rec: Rec | None = None) -> Mine:
        """Blocks up to the draw window's end (DRAW_WINDOW blocks after the job's open block, or its
        dispute's block): the next transaction one block before, at or after the boundary."""
        base = rec.job.open_block if rec is not None else m.number
        if rec is not None and rec.status == "contested":
            base = m.disputes[rec.job.jid][D_BLOCK]
        target = base + DRAW_WINDOW + rng.choice([0, 0, 1, 1, 2])  # the next transaction's block
        return Mine(max(target - 1 - m.number, 1))

    def g_settle(self, rng: random.Random, m: Model, rec: Rec, kind: str | None = None) -> Step:
        j = rec.job
        meta = self.meta[j.jid]
        A, B, Cc = meta.outs
        sender = j.consumer if rng.random() < 0.95 else self.any_sender(rng)
        n = j.n_seats
        lie = (keccak(b"lie"), j.max_tokens + rng.choice([1, 1, 2**20]))
        f = self.flavor
        kinds = ["agree", "agree_lie", "majority", "split", "single", "none", "missing", "bad", "tie", "half",
                 "commit_aware"]
        four = n == 4
        weights = {"agreed": [14, 3, 3, 2, 1, 1, 1, 2, 1, four, 1],
                   "court": [1, 1, 8, 4, 3, 0.5, 0.5, 1, 3 * four, 3 * four, 1]}.get(
            f, [6, 2, 4, 2, 1, 1, 1, 2, 1, four, 2])
        if m.clock + 1 >= j.drawn_at + m.env.delivery + m.env.claim:
            weights = weights[:-1] + [25]  # after the claim window: leave seats out, knowing the commitments
        kind = kind or rng.choices(kinds, weights=weights)[0]
        plan: list = []
        for i in range(n):
            if kind == "agree":
                plan.append(("ok", A.hash, A.count))
            elif kind == "agree_lie":
                plan.append(("ok", *lie) if i == rng.randrange(n) else ("ok", A.hash, A.count))
            elif kind == "majority":
                plan.append(("ok", B.hash, B.count) if i == n - 1 else ("ok", A.hash, A.count))
            elif kind == "half":
                o = (A, A, B, Cc, A)[i]  # with four seats: two of four agree, not a strict majority
                plan.append(("ok", o.hash, o.count))
            elif kind == "tie":
                o = (A, B)[i % 2]  # with four seats: two against two, no majority
                plan.append(("ok", o.hash, o.count))
            elif kind == "split":
                o = (A, B, Cc)[i % 3]
                plan.append(("ok", o.hash, o.count))
            elif kind == "single":
                plan.append(("ok", A.hash, A.count) if i == 0 else rng.choice([("ok", *lie), ("missing",)]))
            elif kind == "none":
                plan.append(rng.choice([("missing",), ("ok", *lie)]))
            elif kind == "missing":
                plan.append(("missing",) if rng.random() < 0.4 else ("ok", A.hash, A.count))
            elif kind == "bad":
                plan.append(("ok", A.hash, A.count))
            else:
                # leave out only seats that did not commit, as a careful consumer would (a careless one
                # now and then leaves out a committed seat: AlreadyCommitted)
                commits = m.commits.get(j.jid, [ZERO32] * 5)
                keep = commits[i] != ZERO32 or rng.random() < 0.5
                plan.append(("ok", A.hash, A.count) if keep else ("missing",))
        committed = [i for i in range(n) if m.commits.get(j.jid, [ZERO32] * 5)[i] != ZERO32]
        if kind == "commit_aware" and committed and rng.random() < 0.5:
            plan[rng.choice(committed)] = ("missing",)  # a careless consumer: AlreadyCommitted
        if kind == "bad" and n:
            i = rng.randrange(n)
            plan[i] = ("bad", rng.choice(["signer", "job", "count", "high_s", "garbage"]), A.hash, A.count)
        results, model_results = [], []
        for i, p in enumerate(plan):
            if p[0] == "missing":
                results.append(ResultClaim.missing())
                model_results.append(None)
            elif p[0] == "ok":
                results.append((p[1], p[2], *self.sign_result(rng, m, j.seats[i], j.jid, p[1], p[2])))
                model_results.append((p[1], p[2], True))
            else:
                how, out, count = p[1], p[2], p[3]
                signer, jid_signed, count_signed = j.seats[i], j.jid, count
                if how == "signer":
                    signer = rng.choice([a for a in self.all if a != j.seats[i]])
                elif how == "job":
                    jid_signed = keccak(jid_signed)
                elif how == "count":
                    count_signed = count + 1
                r_, vs = self.sign_result(rng, m, signer, jid_signed, out, count_signed)
                if how == "high_s":
                    v, s = int.from_bytes(vs, "big") >> 255, int.from_bytes(vs, "big") & (2**255 - 1)
                    vs = _w((1 - v) << 255 | (SECP256K1_N - s))  # the same signature with high s: refused
                elif how == "garbage":
                    r_, vs = rng.randbytes(32), rng.randbytes(32)
                results.append((out, count, r_, vs))
                model_results.append((out, count, False))
        r = rng.random()
        if r < 0.05 and results:
            results, model_results = results[:-1], model_results[:-1]  # past the end: missing
        elif r < 0.1:
            results.append((A.hash, A.count, rng.randbytes(32), rng.randbytes(32)))  # beyond the seats: ignored
        job = self.pass_job(rng, m, rec, 0.04)
        return self.step(f"settle {_short(job.jid)} by {self.name(sender)}: {kind} {[p[0] for p in plan]}", sender,
                         "market", "settle", (job.abi(), results),
                         lambda t: t.settle(sender, job, model_results), tag=kind)

    def g_commit(self, rng: random.Random, m: Model, rec: Rec) -> Step:
        j = rec.job
        meta = self.meta[j.jid]
        n = j.n_seats
        commits = m.commits.get(j.jid, [ZERO32] * 5)
        open_seats = [i for i in range(n) if commits[i] == ZERO32]
        r = rng.random()
        seat = (rng.choice(open_seats) if open_seats and r < 0.9 else rng.randrange(n) if n and r < 0.97
                else rng.choice([n, 5, 255]))
        provider = j.seats[seat] if seat < 5 else ZERO_ADDR
        sender = provider if provider != ZERO_ADDR and rng.random() < 0.92 else self.any_sender(rng)
        A, B, _ = meta.outs
        out, count = rng.choices([(A.hash, A.count), (B.hash, B.count), (keccak(b"lie"), j.max_tokens + 1)],
                                 weights=[8, 2, 1])[0]
        salt = rng.randbytes(32)
        c = commitment(j.jid, seat, provider, out, count, salt) if seat < 5 else rng.randbytes(32)
        if rng.random() < 0.03:
            c = ZERO32
        if seat < 5 and c != ZERO32 and commits[seat] == ZERO32:
            meta.commits[seat] = (out, count, salt)
        job = self.pass_job(rng, m, rec, 0.03)
        return self.step(f"commitResult {_short(job.jid)} seat {seat} by {self.name(sender)}", sender, "market",
                         "commitResult", (job.abi(), seat, c), lambda t: t.commit_result(sender, job, seat, c))

    def g_reveal(self, rng: random.Random, m: Model, rec: Rec) -> Step:
        j = rec.job
        meta = self.meta[j.jid]
        commits = m.commits.get(j.jid, [ZERO32] * 5)
        reveals = m.reveals.get(j.jid, [None] * 5)
        todo = [i for i in range(5) if commits[i] != ZERO32 and reveals[i] is None]
        r = rng.random()
        seat = rng.choice(todo) if todo and r < 0.9 else rng.randrange(max(j.n_seats, 1)) if r < 0.98 else 7
        out, count, salt = meta.commits.get(seat, (meta.outs[0].hash, meta.outs[0].count, ZERO32))
        r = rng.random()
        if r < 0.06:
            salt = rng.randbytes(32)
        elif r < 0.1:
            count += 1
        sender = self.any_sender(rng)
        job = self.pass_job(rng, m, rec, 0.03)
        return self.step(f"revealResult {_short(job.jid)} seat {seat} by {self.name(sender)}", sender, "market",
                         "revealResult", (job.abi(), seat, out, count, salt),
                         lambda t: t.reveal_result(sender, job, seat, out, count, salt))

    def g_finalize(self, rng: random.Random, m: Model, rec: Rec) -> Step:
        sender = self.any_sender(rng)
        job = self.pass_job(rng, m, rec, 0.03)
        return self.step(f"finalize {_short(job.jid)} by {self.name(sender)}", sender, "market", "finalize",
                         (job.abi(),), lambda t: t.finalize(sender, job))

    # -- the court
    def g_dispute(self, rng: random.Random, m: Model, rec: Rec) -> Step:
        j, c = rec.job, rec.contest
        present = [j.seats[i] for i in range(5) if c is not None and c.present >> i & 1]
        r = rng.random()
        sender = (j.consumer if r < 0.5 or not present else rng.choice(present) if r < 0.92
                  else self.any_sender(rng))
        request = self.meta[j.jid].request if rng.random() < 0.94 else b"not the request"
        job, cc = self.pass_job(rng, m, rec, 0.03), self.pass_contest(rng, rec)
        who = "consumer" if sender == j.consumer else "seat" if sender in present else "other"
        return self.step(f"dispute {_short(job.jid)} by {self.name(sender)} ({who})", sender, "market", "dispute",
                         (job.abi(), cc.abi(), request), lambda t: t.dispute(sender, job, cc, request), tag=who)

    def g_draw_jury(self, rng: random.Random, m: Model, rec: Rec) -> Step:
        sender = self.any_sender(rng)
        job, cc = self.pass_job(rng, m, rec, 0.03), self.pass_contest(rng, rec)
        return self.step(f"drawJury {_short(job.jid)} by {self.name(sender)}", sender, "market", "drawJury",
                         (job.abi(), cc.abi()), lambda t: t.draw_jury(sender, job, cc), randao=True)

    def g_evidence(self, rng: random.Random, m: Model, rec: Rec, seat: int | None = None,
                   valid: bool = False) -> Step:
        j, c = rec.job, rec.contest
        meta = self.meta[j.jid]
        d = m.disputes.get(j.jid) or new_dispute()
        todo = [i for i in range(5) if c.present >> i & 1 and not d[D_EVIDENCE] >> i & 1]
        r = rng.random()
        if seat is None:
            seat = rng.choice(todo) if todo and r < 0.9 else rng.randrange(5) if r < 0.98 else 9
        by_hash = {o.hash: o for o in meta.outs}
        o = by_hash.get(c.outputs[seat] if seat < 5 else ZERO32) or meta.outs[0]
        text_hash, tokens = o.text_hash, o.tokens
        r = 1.0 if valid else rng.random()
        if r < 0.04:
            tokens += b"\x00\x00\x00\x01"
        elif r < 0.08:
            text_hash = keccak(text_hash)
        sender = self.any_sender(rng)
        p_bad = 0 if valid else 0.02
        job, cc = self.pass_job(rng, m, rec, p_bad), self.pass_contest(rng, rec, p_bad)
        return self.step(f"postEvidence {_short(job.jid)} seat {seat} by {self.name(sender)}", sender, "market",
                         "postEvidence", (job.abi(), cc.abi(), seat, text_hash, tokens),
                         lambda t: t.post_evidence(sender, job, cc, seat, text_hash, tokens))

    def g_commit_vote(self, rng: random.Random, m: Model, rec: Rec, juror: str | None = None) -> Step:
        j, c = rec.job, rec.contest
        meta = self.meta[j.jid]
        d = m.disputes.get(j.jid) or new_dispute()
        jurors = [x for x in d[D_JURORS] if x != ZERO_ADDR]
        todo = [x for x in jurors if d[D_COMMITS][d[D_JURORS].index(x)] == ZERO32]
        r = rng.random()
        sender = juror or (rng.choice(todo) if todo and r < 0.9 else rng.choice(jurors) if jurors and r < 0.95
                           else self.any_sender(rng))
        honest = {meta.outs[0].hash}
        verdicts = 0
        for i in range(5):
            if c.present >> i & 1:
                good = c.outputs[i] in honest
                v = rng.choices([PASS, SOFT, HARD, 3], weights=[8, 1, 1, 0.3] if good else [2, 2, 6, 0.3])[0]
                verdicts |= v << (2 * i)
        salt = rng.randbytes(32)
        cm = vote_commitment(j.jid, sender, verdicts, salt) if juror or rng.random() > 0.03 else ZERO32
        if sender in todo and cm != ZERO32:
            meta.votes[sender] = (verdicts, salt)
        jid = j.jid if juror or rng.random() > 0.02 else keccak(j.jid)
        return self.step(f"commitVote {_short(jid)} by {self.name(sender)}", sender, "market", "commitVote",
                         (jid, cm), lambda t: t.commit_vote(sender, jid, cm))

    def g_reveal_vote(self, rng: random.Random, m: Model, rec: Rec, juror: str | None = None) -> Step:
        j = rec.job
        meta = self.meta[j.jid]
        d = m.disputes.get(j.jid) or new_dispute()
        todo = [x for i, x in enumerate(d[D_JURORS]) if x != ZERO_ADDR and d[D_COMMITS][i] != ZERO32
                and not d[D_REVEALED] >> i & 1]
        jurors = [x for x in d[D_JURORS] if x != ZERO_ADDR]
        r = rng.random()
        sender = juror or (rng.choice(todo) if todo and r < 0.9 else rng.choice(jurors) if jurors and r < 0.96
                           else self.any_sender(rng))
        verdicts, salt = meta.votes.get(sender, (0, ZERO32))
        if not juror and rng.random() < 0.05:
            verdicts ^= 1
        return self.step(f"revealVote {_short(j.jid)} by {self.name(sender)}: {verdicts:#x}", sender, "market",
                         "revealVote", (j.jid, verdicts, salt), lambda t: t.reveal_vote(sender, j.jid, verdicts, salt))

    def g_resolve(self, rng: random.Random, m: Model, rec: Rec) -> Step:
        sender = self.any_sender(rng)
        job, cc = self.pass_job(rng, m, rec, 0.03), self.pass_contest(rng, rec, 0.03)
        return self.step(f"resolve {_short(job.jid)} by {self.name(sender)}", sender, "market", "resolve",
                         (job.abi(), cc.abi()), lambda t: t.resolve(sender, job, cc))

    def claim_steps(self, rng: random.Random, m: Model, rec: Rec) -> list:
        """The seats' valid claim steps of a job's current window (for the drain): commits, reveals."""
        j = rec.job
        meta = self.meta[j.jid]
        commits = m.commits.get(j.jid, [ZERO32] * 5)
        steps = []
        claim_end = j.drawn_at + m.env.delivery + m.env.claim
        if claim_end <= m.clock + 1 < claim_end + m.env.reveal and not meta.woke and rng.random() < 0.4:
            meta.woke = True
            step = self.g_settle(rng, m, rec, kind="commit_aware")  # the consumer wakes up
            step.force = True  # careless or not
            steps.append(step)
        for i in range(j.n_seats):
            if commits[i] == ZERO32 and rng.random() < 0.7:
                out, count, salt = rng.choice(meta.outs[:2]).hash, 0, rng.randbytes(32)
                count = next(o.count for o in meta.outs if o.hash == out)
                c = commitment(j.jid, i, j.seats[i], out, count, salt)
                steps.append(self.step(f"commitResult {_short(j.jid)} seat {i} (drain)", j.seats[i], "market",
                                       "commitResult", (j.abi(), i, c),
                                       lambda t, i=i, c=c, out=out, count=count, salt=salt:
                                       self._remember(t.commit_result(j.seats[i], j, i, c), meta, i, (out, count, salt))))
            elif commits[i] != ZERO32 and i in meta.commits and rng.random() < 0.9:
                out, count, salt = meta.commits[i]
                steps.append(self.step(f"revealResult {_short(j.jid)} seat {i} (drain)", j.seats[i], "market",
                                       "revealResult", (j.abi(), i, out, count, salt),
                                       lambda t, i=i, out=out, count=count, salt=salt:
                                       t.reveal_result(j.seats[i], j, i, out, count, salt)))
        return steps

    @staticmethod
    def _remember(events: list, meta: Meta, seat: int, claim: tuple) -> list:
        meta.commits[seat] = claim
        return events

    def court_steps(self, rng: random.Random, m: Model, rec: Rec) -> list:
        """The valid court steps of a job's current phase (for the drain): every missing evidence,
        then every juror's vote commit, then every reveal."""
        j, c = rec.job, rec.contest
        d = m.disputes[j.jid]
        steps = []
        for i in range(5):
            if c.present >> i & 1 and not d[D_EVIDENCE] >> i & 1 and rng.random() < 0.9:
                steps.append(self.g_evidence(rng, m, rec, seat=i, valid=True))
        for x in d[D_JURORS]:
            if x != ZERO_ADDR and rng.random() < 0.9:
                steps.append(self.g_commit_vote(rng, m, rec, juror=x))
                steps.append(self.g_reveal_vote(rng, m, rec, juror=x))
        return steps

    # -- time
    def g_advance_to(self, rng: random.Random, m: Model, to: int) -> Advance | list:
        if to <= m.clock + 1:
            return self.g_advance(rng, m)
        return Advance(to)

    def g_advance(self, rng: random.Random, m: Model) -> Advance:
        e, now = m.env, m.clock + 1
        ends = []
        for rec in m.live():
            j = rec.job
            if rec.status == "open" and j.drawn_at:
                de = j.drawn_at + e.delivery
                ends += [de, de + e.claim, de + e.claim + e.reveal]
            elif rec.status == "contested":
                ends.append(rec.contest.contested_at + e.dispute)
                d = m.disputes.get(j.jid)
                if d and d[D_JURY_AT]:
                    ends += [d[D_JURY_AT] + k * e.court for k in (1, 2, 3)]
        ends += [t[1] for t in m.thaw.values() if t[0]]
        ends = [x for x in ends if x > now]
        if ends and rng.random() < 0.85:
            return Advance(min(ends) + rng.choice([-1, 0, 0, 1]) if min(ends) > now + 1 else min(ends))
        return Advance(now + rng.choice([1, 60, 3600]))

    # -- registry
    def g_register(self, rng: random.Random, m: Model, valid: bool = False) -> Step:
        sender = rng.choice(self.P + self.X + [self.C2, self.O, self.P[rng.randrange(4)]])
        r = rng.random()
        model_, group = ((MODEL, ZERO32) if r < 0.6 else (MODEL, GROUP) if r < 0.85 else (OTHER_MODEL, ZERO32))
        manifest = keccak(rng.randbytes(4))
        price = rng.choice([8, 9, 10, 10, 11, 12, 15, 30])
        endpoint = b"/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2HAm" + rng.randbytes(4).hex().encode()
        r = rng.random()
        if not valid and r < 0.1:
            kind = rng.randrange(5)
            if kind == 0:
                model_ = ZERO32
            elif kind == 1:
                manifest = ZERO32
            elif kind == 2:
                price = 0
            elif kind == 3:
                price = U40 + 1
            else:
                endpoint = b"x" * (MAX_ENDPOINT_BYTES + 1)
        elif r < 0.13:
            price = U40  # the largest price a Member entry holds
        args = (model_, manifest, price, group, endpoint.decode())
        slow = None
        if rng.random() < 0.12:
            slow = lambda: self.h.market.mc.register(self.acct(sender), model_, manifest, price,  # noqa: E731
                                                     endpoint.decode(), group)
        return self.step(f"register by {self.name(sender)}: {POOL_NAMES.get(pool_key(model_, group), '?')} at {price}",
                         sender, "registry", "register", args,
                         lambda t: t.register(sender, model_, manifest, price, group, endpoint), slow)

    def g_deregister(self, rng: random.Random, m: Model) -> Step:
        sender = rng.choice(self.P + self.X + [self.C2, self.O])
        slow = None
        if rng.random() < 0.15:
            slow = lambda: self.h.market.mc.deregister(self.acct(sender))  # noqa: E731
        return self.step(f"deregister by {self.name(sender)}", sender, "registry", "deregister", (),
                         lambda t: t.deregister(sender), slow)

    def g_stake(self, rng: random.Random, m: Model) -> Step:
        sender = rng.choice(self.P + self.X + [self.C2, self.O])
        amount = rng.choice([1, 10**6, 3 * 10**6, 5 * 10**7, 10**8, 0, 2**64 - 1 - m.acc[sender][STAKE] + 1,
                             min(m.allow[sender] + 1, U256)])
        return self.step(f"stake {amount} by {self.name(sender)}", sender, "registry", "stake", (amount,),
                         lambda t: t.stake(sender, amount))

    def g_unstake(self, rng: random.Random, m: Model) -> Step:
        # most often a provider that holds a seat: its free stake runs short for a later contest
        seated = [s for r in m.live() for s in r.job.seats if s != ZERO_ADDR]
        sender = rng.choice(seated) if seated and rng.random() < 0.5 else rng.choice(self.P + self.X + [self.O])
        a = m.acc[sender]
        free = a[STAKE] - a[LOCKED]
        amount = rng.choice([free, free, max(free - 10**6, 1), max(free // 2, 1), free + 1, 0, 10**6])
        slow = None
        if rng.random() < 0.12:
            slow = lambda: self.h.market.mc.request_unstake(self.acct(sender), amount)  # noqa: E731
        return self.step(f"requestUnstake {amount} by {self.name(sender)} (free {free})", sender, "registry",
                         "requestUnstake", (amount,), lambda t: t.request_unstake(sender, amount), slow)

    def g_thin(self, rng: random.Random, m: Model, rec: Rec) -> Step:
        """A seat of a drawn job unstakes until its free stake is below its seat's lock: if the job
        is then contested, its lock is partial (and it cannot be paid on a majority)."""
        j = rec.job
        i = rng.randrange(j.n_seats)
        sender = j.seats[i]
        a = m.acc[sender]
        free = a[STAKE] - a[LOCKED]
        lock = m.env.lock_for(j.max_tokens, j.prices[i])
        amount = max(free - rng.choice([0, lock // 2, lock - 1]), 1)
        return self.step(f"requestUnstake {amount} by {self.name(sender)} (seat {i}, free {free}, lock {lock})", sender,
                         "registry", "requestUnstake", (amount,), lambda t: t.request_unstake(sender, amount),
                         tag="thin a seat")

    def empty_jury_pool(self, rng: random.Random, m: Model) -> list:
        """P3, X0 and O unstake all their free stake: seats come from P0-P2 only, and a jury finds
        nobody with stake (a void dispute)."""
        steps = []
        for who in (self.P[3], self.X[0], self.O):
            a = m.acc[who]
            if a[STAKE] - a[LOCKED]:
                amount = a[STAKE] - a[LOCKED]
                steps.append(self.step(f"requestUnstake {amount} by {self.name(who)} (all free)", who, "registry",
                                       "requestUnstake", (amount,), lambda t, who=who, amount=amount:
                                       t.request_unstake(who, amount)))
        return steps

    def g_invite(self, rng: random.Random, m: Model) -> Step:
        admin = m.admin[GROUP]
        sender = admin if admin != ZERO_ADDR and rng.random() < 0.85 else self.any_sender(rng)
        who = rng.choice(self.all)
        admitted = rng.random() < 0.85
        return self.step(f"invite {self.name(who)} to GROUP ({admitted}) by {self.name(sender)}", sender, "registry",
                         "invite", (GROUP, who, admitted), lambda t: t.invite(sender, GROUP, who, admitted))

    def g_withdraw_stake(self, rng: random.Random, m: Model) -> Step:
        thawing = [a for a in self.all if m.thaw[a][0]]
        sender = rng.choice(thawing) if thawing and rng.random() < 0.8 else self.any_sender(rng)
        return self.step(f"withdrawStake by {self.name(sender)}", sender, "registry", "withdrawStake", (),
                         lambda t: t.withdraw_stake(sender))

    def g_withdraw_earnings(self, rng: random.Random, m: Model) -> Step:
        owed = [a for a in self.all if m.acc[a][OWED]]
        sender = rng.choice(owed) if owed and rng.random() < 0.8 else self.any_sender(rng)
        slow = None
        if rng.random() < 0.15:
            slow = lambda: self.h.market.mc.withdraw_earnings(self.acct(sender))  # noqa: E731
        return self.step(f"withdrawEarnings by {self.name(sender)}", sender, "registry", "withdrawEarnings", (),
                         lambda t: t.withdraw_earnings(sender), slow)

    def g_deposit(self, rng: random.Random, m: Model) -> Step:
        sender = rng.choice([self.C1, self.C2, self.C1, self.O, self.P[0]])
        amount = rng.choice([1, 10**6, 10**8, 10**9, 0, min(m.allow[sender] + 1, U256)])
        return self.step(f"deposit {amount} by {self.name(sender)}", sender, "registry", "deposit", (amount,),
                         lambda t: t.deposit(sender, amount))

    def g_withdraw_credit(self, rng: random.Random, m: Model) -> Step:
        has = [a for a in self.all if m.credit[a]]
        sender = rng.choice(has) if has and rng.random() < 0.8 else self.any_sender(rng)
        slow = None
        if rng.random() < 0.15:
            slow = lambda: self.h.market.mc.withdraw_credit(self.acct(sender))  # noqa: E731
        return self.step(f"withdrawCredit by {self.name(sender)}", sender, "registry", "withdrawCredit", (),
                         lambda t: t.withdraw_credit(sender), slow)

    def g_mint(self, rng: random.Random, m: Model) -> Step:
        sender = self.deployer if rng.random() < 0.85 else self.any_sender(rng)
        to = self.any_sender(rng)
        amount = rng.choice([10**6, 10**9, U64 - m.supply + 1])
        return self.step(f"mint {amount} to {self.name(to)} by {self.name(sender)}", sender, "token", "mint",
                         (to, amount), lambda t: t.mint(sender, to, amount))

    def g_approve(self, rng: random.Random, m: Model) -> Step:
        sender = self.any_sender(rng)
        amount = rng.choice([0, 10**6, 10**9, 10**11, U256])
        return self.step(f"approve {amount} by {self.name(sender)}", sender, "token", "approve",
                         (m.env.registry, amount), lambda t: t.approve(sender, amount))
# ============================================================================ harness

@dataclass
class Base:
    """The running sequence: its model, the last chain state read, and what the events said."""

    model: Model
    state: dict
    supply: int
    minted_events: int = 0
    burned_events: int = 0


OUTCOME_NAMES = ("agreed", "provisional", "judged", "refunded")


class Harness:
    def __init__(self, market, extra: list) -> None:
        self.market = market
        chain = market.chain
        self.rpc = Rpc(market.url)
        self.codec = Codec(chain)
        self.extra = extra
        self.tx = FastSender(self.rpc, self.codec, chain.decoder, chain.chain_id)
        accts = list(market.providers) + [market.consumer, market.consumer2, market.outsider] + extra
        self.acct = {a.address: a for a in accts + [market.deployer]}
        self.names = {p.address: f"P{i}" for i, p in enumerate(market.providers)}
        self.names.update({market.consumer.address: "C1", market.consumer2.address: "C2",
                           market.outsider.address: "O", market.deployer.address: "deployer", ZERO_ADDR: "0"})
        self.names.update({a.address: f"X{i}" for i, a in enumerate(extra)})
        p = chain.deployment.params
        market_addr = chain.market.address
        self.env = Env(
            token=chain.token.address, registry=chain.registry.address, market=market_addr,
            deployer=market.deployer.address, accounts=tuple(a.address for a in accts), chain_id=chain.chain_id,
            thaw=p.thaw_period, min_lock=p.min_job_lock, ratio=p.collateral_ratio, weight_cap=p.weight_cap,
            lock_share=p.max_lock_share, delivery=p.delivery_window, claim=p.claim_window, reveal=p.reveal_window,
            dispute=p.dispute_window, court=p.court_phase, jury=p.jury_size, min_jury_fee=p.min_jury_fee,
            domain=keccak(abi_encode(["bytes32", "bytes32", "bytes32", "uint256", "address"], [
                keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak(b"Meshmarket"), keccak(b"2"), chain.chain_id, market_addr])))
        self._static_reads = self._build_static_reads()
        try:
            self.rpc.call("eth_simulateV1", [{"blockStateCalls": [{"calls": []}]}, "latest"])
            self.simulate = True
        except RpcError:
            self.simulate = False
        self.outside = 0  # tokens held by accounts the test does not use (set from the first read)
        self.counts: Counter = Counter()
        self.n_ops = self.n_tx = 0
        self.findings: list[str] = []

    # -- state reads: one JSON-RPC batch of eth_calls
    def _build_static_reads(self) -> list:
        c, e = self.codec, self.env
        reads = [(("supply",), "token", c.data("token", "totalSupply", ()))]
        for a in e.holders:
            reads.append((("bal", a), "token", c.data("token", "balanceOf", (a,))))
        for a in e.accounts:
            reads.append((("allow", a), "token", c.data("token", "allowance", (a, e.registry))))
            reads.append((("acc", a), "registry", c.data("registry", "accounts", (a,))))
            reads.append((("lst", a), "registry", c.data("registry", "listings", (a,))))
            reads.append((("thaw", a), "registry", c.data("registry", "thaws", (a,))))
            reads.append((("credit", a), "registry", c.data("registry", "credit", (a,))))
            reads.append((("slots", a), "market", c.data("market", "slotsOf", (a,))))
            for g in GROUPS:
                reads.append((("invited", g, a), "registry", c.data("registry", "invited", (g, a))))
        for g in GROUPS:
            reads.append((("admin", g), "registry", c.data("registry", "groupAdmin", (g,))))
        return [(k, self.codec.address[to], d) for k, to, d in reads]

    def read_state(self, pools: dict, job_ids) -> dict:
        """The whole observable state; pool members as far as the model expects them (a different
        pool size shows in ("psize", pool))."""
        c = self.codec
        reads = list(self._static_reads)
        reg, mkt = c.address["registry"], c.address["market"]
        for pool, members in pools.items():
            reads.append((("psize", pool), reg, c.data("registry", "poolSize", (pool,))))
            for i in range(len(members)):
                reads.append((("member", pool, i), reg, c.data("registry", "poolMember", (pool, i))))
        for jid in job_ids:
            reads.append((("commits", jid), mkt, c.data("market", "commitments", (jid,))))
            reads.append((("reveals", jid), mkt, c.data("market", "reveals", (jid,))))
            reads.append((("dispute", jid), mkt, c.data("market", "disputes", (jid,))))
        calls = [{"to": to, "data": d} for _, to, d in reads]
        if self.simulate:
            # one eth_simulateV1 of all the calls on top of the latest block: ~40% cheaper than a
            # JSON-RPC batch of eth_calls (no per-call request handling)
            sim = self.rpc.call("eth_simulateV1", [{"blockStateCalls": [{"calls": calls}]}, "latest"])
            results = [c["returnData"] if c["status"] == "0x1" else None for c in sim[0]["calls"]]
        else:
            results = self.rpc.batch([("eth_call", [c, "latest"]) for c in calls])
        state = {}
        for (key, _, _), res in zip(reads, results):
            if res is None:
                state[key] = None  # the call reverted (a pool entry that is not there)
                continue
            raw = bytes.fromhex(res[2:])
            words = tuple(int.from_bytes(raw[i:i + 32], "big") for i in range(0, len(raw), 32))
            if key[0] == "member":
                words = words[:3]  # its `touched` block: one operation a block here, so never the draw's own
            state[key] = words if len(words) > 1 else words[0]
        return state

    def read_model_state(self, m: Model) -> dict:
        return self.read_state(m.pools, list(m.jobs))

    def latest_block(self) -> tuple[int, int]:
        b = self.rpc.call("eth_getBlockByNumber", ["latest", False])
        return int(b["number"], 16), int(b["timestamp"], 16)

    # -- checks
    def check(self, m: Model, state: dict, base: Base) -> None:
        """The invariants on the chain's own numbers (with the jobs as the events told them), then
        the whole state against the model."""
        e = m.env
        reg = e.registry
        acc = {a: state[("acc", a)] for a in e.accounts}
        stake = sum(v[STAKE] for v in acc.values())
        owed = sum(v[OWED] for v in acc.values())
        thawing = sum(state[("thaw", a)][0] for a in e.accounts)
        credit = sum(state[("credit", a)] for a in e.accounts)
        held = 0
        for rec in m.live():
            if rec.status == "open" and rec.job.drawn_at:
                held += rec.job.held
            elif rec.status == "contested":
                held += rec.job.held + (rec.job.fee if state[("dispute", rec.job.jid)][0] else 0)
        # 1. the registry holds exactly what it owes
        assert state[("bal", reg)] == stake + thawing + owed + credit + held, (
            f"invariant 1: registry balance {state[('bal', reg)]} != stake {stake} + thawing {thawing} + owed {owed}"
            f" + credit {credit} + held by jobs {held}")
        # 2. the market never holds tokens
        assert state[("bal", e.market)] == 0, f"invariant 2: market holds {state[('bal', e.market)]}"
        # 3. supply changes only by mint and burn (= the Slashed amounts)
        supply = state[("supply",)]
        assert supply == base.supply + base.minted_events - base.burned_events, (
            f"invariant 3: supply {supply} != initial {base.supply} + minted {base.minted_events}"
            f" - burned (Slashed) {base.burned_events}")
        assert (base.burned_events, base.minted_events) == (m.burned, m.minted), (
            f"invariant 3: events say minted {base.minted_events} burned {base.burned_events}, "
            f"the model {m.minted} / {m.burned}")
        assert sum(state[("bal", a)] for a in e.holders) + self.outside == supply, (
            "invariant 3: tokens went to an account outside the known holders")
        # 4. locks: locked <= stake, and locked == the locks recorded in contested jobs' contests
        locks: Counter = Counter()
        for rec in m.live():
            if rec.status == "contested":
                for i in range(5):
                    locks[rec.job.seats[i]] += rec.contest.locks[i]
        for a in e.accounts:
            s, locked = acc[a][STAKE], acc[a][LOCKED]
            assert locked <= s, f"invariant 4: {self.names[a]} locked {locked} > stake {s}"
            assert locked == locks[a], (
                f"invariant 4: {self.names[a]} locked {locked} != contested jobs' locks {locks[a]}")
        # 5. every pool entry mirrors its account: (provider, price, min(stake - locked, 2^32 - 1))
        for key, v in state.items():
            if key[0] != "member" or v is None:
                continue
            p = to_checksum_address("0x%040x" % v[0])
            assert p in acc, f"invariant 5: pool entry of an unknown account {p}"
            a = acc[p]
            want = (int(p, 16), a[PRICE] & U40, min(a[STAKE] - a[LOCKED], U32))
            assert v == want, f"invariant 5: pool entry of {self.names[p]} is {v[1:]}, its account says {want[1:]}"
            lst = state[("lst", p)]
            assert lst[3] == key[2] + 1 and pool_key(_w(lst[0]), _w(lst[2])) == key[1], (
                f"invariant 5: {self.names[p]} sits at pool index {key[2]} but its listing says {lst[3] - 1}")
        want = m.expected_state()
        if state != want:
            diff = {k: (state.get(k), want.get(k)) for k in set(state) | set(want) if state.get(k) != want.get(k)}
            shown = {self._key_name(k): f"chain {v[0]} != model {v[1]}" for k, v in diff.items()}
            raise AssertionError(f"chain state differs from the model: {shown}")

    def _key_name(self, key: tuple) -> str:
        return ".".join(self.names.get(k, POOL_NAMES.get(k, _short(k))) if isinstance(k, (str, bytes)) else str(k)
                        for k in key)

    # -- running one step
    def _mined(self, m: Model, receipt, ts: int) -> None:
        number = receipt["blockNumber"]
        number = int(number, 16) if isinstance(number, str) else int(number)
        assert number == m.number + 1, f"mined in block {number}, the model expects {m.number + 1}"
        bh = receipt["blockHash"]
        m.hashes[number] = bytes.fromhex(bh[2:]) if isinstance(bh, str) else bytes(bh)
        m.number, m.clock = number, ts

    def run_step(self, step: Step, base: Base, log: list) -> None:
        m = base.model
        ts = m.clock + 1
        trial = m.clone()
        trial.now, trial.block = ts, m.number + 1

        def predict() -> tuple:
            try:
                return step.model(trial), None
            except Revert as r:
                return None, (r.name, r.error_args)

        got = receipt = None
        if step.randao:
            # a draw's seed takes the prevrandao of its own block, known once the block is mined:
            # the model predicts from it (and from nothing else of the chain's answer)
            receipt, err = self.tx.send(step.sender, step.contract, step.fn, step.args, ts)
            if err is not None:
                got = (err.name or str(err), tuple(err.error_args))
            block = self.rpc.call("eth_getBlockByNumber", [hex(m.number + 1), False])
            trial.prevrandao = bytes.fromhex(block["mixHash"][2:])
        expected, want = predict()
        log.append(f"{step.desc}  [model: {want[0] if want else 'ok'}]")
        if step.randao:
            pass  # sent above
        elif step.slow is not None:
            try:
                receipt = step.slow()
            except ContractReverted as exc:
                got = (exc.name or str(exc), tuple(exc.error_args))  # refused by estimateGas: nothing mined
            self.tx.nonces[step.sender.address] = int(
                self.rpc.call("eth_getTransactionCount", [step.sender.address, "latest"]), 16)
            if receipt is not None:
                assert self.latest_block()[1] == ts, "block not mined at the time set"
        else:
            receipt, err = self.tx.send(step.sender, step.contract, step.fn, step.args, ts)
            if err is not None:
                got = (err.name or str(err), tuple(err.error_args))
        self.n_ops += 1
        self.n_tx += receipt is not None
        self.counts[f"{step.fn}:{got[0] if got else 'ok'}"] += 1
        if step.tag:
            self.counts[f"  {step.fn}[{step.tag}]:{got[0] if got else 'ok'}"] += 1
        if step.slow is not None:
            self.counts["  (via mesh.market.MarketClient)"] += 1
        if got != want:
            raise AssertionError(f"{step.fn}: the model expects {want or 'success'}, the chain says {got or 'success'}")
        if want is None:
            events = self.codec.decode_logs(receipt["logs"])
            self._check_events(base, m, trial, events, expected)
            base.model = trial
        if receipt is not None:
            self._mined(base.model, receipt, ts)
        state = self.read_model_state(base.model)
        if want is not None:
            before = {k: v for k, v in base.state.items()}
            assert state == before, (
                f"a reverted operation changed the state: "
                f"{ {self._key_name(k): (before.get(k), state.get(k)) for k in state if before.get(k) != state[k]} }")
        self.check(base.model, state, base)
        base.state = state

    def _check_events(self, base: Base, before: Model, after: Model, events: list, expected: list) -> None:
        ours = [(n, a) for k, n, a in events if k in ("registry", "market")]
        assert [n for n, _ in ours] == [n for n, _ in expected], (
            f"events {[n for n, _ in ours]} != expected {[n for n, _ in expected]}")
        settled = None
        for (name, got), (_, want) in zip(ours, expected):
            bad = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
            assert not bad, f"{name} event differs (chain, model): {bad}"
            jid = got.get("jobId")
            if name == "JobOpened":
                # mesh.protocol reads the job back from the event exactly as the model built it
                job = Job.from_event(got, after.block)
                assert job.hash() == after.jobs[jid].job.hash() and job.job_id == jid
            elif name == "SeatsDrawn":
                pj = before.jobs[jid].job.protocol_job().drawn(got["seed"], got["drawnAt"], got["seats"], got["prices"])
                assert pj.hash() == after.jobs[jid].job.hash()
                self.counts[f"  draw: {sum(1 for s in got['seats'] if s in self.extra_addrs)} of the light providers"] += 1
            elif name == "JobContested":
                c = Contest.from_event(got["contest"])
                job = after.jobs[jid].job
                self.counts["  settled -> contested"] += 1
                if c.provisional:
                    self.counts["  settled -> contested with a provisional majority"] += 1
                if any(c.locks[i] < before.env.lock_for(job.max_tokens, job.prices[i])
                       for i in range(5) if (c.present | c.slashed) >> i & 1):
                    self.counts["  settled -> contested with a partial lock"] += 1
                # mesh.market computes the contested slot as the market stores it
                assert c.slot_hash(job.protocol_job()) == contested_slot(job, after.jobs[jid].contest)
            elif name == "JuryDrawn":
                n = sum(1 for j in got["jurors"] if j != ZERO_ADDR)
                job = before.jobs[jid].job
                where = "" if job.group == ZERO32 or not n or all(
                    any(p == j for p, _, _ in before.pools.get(pool_key(job.model, job.group), []))
                    for j in got["jurors"] if j != ZERO_ADDR) else " (from the open market)"
                self.counts[f"  jury of {n}{where}" if n else "  jury: none found (void)"] += 1
            elif name == "ThawReclaimed":
                self.counts["  lock backed by reclaimed thawing stake"] += 1
            elif name == "JobSettled":
                rec = before.jobs[jid]
                d = before.disputes.get(jid)
                bond = rec.job.fee if rec.status == "contested" and d is not None and d[D_DISPUTER] != ZERO_ADDR else 0
                settled = (got, rec.job.held if rec.job.drawn_at else 0, bond)
                kind = OUTCOME_NAMES[got["outcome"]] + (" + slash" if got["slashMask"] else "")
                self.counts[f"  settled -> {kind}"] += 1
            elif name == "JuryPaid":
                jury = got["share"] * sum(1 for j in got["jurors"] if j != ZERO_ADDR)
                s, h, bond = settled
                # 6. what a closed job pays out is exactly what it held
                assert sum(s["paid"]) + s["refund"] + jury + got["bondRefund"] == h + bond, (
                    f"invariant 6: paid {s['paid']} + refund {s['refund']} + jury {jury} + bond refund "
                    f"{got['bondRefund']} != held {h} + bond {bond}")
                settled = None
                self.counts["  jury paid from the bond" if got["bondRefund"] < bond else
                            "  bond returned"] += 1
        if settled is not None:
            s, h, bond = settled
            assert bond == 0 and sum(s["paid"]) + s["refund"] == h, (
                f"invariant 6: paid {s['paid']} + refund {s['refund']} != held {h} (bond {bond})")
        base.burned_events += sum(a["amount"] for k, n, a in events if k == "registry" and n == "Slashed")
        base.minted_events += sum(a["value"] for k, n, a in events
                                  if k == "token" and n == "Transfer" and int(a["from"], 16) == 0)

    def advance(self, adv: Advance, base: Base, log: list) -> None:
        """Mine one block one second before `adv.to`, so the next transaction runs at adv.to."""
        log.append(adv.desc)
        m = base.model
        assert adv.to - 1 >= m.clock
        self.rpc.call("evm_mine", [adv.to - 1])
        m.number += 1
        m.clock = adv.to - 1
        self.n_ops += 1
        self.counts["advance"] += 1

    def mine(self, op: Mine, base: Base, log: list) -> None:
        log.append(op.desc)
        m = base.model
        self.rpc.call("anvil_mine", [hex(op.blocks)])  # one second apart, like every block here
        m.number += op.blocks
        m.clock += op.blocks
        self.n_ops += 1
        self.counts["mine blocks"] += 1

    def run_op(self, op, base: Base, log: list) -> None:
        if isinstance(op, Advance):
            self.advance(op, base, log)
        elif isinstance(op, Mine):
            self.mine(op, base, log)
        else:
            self.run_step(op, base, log)

    def drain(self, gen: Generator, rng: random.Random, base: Base, log: list) -> None:
        """Advance past every window, close every job (draw or expire, finalize, draw the jury,
        resolve), withdraw everything; then nothing may be left but stake."""
        log.append("-- drain")
        e = base.model.env
        for _ in range(40):
            m = base.model
            live = m.live()
            if not live:
                break
            targets, need_blocks, acted = [], 0, False
            for rec in live:
                j = rec.job
                m = base.model
                if rec.status == "open" and j.drawn_at == 0:
                    meta = gen.meta[j.jid]
                    cands = [gen.step(f"expire {_short(j.jid)} (drain)", j.consumer, "market", "expire",
                                      (j.abi(),), lambda t, j=j: t.expire(j.consumer, j))]
                    if not meta.drain_drew and m.number + 1 <= j.open_block + DRAW_WINDOW:
                        # one try at the draw (its outcome depends on the prevrandao to come)
                        meta.drain_drew = True
                        cands.insert(0, gen.step(f"drawSeats {_short(j.jid)} (drain)", j.consumer, "market",
                                                 "drawSeats", (j.abi(),), lambda t, j=j: t.draw_seats(j.consumer, j),
                                                 randao=True, force=True))
                    need_blocks = max(need_blocks, j.open_block + DRAW_WINDOW - m.number)  # next: the first allowed
                elif rec.status == "open":
                    cands = [gen.step(f"finalize {_short(j.jid)} (drain)", gen.any_sender(rng), "market", "finalize",
                                      (j.abi(),), lambda t, j=j: t.finalize(t.env.deployer, j))]
                    ends = [j.drawn_at + e.delivery, j.drawn_at + e.delivery + e.claim,
                            j.drawn_at + e.delivery + e.claim + e.reveal]
                    meta = gen.meta[j.jid]
                    if meta.play is None:
                        meta.play = gen.flavor == "claims" and rng.random() < 0.7  # the seats claim their pay
                    if meta.play:
                        cands[:0] = gen.claim_steps(rng, m, rec)
                        targets.append(next((x for x in ends if x > m.clock + 1), ends[-1]))
                    else:
                        targets.append(ends[-1])
                else:
                    c = rec.contest
                    d = m.disputes.get(j.jid) or new_dispute()
                    cands = [gen.step(f"resolve {_short(j.jid)} (drain)", gen.any_sender(rng), "market", "resolve",
                                      (j.abi(), c.abi()), lambda t, j=j, c=c: t.resolve(t.env.deployer, j, c))]
                    if d[D_DISPUTER] == ZERO_ADDR:
                        targets.append(c.contested_at + e.dispute)
                    elif d[D_JURY_AT]:
                        meta = gen.meta[j.jid]
                        if meta.play is None:
                            meta.play = rng.random() < 0.75  # the parties and jurors play their part
                        ends = [d[D_JURY_AT] + k * e.court for k in (1, 2, 3)]
                        if meta.play:
                            cands[:0] = gen.court_steps(rng, m, rec)
                            targets.append(next((x for x in ends if x > m.clock + 1), ends[-1]))
                        else:
                            targets.append(ends[-1])
                    elif not d[D_VOID]:
                        meta = gen.meta[j.jid]
                        if not meta.drain_drew and m.number + 1 <= d[D_BLOCK] + DRAW_WINDOW:
                            meta.drain_drew = True
                            cands.insert(0, gen.step(f"drawJury {_short(j.jid)} (drain)", gen.any_sender(rng),
                                                     "market", "drawJury", (j.abi(), c.abi()),
                                                     lambda t, j=j, c=c: t.draw_jury(t.env.deployer, j, c),
                                                     randao=True, force=True))
                        need_blocks = max(need_blocks, d[D_BLOCK] + DRAW_WINDOW - m.number)
                for step in cands:
                    if not step.force and not gen.would_succeed(base.model, step.model):
                        continue
                    self.run_step(step, base, log)
                    acted = True
                    break
            if acted:
                continue
            m = base.model
            later = [x for x in targets if x > m.clock + 1]
            if later:
                self.advance(Advance(min(later) + rng.choice([0, 0, 1, 100])), base, log)
            elif need_blocks > 0:
                self.mine(Mine(need_blocks), base, log)
                self.counts["  mine blocks in the drain"] += 1
            else:
                raise AssertionError(f"the drain is stuck: {[r.status for r in live]}")
        m = base.model
        assert not m.live(), "the drain left jobs open"
        thaws = [t[1] for t in m.thaw.values() if t[0]]
        if thaws and max(thaws) > m.clock + 1:
            self.advance(Advance(max(thaws) + rng.choice([0, 1])), base, log)
        for a in e.accounts:
            if base.model.credit[a]:
                self.run_step(gen.step(f"withdrawCredit by {self.names[a]}", a, "registry", "withdrawCredit", (),
                                       lambda t, a=a: t.withdraw_credit(a)), base, log)
            if base.model.acc[a][OWED]:
                self.run_step(gen.step(f"withdrawEarnings by {self.names[a]}", a, "registry", "withdrawEarnings", (),
                                       lambda t, a=a: t.withdraw_earnings(a)), base, log)
            if base.model.thaw[a][0]:
                self.run_step(gen.step(f"withdrawStake by {self.names[a]}", a, "registry", "withdrawStake", (),
                                       lambda t, a=a: t.withdraw_stake(a)), base, log)
        # 7. nothing stuck: the registry holds exactly the remaining stake
        s = base.state
        stake = sum(s[("acc", a)][STAKE] for a in e.accounts)
        assert s[("bal", e.registry)] == stake, (
            f"invariant 7: after the drain the registry holds {s[('bal', e.registry)]}, remaining stake is {stake}")
        for a in e.accounts:
            _, locked, owed, _ = s[("acc", a)]
            assert (locked, owed, s[("thaw", a)][0], s[("credit", a)]) == (0, 0, 0, 0), (
                f"invariant 7: {self.names[a]} still has locked {locked}, owed {owed}, thawing {s[('thaw', a)][0]},"
                f" credit {s[('credit', a)]}")
            assert all(h in (0, 1) for h in s[("slots", a)]), f"invariant 7: {self.names[a]} has a job slot in use"
# ============================================================================ the test

#: Genesis time of the test's own chain: with every block one second after the previous one, the
#: whole chain (block hashes included) is the same on every run, so a seed reproduces exactly.
GENESIS_TIME = 1_900_000_000


def _deploy(w3, deployer, url: str, params: MarketParams, build: Path | None) -> Deployment:
    """contracts.deploy.deploy, from `build` (a directory of artifacts) when given: a mutant."""
    if build is None:
        return deploy(w3, deployer, url, params)
    arts = {n: json.loads((build / f"{n}.json").read_text()) for n in CONTRACT_NAMES}
    token, _ = deploy_contract(w3, deployer, arts["MeshToken"], deployer.address)
    nonce = w3.eth.get_transaction_count(deployer.address, "pending")
    registry, first = deploy_contract(w3, deployer, arts["ProviderRegistry"], token,
                                      get_create_address(deployer.address, nonce + 1), params.thaw_period,
                                      params.min_job_lock, params.collateral_ratio, params.weight_cap,
                                      params.max_lock_share)
    market, receipt = deploy_contract(w3, deployer, arts["JobMarket"], registry, params.delivery_window,
                                      params.claim_window, params.reveal_window, params.dispute_window,
                                      params.court_phase, params.jury_size, params.min_jury_fee)
    block = w3.eth.get_block(receipt["blockNumber"])
    return Deployment(chain_id=w3.eth.chain_id, rpc_url=url, token=token, registry=registry, market=market,
                      block=receipt["blockNumber"], block_hash=block["hash"].to_0x_hex(),
                      deployer=deployer.address, params=params, start_block=first["blockNumber"])


@pytest.fixture(scope="module")
def fixed_market():
    """The `market` fixture's deployment (conftest.market_session: P0-P3 registered and staked,
    two funded consumers, an outsider) on this test's own Anvil, whose chain is deterministic:
    genesis at GENESIS_TIME and one second per block from the first. The session's Anvil cannot
    serve: its earlier blocks carry wall-clock times, so its block hashes, hence every draw, differ
    from run to run. MESH_INVARIANT_BUILD=<dir> deploys the artifacts of <dir> instead of
    contracts/build (to run this test against a deliberately broken copy of the contracts)."""
    node = None
    for _ in range(5):  # a port taken between free_port() and Anvil's bind: try another
        port = free_port()
        proc = subprocess.Popen([str(find_anvil()), "--host", "127.0.0.1", "--port", str(port), "--mnemonic",
                                 DEV_MNEMONIC, "--chain-id", "31337", "--accounts", "10", "--timestamp",
                                 str(GENESIS_TIME)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                rpc_call(f"http://127.0.0.1:{port}", "eth_chainId", timeout=0.5)
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.05)
        if proc.poll() is None:  # ours answers (not another process's node on that port)
            node = AnvilProcess(proc, port)
            break
        proc.wait()
    assert node is not None, "Anvil did not start"
    try:
        number = int(rpc_call(node.url, "eth_blockNumber"), 16)
        assert number == 0, f"the node on port {port} is not a fresh chain (block {number})"
        rpc_call(node.url, "anvil_setBlockTimestampInterval", [1])
        w3 = connect(node.url)
        deployer = dev_account(0)
        build = os.environ.get("MESH_INVARIANT_BUILD")
        chain = Chain(w3, _deploy(w3, deployer, node.url, MarketParams(), Path(build) if build else None))
        mc = MarketClient(chain)
        providers = [dev_account(i) for i in (1, 2, 3, 4)]
        consumer, consumer2, outsider = dev_account(5), dev_account(6), dev_account(7)
        for acct in providers + [consumer, consumer2, outsider]:
            chain.transact(deployer, chain.token.functions.mint(acct.address, FUNDS))
        for i, p in enumerate(providers):
            mc.register(p, MODEL, keccak(b"manifest-%d" % i), FIXTURE_PRICE)
            mc.stake(p, FIXTURE_STAKE)
        for c in (consumer, consumer2):
            chain.ensure_allowance(c, chain.registry.address, FUNDS)
        yield Market(node.url, chain, mc, deployer, providers, consumer, consumer2, outsider)
    finally:
        node.stop()


def prepare(market, extra: list) -> None:
    """Once, before the base snapshot: light providers (stake below the weight cap) and a second pool."""
    chain, mc = market.chain, market.mc
    tok = chain.token.functions
    for a in extra:
        chain.transact(market.deployer, tok.mint(a.address, FUNDS))
    for a in list(market.providers) + [market.outsider] + extra:
        chain.transact(a, tok.approve(chain.registry.address, 10**11))
    x0, x1 = extra
    mc.stake(x0, 6 * 10**7)
    mc.register(x0, MODEL, keccak(b"manifest-x0"), 12)
    mc.stake(x1, 5 * 10**6)
    mc.register(x1, MODEL, keccak(b"manifest-x1"), 9, group=GROUP)
    mc.stake(market.outsider, 2 * 10**8)
    mc.register(market.outsider, MODEL, keccak(b"manifest-o"), 15)
    mc.stake(market.consumer2, 15 * 10**7)
    mc.register(market.consumer2, MODEL, keccak(b"manifest-c2"), 20)
    p3 = market.providers[3]
    mc.request_unstake(p3, FIXTURE_STAKE - 3 * 10**7)
    market.rpc("evm_mine", [market.now() + chain.deployment.params.thaw_period])
    mc.withdraw_stake(p3)


def test_random_operation_sequences_keep_invariants(fixed_market):
    market = fixed_market
    seed = int(os.environ.get("MESH_INVARIANT_SEED", DEFAULT_SEED))
    only = os.environ.get("MESH_INVARIANT_ONLY")
    print(f"\ninvariant test seed {seed} (set MESH_INVARIANT_SEED to change it)")
    extra = [dev_account(8), dev_account(9)]
    prepare(market, extra)
    h = Harness(market, extra)
    h.extra_addrs = {a.address for a in extra} | {market.providers[3].address, market.outsider.address}
    gen = Generator(h)
    try:
        number0, clock0 = h.latest_block()
        pools0 = {pool: [None] * h.read_state({pool: []}, [])[("psize", pool)] for pool in POOL_NAMES}
        state0 = h.read_state(pools0, [])
        h.outside = state0[("supply",)] - sum(state0[("bal", a)] for a in h.env.holders)
        model0 = Model(h.env, state0, clock0, number0)
        nonces0 = {a: int(h.rpc.call("eth_getTransactionCount", [a, "latest"]), 16) for a in h.acct}
        # the deployed parameters are the MarketParams the model uses
        fns_m, fns_r = market.chain.market.functions, market.chain.registry.functions
        assert (fns_m.deliveryWindow().call(), fns_m.claimWindow().call(), fns_m.revealWindow().call(),
                fns_m.disputeWindow().call(), fns_m.courtPhase().call(), fns_m.jurySize().call(),
                fns_m.minJuryFee().call(), fns_m.DRAW_WINDOW().call()) == (
            h.env.delivery, h.env.claim, h.env.reveal, h.env.dispute, h.env.court, h.env.jury, h.env.min_jury_fee,
            DRAW_WINDOW)
        assert (fns_r.thawPeriod().call(), fns_r.minJobLock().call(), fns_r.collateralRatio().call(),
                fns_r.weightCap().call(), fns_r.maxLockShare().call()) == (
            h.env.thaw, h.env.min_lock, h.env.ratio, h.env.weight_cap, h.env.lock_share)
        started = time.perf_counter()
        indices = [int(only)] if only is not None else range(SEQUENCES)
        names, shares = list(FLAVORS), [v[0] for v in FLAVORS.values()]
        for index in indices:
            rng = random.Random(f"{seed}/{index}")
            snap = h.rpc.call("evm_snapshot", [])
            log: list[str] = []
            h.tx.nonces = dict(nonces0)
            gen.meta = {}
            base = Base(model0.clone(), state0, state0[("supply",)])
            gen.flavor = rng.choices(names, weights=shares)[0]
            _, lo, hi = FLAVORS[gen.flavor]
            n_ops = rng.randint(lo, hi)
            log.append(f"-- {gen.flavor} sequence of {n_ops} operations")
            h.counts[f"flavor {gen.flavor}"] += 1
            try:
                if gen.flavor == "mixed" and rng.random() < 0.4:
                    h.run_step(gen.g_register(rng, base.model, valid=True), base, log)
                if gen.flavor == "court" and rng.random() < 0.12:
                    for step in gen.empty_jury_pool(rng, base.model):
                        h.run_step(step, base, log)
                for _ in range(n_ops):
                    for op in gen.pick(rng, base.model):
                        h.run_op(op, base, log)
                h.drain(gen, rng, base, log)
                if VERBOSE:
                    print(f"sequence {index}:\n" + "\n".join(f"  {line}" for line in log))
            except Exception as exc:
                lines = "\n".join(f"  {i:2d}. {line}" for i, line in enumerate(log, 1))
                msg = (f"sequence {index} failed (seed {seed}): {type(exc).__name__}: {exc}\n"
                       f"operations:\n{lines}\n"
                       f"reproduce: MESH_INVARIANT_SEED={seed} MESH_INVARIANT_ONLY={index} "
                       f".venv/bin/python -m pytest -p no:cacheprovider tests/test_invariants.py -x")
                print(msg)
                pytest.fail(msg)
            finally:
                assert h.rpc.call("evm_revert", [snap]) is True
        elapsed = time.perf_counter() - started
    finally:
        h.rpc.close()
    n_seq = len(indices)
    print(f"{n_seq} sequences, {h.n_ops} operations ({h.n_tx} transactions mined) in {elapsed:.1f} s "
          f"({1000 * elapsed / max(h.n_ops, 1):.1f} ms per operation)")
    for key, n in sorted(h.counts.items()):
        print(f"  {key:60s} {n}")
    if only is None and SEQUENCES >= 1000:
        # the generator must keep reaching the interesting paths: enforced for the default seed
        # (what CI runs), reported for others (rare paths may fall short on an unlucky seed)
        short = {key: f"{h.counts[key]} < {least}" for key, least in COVERAGE_FLOORS.items() if h.counts[key] < least}
        if seed == DEFAULT_SEED:
            assert not short, f"coverage fell: {short}"
        elif short:
            print(f"note: seed {seed} reached some paths less often than the floors: {short}")
