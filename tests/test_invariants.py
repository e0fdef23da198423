"""Randomized invariant test: short random operation sequences against the real contracts on the
real Anvil of the `market` fixture.

Every sequence starts from the fixture's pristine state (evm_snapshot before, evm_revert after),
draws 3-6 operations, each with valid or invalid arguments, then drains the market: it advances
past every window, finalizes every open job and withdraws all credit, earnings and thawed stake.
Sequences come in three flavors so that short ones still reach deep paths: "mixed" (anything),
"consumer" (replacements and settlements around the delivery window, usually after re-registering
providers at new prices) and "fallback" (the consumer stays silent; providers commit, time moves to
the reveal window, they reveal; 6 more operations, since that path is long).

A reference model in Python mirrors the contracts (token, registry, market) and predicts, for
every transaction, either success with its exact effects and events, or the exact custom error
it must revert with. After every operation the whole observable state (balances, allowances,
supply, accounts, thaws, listings, credit, open jobs' hashes/commitments/reveals) must equal the
model, a reverted operation must leave that state bit-for-bit unchanged, and these invariants are
checked on the chain's own numbers:

  1. token.balanceOf(registry) == sum(stake) + sum(thawing) + sum(owed) + sum(credit)
                                   + sum(escrow of open jobs)
  2. token.balanceOf(market) == 0
  3. token.totalSupply() == initial supply + minted (Transfer from 0) - burned (sum of the
     registry's Slashed amounts), and == the sum of every holder's balance
  4. locked <= stake for every account, and locked == sum of lockFor(maxTokens, price) over the
     open jobs the account serves
  5. for every JobSettled: sum(paid) + refund == the job's escrow
  6. after the drain: token.balanceOf(registry) == sum(stake), nothing locked, owed, thawing or
     credited

Reproduce a failure: the seed and the failing sequence are printed, then
    MESH_INVARIANT_SEED=<seed> MESH_INVARIANT_ONLY=<sequence index> pytest tests/test_invariants.py -x
MESH_INVARIANT_SEQUENCES overrides the number of sequences (default 1000); MESH_INVARIANT_VERBOSE=1
prints every sequence's operations (with -s).

Speed. mesh.chain.send costs ~15-30 ms per transaction: 9 RPCs (eth_getTransactionCount,
eth_chainId twice, eth_estimateGas, eth_maxPriorityFeePerGas, eth_getBlockByNumber,
eth_sendRawTransaction, receipt polling) plus web3's Python overhead; a web3 contract call costs
~5-10 ms (3 RPCs: eth_chainId twice, then eth_call). About 10,000 operations, each followed by a
read of ~50 values, would take 10+ minutes that way. So
this file sends most transactions its own way: one keep-alive HTTP connection, nonces kept locally,
fixed gas and fees, calldata encoded with eth_abi, transactions signed locally with the dev keys
and submitted with `eth_sendRawTransactionSync` (one round trip returns the receipt), and state
read in ONE JSON-RPC batch of eth_calls. They are still real signed transactions mined by Anvil;
a reverted one is mined with status 0 and its reason is recovered by replaying it with eth_call at
its block, then decoded by mesh.chain's RevertDecoder into the project's ContractReverted. About
one in ten registry operations goes through mesh.market.MarketClient (estimateGas path) instead.

Time is exact: before every transaction the next block's timestamp is set to the model's clock + 1,
and "advance" mines a block at a chosen time, often one second around a job's delivery, settle,
commit or reveal deadline or a thaw's end (MarketParams).
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable
from urllib.parse import urlparse

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import collapse_if_tuple, keccak, to_checksum_address

from mesh.errors import ContractReverted
from mesh.market import ResultClaim, commitment, compact_signature, job_id_for
from mesh.protocol import Job

pytestmark = pytest.mark.slow

DEFAULT_SEED = 20260521
SEQUENCES = int(os.environ.get("MESH_INVARIANT_SEQUENCES", "1000"))
MIN_OPS, MAX_OPS = 3, 6
#: Share of sequences in which the consumer stays silent and providers go through commit, reveal
#: and finalize: that path needs open, commit(s), advance, reveal(s) before the drain finalizes.
FALLBACK_SHARE = 0.4
#: Share of sequences on the consumer's path: replacements and settlements around the delivery
#: window, usually after re-registering providers at new prices (so replacements move the escrow).
CONSUMER_SHARE = 0.3
FALLBACK_EXTRA_OPS = 6
VERBOSE = bool(os.environ.get("MESH_INVARIANT_VERBOSE"))
#: Paths that 1,000 sequences of the default seed must reach at least this often (about a third of
#: what they reach), so that a change to the generator cannot silently drop a path.
COVERAGE_FLOORS = {
    "openJob:ok": 400, "openJob:PriceAboveCap": 50, "openJob:InsufficientFreeStake": 8, "openJob:WrongModel": 30,
    "settle:ok": 50, "  settle[missing]:ok": 4, "  settle -> majority + slash": 20, "  settle -> no majority": 6,
    "settle:MissingResult": 10, "settle:BadSignature": 20, "settle:TooLate": 6,
    "replaceProvider:ok": 35, "  replaceProvider[price down]:ok": 3, "  replaceProvider[price up]:ok": 2,
    "commitResult:ok": 300, "revealResult:ok": 100, "revealResult:CommitmentMismatch": 8, "revealResult:TooEarly": 8,
    "finalize:ok": 400, "  finalize -> majority": 10, "  finalize -> majority + slash": 2, "finalize:TooEarly": 15,
    "requestUnstake:InsufficientFreeStake": 6, "withdrawStake:ok": 50, "withdrawStake:StillThawing": 2,
    "withdrawEarnings:ok": 100, "  (via mesh.market.MarketClient)": 40,
}

ZERO32 = b"\x00" * 32
CLOSED = 1  # JobMarket's marker for a settled job hash
U64 = 2**64 - 1
MAX_TOKENS_LIMIT = 1 << 20
MAX_ENDPOINT_BYTES = 256
OTHER_MODEL = keccak(b"other-model.gguf")
OUTPUTS = {k: keccak(b"output-" + k.encode()) for k in "ABC"}
TX_GAS = 2_000_000
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
        base = self.next_id + 1
        self.next_id += len(calls)
        replies = self._post([{"jsonrpc": "2.0", "id": base + i, "method": m, "params": p}
                              for i, (m, p) in enumerate(calls)])
        out: list[Any] = [None] * len(calls)
        for reply in replies:
            if "error" in reply:
                raise RpcError(reply["error"])
            out[reply["id"] - base] = reply["result"]
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

    def send(self, acct, key: str, fn: str, args: tuple, timestamp: int) -> dict:
        """Mine `fn(args)` from `acct` in a block at `timestamp`. Returns the receipt, or raises
        ContractReverted (decoded by mesh.chain's decoder) for a transaction mined with status 0."""
        to = self.codec.address[key]
        data = self.codec.data(key, fn, args)
        nonce = self.nonces[acct.address]
        signed = acct.sign_transaction({
            "type": 2, "chainId": self.chain_id, "nonce": nonce, "to": to, "value": 0, "data": data,
            "gas": TX_GAS, "maxFeePerGas": MAX_FEE, "maxPriorityFeePerGas": 0,
        })
        self.rpc.call("evm_setNextBlockTimestamp", [timestamp])
        receipt = self.rpc.call("eth_sendRawTransactionSync", ["0x" + bytes(signed.raw_transaction).hex()])
        self.nonces[acct.address] = nonce + 1
        mined_at = receipt["blockTimestamp"]  # Anvil 1.7 returns a number here, not a hex string
        assert (int(mined_at, 16) if isinstance(mined_at, str) else mined_at) == timestamp, "block not mined at the time set"
        if receipt["status"] == "0x1":
            return receipt
        # A mined revert changes only the sender's nonce and gas, so replaying it at its block
        # reverts the same way and yields the reason.
        try:
            self.rpc.call("eth_call", [{"from": acct.address, "to": to, "data": data, "gas": hex(TX_GAS)},
                                       receipt["blockNumber"]])
        except RpcError as exc:
            raise self.decoder.decode(exc.data, fn) from exc
        raise AssertionError(f"{fn} failed on chain but its replay succeeds (out of gas at {TX_GAS}?)")


# ============================================================================ reference model

class Revert(Exception):
    """The model predicts that the contracts revert with this custom error."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class Env:
    token: str
    registry: str
    market: str
    deployer: str
    accounts: tuple[str, ...]  # providers, consumers, outsider (checksummed)
    thaw_period: int
    min_job_lock: int
    collateral_ratio: int
    delivery: int
    settle: int
    commit: int
    reveal: int

    @property
    def holders(self) -> tuple[str, ...]:
        return self.accounts + (self.deployer, self.registry, self.market)

    def lock_for(self, max_tokens: int, price: int) -> int:
        return max(self.collateral_ratio * max_tokens * price, self.min_job_lock)


@dataclass
class OpenJob:
    job: Job
    pref_count: int  # the token count honest results of this job tend to claim
    commits: list  # bytes32 per index (ZERO32 = none)
    meta: list  # (outputHash, tokenCount, salt) behind each commitment, for reveals
    reveals: list  # (outputHash, tokenCount) per index, or None


STAKE, LOCKED, OWED, PRICE = range(4)


class Model:
    """What the token, registry and market must hold. Methods mirror the contracts' checks in
    their order and raise Revert(name) where the contracts revert; otherwise they apply the
    effects and return the registry/market events expected, in order."""

    def __init__(self, env: Env, state: dict, clock: int) -> None:
        self.env = env
        self.bal = {a: state[("bal", a)] for a in env.holders}
        self.allow = {a: state[("allow", a)] for a in env.accounts}
        self.supply = state[("supply",)]
        self.acc = {a: list(state[("acc", a)]) for a in env.accounts}
        self.listing = {a: tuple(w.to_bytes(32, "big") for w in state[("listing", a)]) for a in env.accounts}
        self.thaw = {a: list(state[("thaw", a)]) for a in env.accounts}
        self.credit = {a: state[("credit", a)] for a in env.accounts}
        self.jobs: dict[bytes, OpenJob] = {}
        self.closed: dict[bytes, Job] = {}
        self.salts: list[tuple[str, bytes]] = []
        self.minted = 0
        self.burned = 0
        self.clock = clock  # timestamp of the latest block
        self.now = clock  # timestamp of the transaction being modelled

    def clone(self) -> Model:
        env, self.env = self.env, None
        try:
            c = copy.deepcopy(self)
        finally:
            self.env = env
        c.env = env
        return c

    def expected_state(self) -> dict:
        s: dict = {("supply",): self.supply}
        for a in self.env.holders:
            s[("bal", a)] = self.bal[a]
        for a in self.env.accounts:
            s[("allow", a)] = self.allow[a]
            s[("acc", a)] = tuple(self.acc[a])
            s[("thaw", a)] = tuple(self.thaw[a])
            s[("credit", a)] = self.credit[a]
            s[("listing", a)] = tuple(int.from_bytes(b, "big") for b in self.listing[a])
        for jid, oj in self.jobs.items():
            s[("jobhash", jid)] = int.from_bytes(oj.job.hash(), "big")
            s[("commits", jid)] = tuple(int.from_bytes(c, "big") for c in oj.commits)
            words = []
            for r in oj.reveals:
                words += [0, 0, 0] if r is None else [int.from_bytes(r[0], "big"), r[1], 1]
            s[("reveals", jid)] = tuple(words)
        return s

    # -- token
    def _pull(self, owner: str, amount: int) -> None:
        """token.transferFrom(owner, registry, amount) called by the registry."""
        if self.allow[owner] < amount:
            raise Revert("ERC20InsufficientAllowance")
        if self.bal[owner] < amount:
            raise Revert("ERC20InsufficientBalance")
        if self.allow[owner] != 2**256 - 1:
            self.allow[owner] -= amount
        self.bal[owner] -= amount
        self.bal[self.env.registry] += amount

    def _pay(self, to: str, amount: int) -> None:
        if self.bal[self.env.registry] < amount:
            raise Revert("ERC20InsufficientBalance")
        self.bal[self.env.registry] -= amount
        self.bal[to] += amount

    def approve(self, sender: str, amount: int) -> list:
        self.allow[sender] = amount
        return []

    def mint(self, sender: str, to: str, amount: int) -> list:
        if sender != self.env.deployer:
            raise Revert("OwnableUnauthorizedAccount")
        if self.supply + amount > U64:
            raise Revert("ERC20ExceededCap")
        self.supply += amount
        self.bal[to] += amount
        self.minted += amount
        return []

    # -- registry, provider side
    def register(self, sender: str, model_hash: bytes, manifest: bytes, price: int, endpoint: str) -> list:
        if model_hash == ZERO32 or manifest == ZERO32:
            raise Revert("ZeroHash")
        if price == 0:
            raise Revert("ZeroPrice")
        if len(endpoint.encode()) > MAX_ENDPOINT_BYTES:
            raise Revert("EndpointTooLong")
        self.acc[sender][PRICE] = price
        self.listing[sender] = (model_hash, manifest)
        return [("ProviderRegistered", {"provider": sender, "modelHash": model_hash, "manifestHash": manifest,
                                        "price": price, "endpoint": endpoint})]

    def deregister(self, sender: str) -> list:
        if self.listing[sender][0] == ZERO32:
            raise Revert("NotRegistered")
        self.listing[sender] = (ZERO32, ZERO32)
        return [("ProviderDeregistered", {"provider": sender})]

    def stake(self, sender: str, amount: int) -> list:
        if amount == 0:
            raise Revert("ZeroAmount")
        if self.acc[sender][STAKE] + amount > U64:
            raise Revert("SafeCastOverflowedUintDowncast")
        self.acc[sender][STAKE] += amount
        self._pull(sender, amount)
        return [("Staked", {"provider": sender, "amount": amount})]

    def request_unstake(self, sender: str, amount: int) -> list:
        if amount == 0:
            raise Revert("ZeroAmount")
        a = self.acc[sender]
        if amount > a[STAKE] - a[LOCKED]:
            raise Revert("InsufficientFreeStake")
        a[STAKE] -= amount
        t = self.thaw[sender]
        t[0] += amount
        t[1] = self.now + self.env.thaw_period
        return [("UnstakeRequested", {"provider": sender, "amount": amount, "readyAt": t[1]})]

    def withdraw_stake(self, sender: str) -> list:
        amount, ready = self.thaw[sender]
        if amount == 0:
            raise Revert("NothingThawing")
        if self.now < ready:
            raise Revert("StillThawing")
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

    # -- registry, consumer side
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

    def _lock(self, provider: str, model_hash: bytes, cap: int, max_tokens: int) -> int:
        a = self.acc.get(provider)
        offered = self.listing[provider][0] if a is not None else ZERO32
        if offered == ZERO32:
            raise Revert("NotRegistered")
        if offered != model_hash:
            raise Revert("WrongModel")
        if a[PRICE] > cap:
            raise Revert("PriceAboveCap")
        lock = self.env.lock_for(max_tokens, a[PRICE])
        if lock > a[STAKE] - a[LOCKED]:
            raise Revert("InsufficientFreeStake")
        a[LOCKED] += lock
        return a[PRICE]

    def _collect(self, consumer: str, amount: int) -> None:
        c = self.credit[consumer]
        if c >= amount:
            self.credit[consumer] = c - amount
            return
        self.credit[consumer] = 0
        self._pull(consumer, amount - c)

    # -- market
    def open_job(self, sender: str, salt: bytes, model_hash: bytes, prompt: bytes, max_tokens: int, cap: int,
                 providers: list[str], pref_count: int) -> list:
        if max_tokens == 0 or max_tokens > MAX_TOKENS_LIMIT:
            raise Revert("BadMaxTokens")
        if cap == 0:
            raise Revert("ZeroPriceCap")
        p = providers
        if p[0] == p[1] or p[0] == p[2] or p[1] == p[2]:
            raise Revert("DuplicateProvider")
        if sender in p:
            raise Revert("ConsumerIsProvider")
        jid = job_id_for(sender, salt)
        if jid in self.jobs or jid in self.closed:
            raise Revert("JobExists")
        prices = tuple(self._lock(q, model_hash, cap, max_tokens) for q in p)
        self._collect(sender, max_tokens * sum(prices))
        job = Job(consumer=sender, model_hash=model_hash, prompt_hash=prompt, max_tokens=max_tokens, price_cap=cap,
                  opened_at=self.now, providers=tuple(p), prices=prices)
        self.jobs[jid] = OpenJob(job, min(pref_count, max_tokens), [ZERO32] * 3, [None] * 3, [None] * 3)
        self.salts.append((sender, salt))
        return [("JobOpened", {"jobId": jid, "consumer": sender, "modelHash": model_hash, "promptHash": prompt,
                               "maxTokens": max_tokens, "priceCap": cap, "openedAt": self.now,
                               "providers": tuple(p), "prices": prices})]

    def _check_open(self, jid: bytes, job: Job) -> OpenJob:
        oj = self.jobs.get(jid)
        if oj is None:
            raise Revert("JobNotOpen")
        if job.hash() != oj.job.hash():
            raise Revert("JobMismatch")
        return oj

    def replace_provider(self, sender: str, jid: bytes, job: Job, index: int, new: str) -> list:
        oj = self._check_open(jid, job)
        j = oj.job
        if sender != j.consumer:
            raise Revert("NotConsumer")
        if index > 2:
            raise Revert("BadIndex")
        if self.now >= j.opened_at + self.env.settle:
            raise Revert("TooLate")
        if oj.commits[index] != ZERO32:
            raise Revert("AlreadyCommitted")
        if new == j.consumer:
            raise Revert("ConsumerIsProvider")
        if new in j.providers:
            raise Revert("DuplicateProvider")
        old, old_price = j.providers[index], j.prices[index]
        self.acc[old][LOCKED] -= self.env.lock_for(j.max_tokens, old_price)
        new_price = self._lock(new, j.model_hash, j.price_cap, j.max_tokens)
        old_share, new_share = j.max_tokens * old_price, j.max_tokens * new_price
        if new_share > old_share:
            self._collect(j.consumer, new_share - old_share)
        elif old_share > new_share:
            self.credit[j.consumer] += old_share - new_share
        oj.job = j.with_provider(index, new, new_price)
        return [("ProviderReplaced", {"jobId": jid, "index": index, "oldProvider": old, "newProvider": new,
                                      "price": new_price})]

    def settle(self, sender: str, jid: bytes, job: Job, results: list) -> list:
        """results[i]: None (no result) or dict(output, count, signer, signed=(jobId, output, count))."""
        oj = self._check_open(jid, job)
        j = oj.job
        if sender != j.consumer:
            raise Revert("NotConsumer")
        if self.now >= j.opened_at + self.env.settle:
            raise Revert("TooLate")
        votes: list = [None] * 3
        for i, r in enumerate(results):
            if r is None:
                if self.now < j.opened_at + self.env.delivery:
                    raise Revert("MissingResult")
                if oj.commits[i] != ZERO32:
                    raise Revert("AlreadyCommitted")
                continue
            if r["signer"] != j.providers[i] or r["signed"] != (jid, r["output"], r["count"]):
                raise Revert("BadSignature")
            votes[i] = (r["output"], r["count"])
        return self._close(jid, oj, votes)

    def commit(self, sender: str, jid: bytes, job: Job, index: int, c: bytes, meta: tuple) -> list:
        oj = self._check_open(jid, job)
        j = oj.job
        if index > 2:
            raise Revert("BadIndex")
        if sender != j.providers[index]:
            raise Revert("NotProvider")
        if self.now >= j.opened_at + self.env.settle + self.env.commit:
            raise Revert("TooLate")
        if oj.commits[index] != ZERO32:
            raise Revert("AlreadyCommitted")
        if c == ZERO32:
            raise Revert("ZeroCommitment")
        oj.commits[index] = c
        oj.meta[index] = meta
        return [("ResultCommitted", {"jobId": jid, "index": index, "provider": sender, "commitment": c})]

    def reveal(self, sender: str, jid: bytes, job: Job, index: int, output: bytes, count: int, salt: bytes) -> list:
        oj = self._check_open(jid, job)
        j = oj.job
        if index > 2:
            raise Revert("BadIndex")
        commit_end = j.opened_at + self.env.settle + self.env.commit
        if self.now < commit_end:
            raise Revert("TooEarly")
        if self.now >= commit_end + self.env.reveal:
            raise Revert("TooLate")
        if oj.commits[index] == ZERO32:
            raise Revert("NoCommitment")
        if oj.reveals[index] is not None:
            raise Revert("AlreadyRevealed")
        if commitment(jid, j.providers[index], output, count, salt) != oj.commits[index]:
            raise Revert("CommitmentMismatch")
        oj.reveals[index] = (output, count)
        return [("ResultRevealed", {"jobId": jid, "index": index, "provider": j.providers[index],
                                    "outputHash": output, "tokenCount": count})]

    def finalize(self, sender: str, jid: bytes, job: Job) -> list:
        oj = self._check_open(jid, job)
        j = oj.job
        if self.now < j.opened_at + self.env.settle + self.env.commit + self.env.reveal:
            raise Revert("TooEarly")
        withheld = [oj.commits[i] != ZERO32 and oj.reveals[i] is None for i in range(3)]
        return self._close(jid, oj, list(oj.reveals), withheld)

    def _close(self, jid: bytes, oj: OpenJob, votes: list, withheld: list | None = None) -> list:
        j = oj.job
        del self.jobs[jid]
        self.closed[jid] = j
        present = [v is not None for v in votes]
        valid = [v is not None and v[1] <= j.max_tokens for v in votes]
        agree = [False] * 3
        for a, b in ((0, 1), (0, 2), (1, 2)):
            if valid[a] and valid[b] and votes[a] == votes[b]:
                agree[a] = agree[b] = True
        pays = [0] * 3
        slash = [(present[i] and not valid[i]) or bool(withheld and withheld[i]) for i in range(3)]
        majority = ZERO32
        if any(agree):
            for i in range(3):
                if agree[i]:
                    pays[i] = votes[i][1] * j.prices[i]
                    majority = votes[i][0]
                elif present[i]:
                    slash[i] = True
        escrow = j.escrow
        events: list = []
        burn = 0
        for i, p in enumerate(j.providers):
            lock = self.env.lock_for(j.max_tokens, j.prices[i])
            a = self.acc[p]
            a[LOCKED] -= lock
            a[OWED] += pays[i]
            if slash[i]:
                a[STAKE] -= lock
                burn += lock
                events.append(("Slashed", {"provider": p, "jobId": jid, "amount": lock}))
        self.credit[j.consumer] += escrow - sum(pays)
        self.bal[self.env.registry] -= burn
        self.supply -= burn
        self.burned += burn
        counts = tuple(v[1] if v is not None else 0 for v in votes)
        events.append(("JobSettled", {
            "jobId": jid, "outcome": 0 if any(agree) else 1, "outputHash": majority, "tokenCounts": counts,
            "paid": tuple(pays), "slashMask": sum(1 << i for i in range(3) if slash[i]),
            "refund": escrow - sum(pays)}))
        return events


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
    tag: str = ""  # a finer kind for the coverage table (settle scenario, replace price move)


@dataclass
class Advance:
    to: int  # the timestamp the next transaction will run at

    @property
    def desc(self) -> str:
        return f"advance: next transaction at t={self.to}"


def _short(b: bytes) -> str:
    return b.hex()[:8]


class Generator:
    """Random operations with valid and invalid arguments, biased by the model's state."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.flavor = "mixed"  # or "fallback", chosen per sequence
        self.P = [p.address for p in h.market.providers]
        self.C = [h.market.consumer.address, h.market.consumer2.address]
        self.O = h.market.outsider.address
        self.all = self.P + self.C + [self.O]

    def acct(self, address: str):
        return self.h.acct[address]

    def name(self, address: str) -> str:
        return self.h.names.get(address, address)

    def phase(self, m: Model, oj: OpenJob) -> str:
        """Where the next transaction falls in the job's life."""
        e, t, o = m.env, m.clock + 1, oj.job.opened_at
        if t < o + e.settle:
            return "settle"
        if t < o + e.settle + e.commit:
            return "commit"
        if t < o + e.settle + e.commit + e.reveal:
            return "reveal"
        return "final"

    def pick(self, rng: random.Random, m: Model) -> list:
        n_open = len(m.jobs)
        phases = {self.phase(m, oj) for oj in m.jobs.values()}
        revealable = any(self.phase(m, oj) == "reveal" and self.unrevealed(oj) for oj in m.jobs.values())
        w = {
            "open": 30 if n_open == 0 else (10 if n_open < 3 else 3),
            "settle": 1 + 24 * ("settle" in phases), "replace": 1 + 6 * ("settle" in phases),
            "commit": 1 + 8 * ("settle" in phases) + 14 * ("commit" in phases),
            "reveal": 1 + 3 * ("reveal" in phases) + 18 * revealable, "finalize": 1 + 14 * ("final" in phases),
            "advance": 16 if n_open else 4,
            "deposit": 5, "withdraw_credit": 3, "stake": 4, "unstake": 5, "withdraw_stake": 3,
            "withdraw_earnings": 3, "register": 5, "deregister": 1.5, "mint": 1.5,
        }
        if self.flavor == "fallback":
            # the consumer stays silent: providers commit, reveal, and anyone finalizes
            most = max((sum(c != ZERO32 for c in oj.commits) for oj in m.jobs.values()
                        if self.phase(m, oj) in ("settle", "commit")), default=0)
            for k in ("deposit", "withdraw_credit", "stake", "unstake", "withdraw_stake", "withdraw_earnings",
                      "register", "deregister", "mint"):
                w[k] *= 0.25
            w.update({"open": 120 if n_open == 0 else 2, "settle": 1, "replace": 1,
                      "commit": 1 + 30 * bool(phases & {"settle", "commit"}) * (most < 3),
                      "advance": 4 + (0, 4, 25, 80)[most], "reveal": 1 + 40 * revealable})
        if self.flavor == "consumer":
            for k in ("deposit", "withdraw_credit", "stake", "unstake", "withdraw_stake", "withdraw_earnings",
                      "register", "deregister", "mint"):
                w[k] *= 0.3
            w.update({"open": 100 if n_open == 0 else 3, "commit": 1.5, "reveal": 0.5, "finalize": 1,
                      "replace": 1 + 14 * ("settle" in phases), "settle": 1 + 16 * ("settle" in phases)})
        kind = rng.choices(list(w), weights=list(w.values()))[0]
        out = getattr(self, "g_" + kind)(rng, m)
        return out if isinstance(out, list) else [out]

    # -- helpers
    @staticmethod
    def unrevealed(oj: OpenJob) -> list[int]:
        return [i for i in range(3) if oj.commits[i] != ZERO32 and oj.reveals[i] is None]

    def pick_job(self, rng: random.Random, m: Model, prefer: Callable[[OpenJob], bool] | None = None):
        """(job id, Job) — mostly an open job; sometimes closed, never opened, or tampered."""
        r = rng.random()
        if m.jobs and r < 0.9:
            ids = list(m.jobs)
            if prefer is not None and rng.random() < 0.85:
                ids = [i for i in ids if prefer(m.jobs[i])] or ids
            jid = rng.choice(ids)
            job = m.jobs[jid].job
            if rng.random() < 0.05:
                job = self.tamper(rng, job)
            return jid, job
        if m.closed and rng.random() < 0.6:
            jid = rng.choice(list(m.closed))
            return jid, m.closed[jid]
        salt = rng.randbytes(32)
        consumer = rng.choice(self.C)
        return job_id_for(consumer, salt), Job(consumer=consumer, model_hash=self.h.MODEL, prompt_hash=keccak(salt),
                                               max_tokens=10, price_cap=10, opened_at=m.clock,
                                               providers=tuple(self.P[:3]), prices=(10, 10, 10))

    def tamper(self, rng: random.Random, job: Job) -> Job:
        k = rng.randrange(6)
        if k == 0:
            return job.model_copy(update={"max_tokens": job.max_tokens + 1})
        if k == 1:
            prices = list(job.prices)
            i = rng.randrange(3)
            prices[i] = max(prices[i] - 1, 0) if prices[i] > 1 else prices[i] + 1
            return job.model_copy(update={"prices": tuple(prices)})
        if k == 2:
            return job.model_copy(update={"opened_at": job.opened_at - 1})
        if k == 3:
            return job.model_copy(update={"price_cap": job.price_cap + 1 if job.price_cap < U64 else job.price_cap - 1})
        if k == 4:
            p = list(job.providers)
            p[0], p[1] = p[1], p[0]
            return job.model_copy(update={"providers": tuple(p)})
        other = self.C[1] if job.consumer == self.C[0] else self.C[0]
        return job.model_copy(update={"consumer": other})

    def sender_or(self, rng: random.Random, usual: str, p: float) -> str:
        return usual if rng.random() < p else rng.choice(self.all)

    # -- market
    def g_open(self, rng: random.Random, m: Model) -> Step:
        r = rng.random()
        consumer = self.C[0] if r < 0.45 else self.C[1] if r < 0.9 else rng.choice(self.P + [self.O])
        provs = rng.sample(self.P, 3)
        r = rng.random()
        if r < 0.06:
            i, j = rng.sample(range(3), 2)
            provs[j] = provs[i]
        elif r < 0.10:
            provs[rng.randrange(3)] = self.O
        r = rng.random()
        max_tokens = rng.randint(1, 500) if r < 0.93 else rng.choice([0, MAX_TOKENS_LIMIT, MAX_TOKENS_LIMIT + 1])
        model_hash = self.h.MODEL if rng.random() < 0.92 else OTHER_MODEL
        top = max(m.acc[p][PRICE] for p in provs)
        r = rng.random()
        if r < 0.03:
            cap = 0
        elif r < 0.15 and top > 1:
            cap = top - 1
        elif r < 0.5:
            cap = max(top, 1)
        elif r < 0.9:
            cap = max(top, 1) + rng.randint(1, 1000)
        else:
            cap = U64
        used = [s for c, s in m.salts if c == consumer]
        salt = rng.choice(used) if used and rng.random() < 0.05 else rng.randbytes(32)
        prompt = rng.randbytes(32)
        pref = rng.randint(0, max(min(max_tokens, MAX_TOKENS_LIMIT), 0))
        return Step(
            f"openJob by {self.name(consumer)}: providers {[self.name(p) for p in provs]}, maxTokens {max_tokens}, "
            f"cap {cap} (top price {top}), model {_short(model_hash)}, salt {_short(salt)}",
            self.acct(consumer), "market", "openJob",
            (salt, model_hash, prompt, max_tokens, cap, provs),
            lambda t: t.open_job(consumer, salt, model_hash, prompt, max_tokens, cap, provs, pref))

    def g_settle(self, rng: random.Random, m: Model) -> Step:
        jid, job = self.pick_job(rng, m, prefer=lambda oj: self.phase(m, oj) == "settle")
        sender = self.sender_or(rng, job.consumer, 0.93)
        oj = m.jobs.get(jid)
        n = oj.pref_count if oj else rng.randint(0, job.max_tokens)
        mt = job.max_tokens
        late = oj is not None and m.clock + 1 >= job.opened_at + m.env.delivery
        scenario = rng.choice(["agree3", "agree3", "two_one", "two_one", "two_one", "differ", "over", "missing",
                               "missing", "missing", "wrong_key", "wrong_job", "tampered"] + ["missing"] * 5 * late)
        votes: list = [("A", n)] * 3
        signers = list(job.providers)
        signed_jid = [jid] * 3
        bump = [0] * 3
        if scenario == "two_one":
            d = rng.randrange(3)
            if rng.random() < 0.5:
                votes[d] = (rng.choice("BC"), n)
            else:
                votes[d] = ("A", n + 1 if n < mt else n - 1 if n > 0 else n + 1)
        elif scenario == "differ":
            votes = [("A", n), ("B", n), ("C", n)]
        elif scenario == "over":
            over = mt + rng.randint(1, 5)
            if rng.random() < 0.3:
                votes = [("A", over)] * 3
            else:
                votes[rng.randrange(3)] = ("A", over)
        elif scenario == "missing":
            for i in rng.sample(range(3), rng.choice([1, 1, 1, 2, 3])):
                votes[i] = None
            if rng.random() < 0.3:
                present = [i for i in range(3) if votes[i] is not None]
                if present:
                    votes[rng.choice(present)] = ("B", n)
        elif scenario == "wrong_key":
            i = rng.randrange(3)
            signers[i] = rng.choice([a for a in self.all if a != job.providers[i]])
        elif scenario == "wrong_job":
            signed_jid[rng.randrange(3)] = rng.randbytes(32)
        elif scenario == "tampered":
            bump[rng.randrange(3)] = 1
        results, encoded = [], []
        for i in range(3):
            if votes[i] is None:
                results.append(None)
                encoded.append(ResultClaim.missing())
                continue
            out, count = OUTPUTS[votes[i][0]], votes[i][1]
            claim = ResultClaim(signed_jid[i], out, count).sign(self.acct(signers[i]), self.h.chain_id, self.h.market_addr)
            r, vs = compact_signature(claim.signature)
            results.append({"output": out, "count": count + bump[i], "signer": signers[i],
                            "signed": (signed_jid[i], out, count)})
            encoded.append((out, count + bump[i], r, vs))
        shown = [None if v is None else f"{v[0]}{v[1]}" for v in votes]
        return Step(
            f"settle {_short(jid)} by {self.name(sender)}: {scenario} {shown} (maxTokens {mt})"
            + (f" signers {[self.name(s) for s in signers]}" if scenario == "wrong_key" else ""),
            self.acct(sender), "market", "settle", (jid, job.as_abi(), encoded),
            lambda t: t.settle(sender, jid, job, results), tag=scenario)

    def g_replace(self, rng: random.Random, m: Model) -> Step:
        jid, job = self.pick_job(rng, m, prefer=lambda oj: self.phase(m, oj) == "settle")
        index = rng.randrange(3) if rng.random() < 0.96 else rng.randint(3, 255)
        free = [p for p in self.P if p not in job.providers]
        r = rng.random()
        if r < 0.7 and free:
            new = rng.choice(free)
        elif r < 0.8:
            new = rng.choice(job.providers)
        elif r < 0.85:
            new = job.consumer
        elif r < 0.95:
            new = self.O
        else:
            new = rng.choice(self.C)
        sender = self.sender_or(rng, job.consumer, 0.93)
        old_price = job.prices[index] if index < 3 else 0
        new_price = m.acc[new][PRICE]
        move = "price up" if new_price > old_price else "price down" if new_price < old_price else "same price"
        return Step(f"replaceProvider {_short(jid)} by {self.name(sender)}: #{index} -> {self.name(new)} ({move})",
                    self.acct(sender), "market", "replaceProvider", (jid, job.as_abi(), index, new),
                    lambda t: t.replace_provider(sender, jid, job, index, new), tag=move)

    def g_commit(self, rng: random.Random, m: Model) -> Step:
        jid, job = self.pick_job(rng, m, prefer=lambda oj: ZERO32 in oj.commits
                                 and self.phase(m, oj) in ("settle", "commit"))
        oj = m.jobs.get(jid)
        free = [i for i in range(3) if oj and oj.commits[i] == ZERO32]
        r = rng.random()
        index = rng.randint(3, 255) if r < 0.03 else rng.choice(free) if free and r < 0.85 else rng.randrange(3)
        usual = job.providers[index] if index < 3 else rng.choice(self.P)
        sender = self.sender_or(rng, usual, 0.92)
        honest = 0.78 if self.flavor == "fallback" else 0.7
        key = "A" if rng.random() < honest else rng.choice("BC")
        n = oj.pref_count if oj else 0
        count = n if rng.random() < honest else rng.randint(0, job.max_tokens + 3)
        salt = rng.randbytes(32)
        bound = sender if rng.random() < 0.95 else rng.choice(self.P)
        c = ZERO32 if rng.random() < 0.02 else commitment(jid, bound, OUTPUTS[key], count, salt)
        meta = (OUTPUTS[key], count, salt)
        return Step(f"commitResult {_short(jid)} by {self.name(sender)}: #{index} {key}{count} bound to "
                    f"{self.name(bound)}{' ZERO' if c == ZERO32 else ''}",
                    self.acct(sender), "market", "commitResult", (jid, job.as_abi(), index, c),
                    lambda t: t.commit(sender, jid, job, index, c, meta))

    def g_reveal(self, rng: random.Random, m: Model) -> Step:
        jid, job = self.pick_job(rng, m, prefer=lambda oj: self.unrevealed(oj) and self.phase(m, oj) == "reveal")
        oj = m.jobs.get(jid)
        committed = (self.unrevealed(oj) if rng.random() < 0.9 else [i for i in range(3) if oj.commits[i] != ZERO32]
                     ) if oj else []
        if rng.random() < 0.02:
            index = rng.randint(3, 255)
        elif committed and rng.random() < 0.9:
            index = rng.choice(committed)
        else:
            index = rng.randrange(3)
        meta = oj.meta[index] if oj and index < 3 and oj.meta[index] else (OUTPUTS["A"], 0, rng.randbytes(32))
        output, count, salt = meta
        r = rng.random()
        if r < 0.04:
            salt = rng.randbytes(32)
        elif r < 0.08:
            count += 1
        sender = self.sender_or(rng, job.providers[index] if index < 3 else self.O, 0.8)
        return Step(f"revealResult {_short(jid)} by {self.name(sender)}: #{index} count {count}",
                    self.acct(sender), "market", "revealResult", (jid, job.as_abi(), index, output, count, salt),
                    lambda t: t.reveal(sender, jid, job, index, output, count, salt))

    def g_finalize(self, rng: random.Random, m: Model, jid: bytes | None = None) -> Step:
        if jid is None:
            jid, job = self.pick_job(rng, m, prefer=lambda oj: self.phase(m, oj) == "final")
        else:
            job = m.jobs[jid].job
        sender = rng.choice(self.all)
        return Step(f"finalize {_short(jid)} by {self.name(sender)}", self.acct(sender), "market", "finalize",
                    (jid, job.as_abi()), lambda t: t.finalize(sender, jid, job))

    def g_advance(self, rng: random.Random, m: Model) -> Advance:
        e = m.env
        bounds, reveal_starts = [], []
        for oj in m.jobs.values():
            o = oj.job.opened_at
            bounds += [o + e.delivery, o + e.settle, o + e.settle + e.commit, o + e.settle + e.commit + e.reveal]
            if any(c != ZERO32 for c in oj.commits):
                reveal_starts.append(o + e.settle + e.commit)
        bounds += [t[1] for t in m.thaw.values() if t[0]]
        nxt = m.clock + 1
        future = sorted(b for b in bounds if b > nxt)
        reveal_starts = [b for b in reveal_starts if b > nxt]
        early = [oj.job.opened_at + e.delivery for oj in m.jobs.values() if nxt < oj.job.opened_at + e.delivery]
        if self.flavor == "consumer" and early and rng.random() < 0.8:
            b = rng.choice(early)
            to = b + rng.choice([-1, 0, 0, 1, rng.randint(0, e.settle - e.delivery - 1)])
        elif reveal_starts and rng.random() < (0.85 if self.flavor == "fallback" else 0.5):
            b = rng.choice(reveal_starts)
            to = b + rng.choice([-1, 0, 0, 0, 1, rng.randint(0, e.reveal)])
        elif future and rng.random() < 0.8:
            b = future[0] if rng.random() < 0.5 else rng.choice(future)
            to = b + rng.choice([-1, 0, 0, 1, rng.randint(-120, 120)])
        else:
            to = nxt + rng.choice([rng.randint(1, 60), rng.randint(1, e.delivery), rng.randint(e.delivery, 8000)])
        return Advance(max(to, nxt + 1))

    # -- registry
    def g_deposit(self, rng: random.Random, m: Model) -> Step:
        sender = rng.choice(self.C) if rng.random() < 0.9 else rng.choice(self.all)
        r = rng.random()
        amount = 0 if r < 0.04 else m.allow[sender] + rng.randint(1, 1000) if r < 0.08 else rng.randint(1, 300_000)
        slow = None
        if rng.random() < 0.1 and m.allow[sender] >= amount:
            slow = lambda: self.h.market.mc.deposit(self.acct(sender), amount)  # noqa: E731
        return Step(f"deposit {amount} by {self.name(sender)}{' (MarketClient)' if slow else ''}",
                    self.acct(sender), "registry", "deposit", (amount,), lambda t: t.deposit(sender, amount), slow)

    def g_withdraw_credit(self, rng: random.Random, m: Model) -> Step:
        having = [a for a in self.all if m.credit[a]]
        sender = rng.choice(having) if having and rng.random() < 0.8 else rng.choice(self.all)
        slow = (lambda: self.h.market.mc.withdraw_credit(self.acct(sender))) if rng.random() < 0.1 else None
        return Step(f"withdrawCredit by {self.name(sender)}{' (MarketClient)' if slow else ''}", self.acct(sender),
                    "registry", "withdrawCredit", (), lambda t: t.withdraw_credit(sender), slow)

    def g_stake(self, rng: random.Random, m: Model) -> list:
        sender = rng.choice(self.P) if rng.random() < 0.9 else rng.choice(self.all)
        r = rng.random()
        if r < 0.04:
            amount = 0
        elif r < 0.08:
            amount = m.bal[sender] + 1
        elif r < 0.55:
            amount = rng.randint(1, 10**6)
        else:
            amount = rng.randint(10**6, 10**9)
        steps = []
        if rng.random() < 0.85:
            allowance = amount - 1 if amount and rng.random() < 0.06 else amount
            reg = self.h.env.registry
            steps.append(Step(f"approve registry {allowance} by {self.name(sender)}", self.acct(sender), "token",
                              "approve", (reg, allowance), lambda t: t.approve(sender, allowance)))
        steps.append(Step(f"stake {amount} by {self.name(sender)}", self.acct(sender), "registry", "stake", (amount,),
                          lambda t: t.stake(sender, amount)))
        return steps

    def g_unstake(self, rng: random.Random, m: Model) -> Step:
        sender = rng.choice(self.P) if rng.random() < 0.92 else rng.choice(self.all)
        a = m.acc[sender]
        free = a[STAKE] - a[LOCKED]
        r = rng.random()
        if r < 0.05:
            amount = 0
        elif r < 0.15:
            amount = free + 1
        elif r < 0.3:
            amount = free
        elif r < 0.55:
            amount = free - rng.randint(0, 2 * m.env.min_job_lock)  # leaves about one job's lock free
        else:
            amount = rng.randint(1, max(free // 4, 1))
        amount = max(amount, 1) if r >= 0.05 else 0
        slow = (lambda: self.h.market.mc.request_unstake(self.acct(sender), amount)) if rng.random() < 0.1 else None
        return Step(f"requestUnstake {amount} by {self.name(sender)} (free {free}){' (MarketClient)' if slow else ''}",
                    self.acct(sender), "registry", "requestUnstake", (amount,),
                    lambda t: t.request_unstake(sender, amount), slow)

    def g_withdraw_stake(self, rng: random.Random, m: Model) -> Step:
        having = [a for a in self.all if m.thaw[a][0]]
        sender = rng.choice(having) if having and rng.random() < 0.8 else rng.choice(self.all)
        return Step(f"withdrawStake by {self.name(sender)} (thaw {m.thaw[sender]}, now {m.clock + 1})",
                    self.acct(sender), "registry", "withdrawStake", (), lambda t: t.withdraw_stake(sender))

    def g_withdraw_earnings(self, rng: random.Random, m: Model) -> Step:
        having = [a for a in self.all if m.acc[a][OWED]]
        sender = rng.choice(having) if having and rng.random() < 0.8 else rng.choice(self.all)
        slow = (lambda: self.h.market.mc.withdraw_earnings(self.acct(sender))) if rng.random() < 0.1 else None
        return Step(f"withdrawEarnings by {self.name(sender)}{' (MarketClient)' if slow else ''}", self.acct(sender),
                    "registry", "withdrawEarnings", (), lambda t: t.withdraw_earnings(sender), slow)

    def g_register(self, rng: random.Random, m: Model, valid: bool = False) -> Step:
        sender = rng.choice(self.P) if valid or rng.random() < 0.9 else self.O
        r = rng.random()
        if valid:
            price = rng.randint(1, 30) if r < 0.8 else rng.randint(10**5, 2 * 10**6)
        elif r < 0.05:
            price = 0
        elif r < 0.35:
            price = 10
        elif r < 0.8:
            price = rng.randint(1, 50)
        else:
            price = rng.randint(10**5, 2 * 10**6)  # lock = 2 * maxTokens * price may pass minJobLock and stake
        r = 1.0 if valid else rng.random()
        model_hash = ZERO32 if r < 0.04 else OTHER_MODEL if r < 0.14 else self.h.MODEL
        manifest = ZERO32 if not valid and rng.random() < 0.02 else rng.randbytes(32)
        r = 1.0 if valid else rng.random()
        peer = rng.randbytes(16).hex()
        if r < 0.04:
            endpoint = "x" * (MAX_ENDPOINT_BYTES + rng.choice([1, 1, 50]))
        elif r < 0.08:
            endpoint = "y" * MAX_ENDPOINT_BYTES
        elif r < 0.15:
            endpoint = ""
        else:
            endpoint = f"/ip4/127.0.0.1/tcp/{rng.randint(1024, 65535)}/p2p/{peer}"
        slow = None
        if rng.random() < 0.1:
            slow = lambda: self.h.market.mc.register(self.acct(sender), model_hash, manifest, price, endpoint)  # noqa: E731
        return Step(f"register by {self.name(sender)}: model {_short(model_hash)}, price {price}, endpoint of "
                    f"{len(endpoint)} bytes{' (MarketClient)' if slow else ''}", self.acct(sender), "registry",
                    "register", (model_hash, manifest, price, endpoint),
                    lambda t: t.register(sender, model_hash, manifest, price, endpoint), slow)

    def g_deregister(self, rng: random.Random, m: Model) -> Step:
        sender = rng.choice(self.P + [self.O])
        return Step(f"deregister by {self.name(sender)}", self.acct(sender), "registry", "deregister", (),
                    lambda t: t.deregister(sender))

    def g_mint(self, rng: random.Random, m: Model) -> Step:
        deployer = self.h.env.deployer
        sender = deployer if rng.random() < 0.9 else rng.choice(self.all)
        to = rng.choice(self.all)
        amount = U64 - m.supply + 1 if rng.random() < 0.05 else rng.randint(1, 10**9)
        return Step(f"mint {amount} to {self.name(to)} by {self.name(sender)}", self.acct(sender), "token", "mint",
                    (to, amount), lambda t: t.mint(sender, to, amount))


# ============================================================================ harness

class Harness:
    def __init__(self, market) -> None:
        self.market = market
        chain = market.chain
        self.rpc = Rpc(market.url)
        self.codec = Codec(chain)
        self.chain_id = chain.chain_id
        self.market_addr = chain.market.address
        self.tx = FastSender(self.rpc, self.codec, chain.decoder, self.chain_id)
        accts = list(market.providers) + [market.consumer, market.consumer2, market.outsider]
        self.acct = {a.address: a for a in accts + [market.deployer]}
        self.names = {p.address: f"P{i}" for i, p in enumerate(market.providers)}
        self.names.update({market.consumer.address: "C1", market.consumer2.address: "C2",
                           market.outsider.address: "O", market.deployer.address: "deployer"})
        params = chain.deployment.params
        self.env = Env(
            token=chain.token.address, registry=chain.registry.address, market=chain.market.address,
            deployer=market.deployer.address, accounts=tuple(a.address for a in accts),
            thaw_period=params.thaw_period, min_job_lock=params.min_job_lock, collateral_ratio=params.collateral_ratio,
            delivery=params.delivery_window, settle=params.settle_window, commit=params.commit_window,
            reveal=params.reveal_window)
        self._static_reads = self._build_static_reads()
        #: the model the fixture's providers serve
        self.MODEL = chain.registry.functions.listings(market.providers[0].address).call()[0]
        self.outside = 0  # tokens held by accounts the test does not use (set from the first read)
        self.counts: Counter = Counter()
        self.n_ops = 0
        self.n_tx = 0

    # -- state reads: one JSON-RPC batch
    def _build_static_reads(self) -> list:
        c, e = self.codec, self.env
        reads = [(("supply",), "token", c.data("token", "totalSupply", ()))]
        for a in e.holders:
            reads.append((("bal", a), "token", c.data("token", "balanceOf", (a,))))
        for a in e.accounts:
            reads.append((("allow", a), "token", c.data("token", "allowance", (a, e.registry))))
            reads.append((("acc", a), "registry", c.data("registry", "accounts", (a,))))
            reads.append((("thaw", a), "registry", c.data("registry", "thaws", (a,))))
            reads.append((("credit", a), "registry", c.data("registry", "credit", (a,))))
            reads.append((("listing", a), "registry", c.data("registry", "listings", (a,))))
        return [(k, self.codec.address[to], d) for k, to, d in reads]

    def read_state(self, job_ids) -> dict:
        reads = list(self._static_reads)
        maddr = self.codec.address["market"]
        for jid in job_ids:
            reads.append((("jobhash", jid), maddr, self.codec.data("market", "jobHashes", (jid,))))
            reads.append((("commits", jid), maddr, self.codec.data("market", "commitments", (jid,))))
            reads.append((("reveals", jid), maddr, self.codec.data("market", "reveals", (jid,))))
        results = self.rpc.batch([("eth_call", [{"to": to, "data": d}, "latest"]) for _, to, d in reads])
        state = {}
        for (key, _, _), res in zip(reads, results):
            raw = bytes.fromhex(res[2:])
            words = tuple(int.from_bytes(raw[i:i + 32], "big") for i in range(0, len(raw), 32))
            state[key] = words if len(words) > 1 or key[0] in ("listing",) else words[0]
        return state

    def latest_timestamp(self) -> int:
        return int(self.rpc.call("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)

    # -- checks
    def check(self, m: Model, state: dict, base: Base) -> None:
        """The invariants on the chain's own numbers (with the open jobs as the events told them),
        then the whole state against the model."""
        e = m.env
        reg = e.registry
        stake = sum(state[("acc", a)][STAKE] for a in e.accounts)
        owed = sum(state[("acc", a)][OWED] for a in e.accounts)
        thawing = sum(state[("thaw", a)][0] for a in e.accounts)
        credit = sum(state[("credit", a)] for a in e.accounts)
        escrow = sum(oj.job.escrow for oj in m.jobs.values())
        # 1. the registry holds exactly what it owes
        assert state[("bal", reg)] == stake + thawing + owed + credit + escrow, (
            f"invariant 1: registry balance {state[('bal', reg)]} != stake {stake} + thawing {thawing} + owed {owed}"
            f" + credit {credit} + escrow {escrow}")
        # 2. the market never holds tokens
        assert state[("bal", e.market)] == 0, f"invariant 2: market holds {state[('bal', e.market)]}"
        # 3. supply changes only by mint and burn
        supply = state[("supply",)]
        assert supply == base.supply + base.minted_events - base.burned_events, (
            f"invariant 3: supply {supply} != initial {base.supply} + minted {base.minted_events}"
            f" - burned (Slashed) {base.burned_events}")
        assert base.burned_events == m.burned and base.minted_events == m.minted, (
            f"invariant 3: events say minted {base.minted_events} burned {base.burned_events}, "
            f"the model {m.minted} / {m.burned}")
        assert sum(state[("bal", a)] for a in e.holders) + self.outside == supply, (
            "invariant 3: tokens went to an account outside the known holders")
        # 4. locks: locked <= stake, and locked == the locks of the open jobs served
        locks = Counter()
        for oj in m.jobs.values():
            for p, price in zip(oj.job.providers, oj.job.prices):
                locks[p] += e.lock_for(oj.job.max_tokens, price)
        for a in e.accounts:
            s, locked = state[("acc", a)][STAKE], state[("acc", a)][LOCKED]
            assert locked <= s, f"invariant 4: {self.names[a]} locked {locked} > stake {s}"
            assert locked == locks[a], f"invariant 4: {self.names[a]} locked {locked} != open jobs' locks {locks[a]}"
        for jid in m.jobs:
            assert state[("jobhash", jid)] not in (0, CLOSED)
        want = m.expected_state()
        if state != want:
            diff = {k: (state.get(k), want.get(k)) for k in set(state) | set(want) if state.get(k) != want.get(k)}
            shown = {self._key_name(k): f"chain {v[0]} != model {v[1]}" for k, v in diff.items()}
            raise AssertionError(f"chain state differs from the model: {shown}")

    def _key_name(self, key: tuple) -> str:
        return ".".join(self.names.get(k, _short(k) if isinstance(k, bytes) else str(k)) for k in key)

    # -- running one step
    def run_step(self, step: Step, base: Base, log: list) -> None:
        m = base.model
        ts = m.clock + 1
        trial = m.clone()
        trial.now = ts
        try:
            expected = step.model(trial)
            want = None
        except Revert as r:
            expected, want = None, r.name
        log.append(f"{step.desc}  [model: {want or 'ok'}]")
        got = None
        receipt = None
        mined = True
        if step.slow is not None:
            self.rpc.call("evm_setNextBlockTimestamp", [ts])
            try:
                receipt = step.slow()
            except ContractReverted as exc:
                got, mined = exc.name or str(exc), False  # estimateGas refused it: nothing was mined
            self.tx.nonces[step.sender.address] = int(
                self.rpc.call("eth_getTransactionCount", [step.sender.address, "latest"]), 16)
        else:
            try:
                receipt = self.tx.send(step.sender, step.contract, step.fn, step.args, ts)
            except ContractReverted as exc:
                got = exc.name or str(exc)
        self.n_ops += 1
        self.n_tx += mined
        self.counts[f"{step.fn}:{got or 'ok'}"] += 1
        if step.tag and got is None:
            self.counts[f"  {step.fn}[{step.tag}]:ok"] += 1
        if step.slow is not None:
            self.counts["  (via mesh.market.MarketClient)"] += 1
        if got != want:
            raise AssertionError(f"{step.fn}: the model expects {want or 'success'}, the chain says {got or 'success'}")
        if mined:
            if step.slow is not None:
                assert self.latest_timestamp() == ts
            trial.clock = m.clock = ts
        if want is None:
            events = self.codec.decode_logs(receipt["logs"])
            self._check_events(base, m, trial, events, expected)
            for k, name, args in events:
                if name == "JobSettled":
                    kind = ("majority" if args["outcome"] == 0 else "no majority") + (" + slash" if args["slashMask"] else "")
                    self.counts[f"  {step.fn} -> {kind}"] += 1
            base.model = trial
        state = self.read_state(list(base.model.jobs))
        if want is not None:
            assert state == base.state, "a reverted operation changed the state"
        self.check(base.model, state, base)
        base.state = state

    def _check_events(self, base: Base, before: Model, after: Model, events: list, expected: list) -> None:
        ours = [(n, a) for k, n, a in events if k in ("registry", "market")]
        assert [n for n, _ in ours] == [n for n, _ in expected], (
            f"events {[n for n, _ in ours]} != expected {[n for n, _ in expected]}")
        for (name, got), (_, want) in zip(ours, expected):
            bad = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
            assert not bad, f"{name} event differs (chain, model): {bad}"
            if name == "JobOpened":
                # mesh.market reads the job back from the event exactly as the model built it
                assert Job.from_event(got) == after.jobs[got["jobId"]].job
            if name == "JobSettled":
                # 5. payout never above escrow: paid + refund == escrow
                escrow = before.jobs[got["jobId"]].job.escrow
                assert sum(got["paid"]) + got["refund"] == escrow, (
                    f"invariant 5: paid {got['paid']} + refund {got['refund']} != escrow {escrow}")
        base.burned_events += sum(a["amount"] for k, n, a in events if k == "registry" and n == "Slashed")
        base.minted_events += sum(a["value"] for k, n, a in events
                                  if k == "token" and n == "Transfer" and int(a["from"], 16) == 0)

    def advance(self, adv: Advance, base: Base, log: list) -> None:
        log.append(adv.desc)
        # mine a block one second before, so the next transaction (clock + 1) runs at adv.to
        self.market.set_next_timestamp(adv.to - 1)
        self.market.rpc("evm_mine")
        base.model.clock = adv.to - 1
        self.n_ops += 1
        self.counts["advance"] += 1

    def drain(self, gen: Generator, rng: random.Random, base: Base, log: list) -> None:
        """Advance past every window and thaw, finalize every open job, withdraw everything."""
        m = base.model
        e = m.env
        ends = [oj.job.opened_at + e.settle + e.commit + e.reveal for oj in m.jobs.values()]
        ends += [t[1] for t in m.thaw.values() if t[0]]
        target = max(ends + [m.clock + 1]) + rng.choice([0, 0, 1, 100])
        if target > m.clock + 1:
            self.advance(Advance(target), base, log)
        log.append("-- drain")
        for jid in list(base.model.jobs):
            self.run_step(gen.g_finalize(rng, base.model, jid), base, log)
        for a in e.accounts:
            if base.model.credit[a]:
                self.run_step(Step(f"withdrawCredit by {self.names[a]}", self.acct[a], "registry", "withdrawCredit",
                                   (), lambda t, a=a: t.withdraw_credit(a)), base, log)
            if base.model.acc[a][OWED]:
                self.run_step(Step(f"withdrawEarnings by {self.names[a]}", self.acct[a], "registry",
                                   "withdrawEarnings", (), lambda t, a=a: t.withdraw_earnings(a)), base, log)
            if base.model.thaw[a][0]:
                self.run_step(Step(f"withdrawStake by {self.names[a]}", self.acct[a], "registry", "withdrawStake",
                                   (), lambda t, a=a: t.withdraw_stake(a)), base, log)
        # 6. nothing stuck: the registry holds exactly the remaining stake
        s = base.state
        stake = sum(s[("acc", a)][STAKE] for a in e.accounts)
        assert not base.model.jobs
        assert s[("bal", e.registry)] == stake, (
            f"invariant 6: after the drain the registry holds {s[('bal', e.registry)]}, remaining stake is {stake}")
        for a in e.accounts:
            _, locked, owed, _ = s[("acc", a)]
            assert (locked, owed, s[("thaw", a)][0], s[("credit", a)]) == (0, 0, 0, 0), (
                f"invariant 6: {self.names[a]} still has locked {locked}, owed {owed}, thawing {s[('thaw', a)][0]},"
                f" credit {s[('credit', a)]}")


@dataclass
class Base:
    """The running sequence: its model, the last chain state read, and what the events said."""

    model: Model
    state: dict
    supply: int
    minted_events: int = 0
    burned_events: int = 0


# ============================================================================ the test

def test_random_operation_sequences_keep_invariants(market):
    seed = int(os.environ.get("MESH_INVARIANT_SEED", DEFAULT_SEED))
    only = os.environ.get("MESH_INVARIANT_ONLY")
    print(f"\ninvariant test seed {seed} (set MESH_INVARIANT_SEED to change it)")
    h = Harness(market)
    gen = Generator(h)
    try:
        state0 = h.read_state([])
        h.outside = state0[("supply",)] - sum(state0[("bal", a)] for a in h.env.holders)
        clock0 = h.latest_timestamp()
        model0 = Model(h.env, state0, clock0)
        nonces0 = {a: int(h.rpc.call("eth_getTransactionCount", [a, "latest"]), 16) for a in h.acct}
        # the deployed windows are the MarketParams the model uses
        assert market.chain.market.functions.settleWindow().call() == h.env.settle
        assert market.chain.registry.functions.thawPeriod().call() == h.env.thaw_period
        started = time.perf_counter()
        indices = [int(only)] if only is not None else range(SEQUENCES)
        for index in indices:
            rng = random.Random(f"{seed}/{index}")
            snap = market.rpc("evm_snapshot")
            log: list[str] = []
            h.tx.nonces = dict(nonces0)
            base = Base(model0.clone(), state0, state0[("supply",)])
            r = rng.random()
            gen.flavor = "fallback" if r < FALLBACK_SHARE else "consumer" if r < FALLBACK_SHARE + CONSUMER_SHARE else "mixed"
            n_ops = rng.randint(MIN_OPS, MAX_OPS) + (FALLBACK_EXTRA_OPS if gen.flavor == "fallback" else 0)
            log.append(f"-- {gen.flavor} sequence of {n_ops} operations")
            try:
                if gen.flavor == "consumer" and rng.random() < 0.6:
                    for _ in range(rng.choice([1, 1, 2])):
                        h.run_step(gen.g_register(rng, base.model, valid=True), base, log)
                for _ in range(n_ops):
                    for op in gen.pick(rng, base.model):
                        if isinstance(op, Advance):
                            h.advance(op, base, log)
                        else:
                            h.run_step(op, base, log)
                h.drain(gen, rng, base, log)
                if VERBOSE:
                    print(f"sequence {index}:\n" + "\n".join(f"  {line}" for line in log))
            except Exception as exc:
                lines = "\n".join(f"  {i:2d}. {line}" for i, line in enumerate(log, 1))
                msg = (f"sequence {index} failed (seed {seed}): {type(exc).__name__}: {exc}\n"
                       f"operations:\n{lines}\n"
                       f"reproduce: MESH_INVARIANT_SEED={seed} MESH_INVARIANT_ONLY={index} "
                       f".venv/bin/python -m pytest tests/test_invariants.py -x")
                print(msg)
                pytest.fail(msg)
            finally:
                assert market.rpc("evm_revert", [snap]) is True
        elapsed = time.perf_counter() - started
    finally:
        h.rpc.close()
    n_seq = len(indices)
    print(f"{n_seq} sequences, {h.n_ops} operations ({h.n_tx} transactions mined) in {elapsed:.1f} s "
          f"({1000 * elapsed / max(h.n_ops, 1):.1f} ms per operation)")
    for key, n in sorted(h.counts.items()):
        print(f"  {key:45s} {n}")
    if only is None and SEQUENCES >= 1000:
        # the generator must keep reaching the interesting paths: enforced for the default seed
        # (what CI runs), reported for others (rare paths may fall short on an unlucky seed)
        short = {key: f"{h.counts[key]} < {least}" for key, least in COVERAGE_FLOORS.items() if h.counts[key] < least}
        if seed == DEFAULT_SEED:
            assert not short, f"coverage fell: {short}"
        elif short:
            print(f"note: seed {seed} reached some paths less often than the floors: {short}")
