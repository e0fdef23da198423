"""Chain client: the one place that talks to the EVM node (web3.py, synchronous).

It connects and checks the node, deploys the three contracts, signs transactions locally with
eth-account, and turns every revert into a typed `ContractReverted` carrying a sentence that says
what to do (`decode_revert`). Provider, consumer and ledger code use `Chain`, never raw web3.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import collapse_if_tuple, keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError, Web3RPCError

from meshmarket.mesh.config import Deployment
from meshmarket.mesh.errors import (ChainError, ContractReverted, ContractsError, NodeUnreachable, NoGas, NotDeployed,
                                    WrongChain)
from meshmarket.mesh.types import format_amount

RECEIPT_TIMEOUT = 60.0
#: The contracts every node talks to; their artifacts (ABI + bytecode) are committed in contracts/build.
CONTRACT_NAMES = ("MeshToken", "ProviderRegistry", "JobMarket")


def artifacts_dir() -> Path:
    """contracts/build of the installed distribution (read as data: the core never imports the
    contracts package, which sits above it)."""
    spec = importlib.util.find_spec("contracts")
    if spec is None or not spec.submodule_search_locations:
        raise ContractsError("the contracts package is not installed", "reinstall Meshmarket")
    return Path(spec.submodule_search_locations[0]) / "build"


@cache
def load_artifact(name: str) -> dict:
    path = artifacts_dir() / f"{name}.json"
    if not path.exists():
        raise ContractsError(f"no build artifact for {name} at {path}", "run `python -m meshmarket.contracts.compile`")
    return json.loads(path.read_text())


def connect(url: str, timeout: float = 10.0) -> Web3:
    # cache_allowed_requests: web3 re-asks eth_chainId (and other constants) on every call
    # otherwise, which doubles the round trips of each contract call.
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}, cache_allowed_requests=True))
    try:
        w3.eth.chain_id  # noqa: B018 — the cheapest call that proves a node answers
    except Exception as exc:  # requests raises many types; all mean the same to the user
        raise NodeUnreachable(
            f"no Ethereum node answers at {url}",
            "start one with `mesh chain up`, or pass --rpc / set MESH_RPC_URL",
        ) from exc
    return w3


# ------------------------------------------------------------------------------ revert decoding

#: name -> (sentence template over the error's named args, what to do). One table for all
#: contracts, so every revert reads the same from the CLI, the provider and the consumer.
_MESSAGES: dict[str, tuple[str, str]] = {
    "ERC20InsufficientBalance": ("balance {balance} is below the {needed} needed", "get tokens first (`mesh token faucet` on the local chain)"),
    "ERC20InsufficientAllowance": ("allowance {allowance} is below the {needed} needed", "approve the contract to spend your tokens (`mesh token approve`) or deposit credit (`mesh token deposit`)"),
    "ERC20ExceededCap": ("minting would pass the supply cap {cap}", "mint less"),
    "OwnableUnauthorizedAccount": ("{account} is not the token owner", "mint with the deployer's account"),
    "SafeERC20FailedOperation": ("the token refused a transfer", "check the token contract"),
    "ReentrancyGuardReentrantCall": ("reentrant call refused", "do not call back into the market while it runs"),
    "OnlyMarket": ("only the market contract may draw, lock, pay or slash", "go through the market"),
    "ZeroAmount": ("the amount is zero", "pass a positive amount"),
    "ZeroHash": ("model hash and manifest hash must be non-zero", "register with a real model file"),
    "ZeroPrice": ("the price per token must be between 1 and 2^40 - 1 base units", "pass --price N (base units per output token)"),
    "EndpointTooLong": ("the endpoint is {length} bytes, over the 256-byte limit", "announce one multiaddr ending in /p2p/<peer id>"),
    "NotRegistered": ("provider {provider} is not registered for any model", "register it first (`mesh provider register`)"),
    "InsufficientFreeStake": ("provider {provider} has {free} free stake, {needed} is needed", "stake more, or wait for contested jobs to close"),
    "NotEnoughProviders": ("only {found} of the {needed} providers needed could be drawn from the pool", "raise --max-price, lower --max-tokens, or wait for more providers (`mesh models`)"),
    "NothingThawing": ("no stake is thawing", "request an unstake first (`mesh provider unstake N`)"),
    "StillThawing": ("the stake is still thawing until chain time {readyAt}", "withdraw after that time"),
    "NothingOwed": ("no earnings to withdraw", "serve jobs first"),
    "NothingToWithdraw": ("no credit to withdraw", "refunds appear here after jobs settle"),
    "HeldMismatch": ("closing the job would move {out}, the job holds {held}", "this is a bug: report it"),
    "BadMaxTokens": ("max tokens {maxTokens} is out of range", "use 1 to 1048576"),
    "ZeroPriceCap": ("the price cap is zero", "pass a positive --max-price"),
    "SlotBusy": ("job slot {slot} is taken by an open job (a consumer has 16)", "settle your open jobs first (`mesh settle`)"),
    "JobNotOpen": ("job {jobId} is not open with these parameters (settled, contested, or other parameters)", "pass the job as its latest event describes it"),
    "NotDrawn": ("job {jobId} has no seats yet", "draw them first (drawSeats)"),
    "AlreadyDrawn": ("job {jobId} already has its seats", "use the job from its SeatsDrawn event"),
    "DrawExpired": ("the draw window of 8 blocks after block {openBlock} is over", "let the job expire (anyone may) and open a new one"),
    "DrawByContract": ("seats and juries are drawn by an externally owned account, not a contract", "send the draw from an EOA"),
    "DisputeTooSmall": ("a dispute of this job would pay its jury {fee} base units, under the minimum {min}", "nothing to do: the provisional outcome stands for jobs this small"),
    "NotGroupAdmin": ("the sender is not the admin of private mesh {group}", "ask its admin (its first provider) to invite"),
    "NotInvited": ("{provider} is not invited into private mesh {group}", "ask the mesh's admin (its first provider) to run `mesh provider invite ADDRESS --group NAME`"),
    "NotConsumer": ("only the job's consumer may do this", "use the consumer's account"),
    "NotSeat": ("the sender is not the job's seat #{seat}", "use that provider's account"),
    "BadSeat": ("seat #{seat} does not exist in this job, or has no result to judge", "use a seat the job has"),
    "SeatsFull": ("the job already has 5 seats", "settle with the results you have"),
    "TooEarly": ("too early: this is allowed from chain time {opensAt} (a block number for a draw)", "wait until then (`mesh settle` says when)"),
    "TooLate": ("too late: this closed at chain time {closedAt}", "use the job's next path (claims, then finalize or resolve)"),
    "BadSignature": ("the signature of seat #{seat} is invalid or not from that seat's provider", "submit the provider's own EIP-712 signed result"),
    "MissingResult": ("seat #{seat}'s result is missing before the claim window ended", "wait for it, add a seat, or settle after the claim window"),
    "AlreadyCommitted": ("seat #{seat} has committed a result on-chain", "include its signed result, or let the job go to reveal and finalize"),
    "NoCommitment": ("seat #{seat} made no commitment", "commit before the claim window ends"),
    "ZeroCommitment": ("a zero commitment commits to nothing", "commit keccak256(jobId, seat, provider, outputHash, tokenCount, salt)"),
    "CommitmentMismatch": ("the reveal does not match #{seat}'s commitment", "reveal exactly what was committed, with the same salt"),
    "AlreadyRevealed": ("#{seat} has already revealed", "nothing more to do: wait for the next phase"),
    "AlreadyDisputed": ("job {jobId} is already disputed", "wait for the jury"),
    "NoDispute": ("job {jobId} is not disputed", "dispute it first"),
    "NotAParty": ("only the consumer or a seat with a valid result may dispute", "use such an account"),
    "RequestMismatch": ("the request does not hash to the job's promptHash", "send the canonical request the job was opened with"),
    "NoJury": ("job {jobId} has no jury (not drawn yet, or none could be)", "draw it first, or resolve"),
    "NotJuror": ("the sender is not a juror of this dispute", "use a juror's account"),
    "EvidenceMismatch": ("the evidence of seat #{seat} does not hash to its signed output", "post the exact text hash and output tokens it signed"),
}

_PANICS = {0x01: "assertion failed", 0x11: "arithmetic overflow or underflow", 0x12: "division by zero",
           0x32: "array index out of bounds"}


@dataclass(frozen=True)
class _ErrorSig:
    name: str
    types: list[str]
    names: list[str]


class RevertDecoder:
    """Maps 4-byte selectors of every custom error in our ABIs to a typed, worded error."""

    def __init__(self, abis: list[list[dict]]) -> None:
        self._sigs: dict[bytes, _ErrorSig] = {}
        for abi in abis:
            for item in abi:
                if item.get("type") != "error":
                    continue
                types = [collapse_if_tuple(i) for i in item["inputs"]]
                selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
                self._sigs[selector] = _ErrorSig(item["name"], types, [i["name"] for i in item["inputs"]])

    def decode(self, data: bytes | str | None, action: str = "transaction") -> ContractReverted:
        raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else (data or b"")
        if len(raw) < 4:
            return ContractReverted(f"{action} reverted without a reason", "check the arguments and the chain state")
        selector, body = raw[:4], raw[4:]
        if selector == keccak(text="Error(string)")[:4]:
            (reason,) = abi_decode(["string"], body)
            return ContractReverted(f"{action} reverted: {reason}", None, "Error", (reason,))
        if selector == keccak(text="Panic(uint256)")[:4]:
            (code,) = abi_decode(["uint256"], body)
            return ContractReverted(f"{action} failed: {_PANICS.get(code, f'panic {code:#x}')}", "this is a bug: report it", "Panic", (code,))
        sig = self._sigs.get(selector)
        if sig is None:
            return ContractReverted(f"{action} reverted with unknown error 0x{raw[:4].hex()}", "check the contract addresses")
        values = tuple(to_checksum_address(v) if t == "address" else v for t, v in zip(sig.types, abi_decode(sig.types, body)))
        shown = {n: _show(v) for n, v in zip(sig.names, values)}
        template, hint = _MESSAGES.get(sig.name, (sig.name, None))
        return ContractReverted(f"{action} refused: " + template.format(**shown), hint, sig.name, tuple(values))


def _show(v: Any) -> str:
    if isinstance(v, bytes):
        return "0x" + v.hex()
    return str(v)


def node_refused(w3: Web3, exc: Web3RPCError, action: str, sender: str, tx: dict | None = None) -> ChainError:
    """The typed error for a node's refusal of a transaction. Nodes give the reason only as text
    (JSON-RPC has no code for it), so the reason is established from the chain instead: a sender
    whose ETH cannot cover the transaction's gas at its fee (or holds none) cannot pay for gas."""
    balance = w3.eth.get_balance(sender)
    need = 0
    if tx is not None:
        need = int(tx.get("gas", 0)) * int(tx.get("maxFeePerGas", tx.get("gasPrice", 0))) + int(tx.get("value", 0))
    if balance == 0 or balance < need:
        return NoGas(f"{action}: {sender} cannot pay for gas (it holds {balance} wei, the transaction needs "
                     f"{need} wei at most)", "fund the account with ETH")
    return ChainError(f"{action}: the node refused the transaction ({exc})")


# ------------------------------------------------------------------------------ client

class Chain:
    """A connected node plus the deployed token, registry and market contracts."""

    def __init__(self, w3: Web3, deployment: Deployment) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.chain_id = w3.eth.chain_id
        arts = {n: load_artifact(n) for n in CONTRACT_NAMES}
        self.token = w3.eth.contract(address=to_checksum_address(deployment.token), abi=arts["MeshToken"]["abi"])
        self.registry = w3.eth.contract(address=to_checksum_address(deployment.registry), abi=arts["ProviderRegistry"]["abi"])
        self.market = w3.eth.contract(address=to_checksum_address(deployment.market), abi=arts["JobMarket"]["abi"])
        self.decoder = RevertDecoder([a["abi"] for a in arts.values()])
        #: When set, transactions skip eth_estimateGas and use this limit (tests pin block
        #: timestamps with evm_setNextBlockTimestamp, which estimation does not see).
        self.fixed_gas: int | None = None

    @classmethod
    def open(cls, deployment: Deployment, rpc_url: str | None = None) -> Chain:
        """Connect and check that this node is the chain the deployment was made on."""
        w3 = connect(rpc_url or deployment.rpc_url)
        chain_id = w3.eth.chain_id
        if chain_id != deployment.chain_id:
            raise WrongChain(
                f"the node at {rpc_url or deployment.rpc_url} is chain {chain_id}, the deployment is on chain {deployment.chain_id}",
                "point --rpc at the right node, `mesh market join RPC_URL` for a market you joined, or run "
                "`mesh contracts deploy` on this one",
            )
        try:
            block = w3.eth.get_block(deployment.block)
            same = block["hash"].to_0x_hex() == deployment.block_hash
        except Exception:  # block does not exist yet: a younger chain than the deployment
            same = False
        if not same or w3.eth.get_code(to_checksum_address(deployment.market)) in (b"", None):
            raise NotDeployed(
                "the contracts recorded in the deployment are not on this chain (a restarted Anvil?)",
                "run `mesh contracts deploy` again, or `mesh market join RPC_URL` for a market you joined",
            )
        return cls(w3, deployment)

    # -- transactions

    def transact(self, account: LocalAccount, fn, *, action: str | None = None, gas: int | None = None,
                 gas_margin: int = 0) -> dict:
        """Sign `fn` locally with `account`, send it, wait for the receipt. Reverts raise ContractReverted."""
        return send(self.w3, account, fn, self.decoder, action=action or _fn_name(fn), gas=gas or self.fixed_gas,
                    gas_margin=gas_margin,
                    chain_id=self.chain_id)

    # -- common reads

    def balance(self, address: str) -> int:
        return self.token.functions.balanceOf(to_checksum_address(address)).call()

    def allowance(self, owner: str, spender: str) -> int:
        return self.token.functions.allowance(to_checksum_address(owner), to_checksum_address(spender)).call()

    def ensure_allowance(self, account: LocalAccount, spender: str, amount: int) -> dict | None:
        """Approve `spender` for `amount` if the current allowance is lower."""
        if self.allowance(account.address, spender) >= amount:
            return None
        return self.transact(account, self.token.functions.approve(to_checksum_address(spender), amount))

    def latest_time(self) -> int:
        """The latest block's timestamp: the chain's clock, which every deadline is measured on."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def pending_time(self) -> int:
        """The time a transaction sent now will see: the latest block's time, or the wall clock if
        that is later (a quiet local chain mines only when a transaction comes, so its latest block
        can be old; the next block takes the current time)."""
        return max(self.latest_time(), int(time.time()))

    def require_balance(self, address: str, amount: int, what: str) -> None:
        have = self.balance(address)
        if have < amount:
            raise ChainError(
                f"{what} needs {format_amount(amount)}, {address} holds {format_amount(have)}",
                "get tokens first (`mesh token faucet` on the local chain)",
            )


def _fn_name(fn) -> str:
    return getattr(fn, "fn_name", None) or getattr(fn, "abi_element_identifier", "transaction")


def _revert_data(exc: Exception) -> str | None:
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    return data if isinstance(data, str) else None


def send(w3: Web3, account: LocalAccount, fn, decoder: RevertDecoder, *, action: str, gas: int | None = None,
         chain_id: int | None = None, gas_margin: int = 0) -> dict:
    """Sign and send `fn` from `account`, wait for its receipt; a revert becomes a ContractReverted
    with a sentence. `gas_margin` is added to the estimate, for calls whose cost depends on what the
    block they land in holds (a draw's seed uses the block's prevrandao, unknown when estimating)."""
    params: dict[str, Any] = {
        "from": account.address,
        "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        "chainId": chain_id or w3.eth.chain_id,
    }
    try:
        # Estimated against the pending block, where the transaction will run: a call that depends
        # on the block number sees what it will see when mined. A revert surfaces here, before signing.
        params["gas"] = gas if gas is not None else fn.estimate_gas(params, block_identifier="pending") + gas_margin
        tx = fn.build_transaction(params)
    except (ContractCustomError, ContractPanicError, ContractLogicError) as exc:
        raise decoder.decode(_revert_data(exc), action) from exc
    except Web3RPCError as exc:
        raise node_refused(w3, exc, action, account.address) from exc
    signed = account.sign_transaction(tx)
    try:
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    except Web3RPCError as exc:
        raise node_refused(w3, exc, action, account.address, tx) from exc
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT, poll_latency=0.01)
    if receipt["status"] != 1:
        # Replay at the block to learn the reason (state moved between estimate and inclusion).
        try:
            w3.eth.call({k: tx[k] for k in ("from", "to", "data")}, receipt["blockNumber"])
        except (ContractCustomError, ContractPanicError, ContractLogicError) as exc:
            raise decoder.decode(_revert_data(exc), action) from exc
        raise ContractReverted(f"{action} reverted (tx {tx_hash.to_0x_hex()})", "check the chain state")
    return receipt
