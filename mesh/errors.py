"""The one exception root of Meshmarket and its whole tree (after web3.py's `exceptions.py`).

    code                             class
    error                            MeshError: every error this project raises on purpose
    config, api_key_required         ├── ConfigError: bad settings, missing deployment, bad input
    keystore                         ├── KeystoreError: keystores: missing, wrong password, refused key
    chain_error                      ├── ChainError: talking to the chain (mesh.chain)
    node_unreachable                 │   ├── NodeUnreachable: no JSON-RPC node at the URL
    wrong_chain                      │   ├── WrongChain: not the chain the deployment was made on
    not_deployed                     │   ├── NotDeployed: no contracts at the recorded addresses
    no_gas                           │   ├── NoGas: the account cannot pay for gas
    job_slots_full                   │   ├── JobSlotsFull: the consumer's 16 job slots are all open
    reverted, insufficient_funds,    │   └── ContractReverted: a revert, decoded (mesh.chain.RevertDecoder);
      too_few_providers,             │         `name` and `error_args` are the custom error's; `code`
      job_slots_full                 │         refines a few names (REVERT_CODES)
    contracts                        ├── ContractsError: building the contracts
    (the wire's codes)               ├── ProtocolError: a message that breaks the wire protocol
    bad_manifest                     │   └── ManifestError: bad manifest (unsigned, wrong signer…)
    p2p_error, timeout, …            ├── P2PError: peers and streams (mesh.p2p); `code` goes into the
                                     │     error frame (FrameTooLarge, FrameMalformed, PeerTimeout,
                                     │     StreamClosed, ConnectFailed, ListenFailed, InvalidPeerId)
    ledger                           ├── LedgerError: the local SQL ledger
    inference                        ├── InferenceError: the model engine
    model_file                       │   ├── ModelFileError: no model file, or not a readable GGUF
    context_overflow                 │   └── ContextOverflowError: prompt + max_tokens exceed the context
    query_failed                     └── QueryError: a consumer's query could not be run (`job_id`)
    (the wire's codes)                   ├── ProviderFailed: one seat refused, stalled, died or lied
    too_few_providers,                   ├── TooFewProviders: the pool cannot seat a job (or a jury)
      price_cap_too_low,                 │     before anything is sent (`needed_price`)
      not_enough_stake,
      pool_cannot_seat_jury
    context_overflow                     ├── PromptTooLong: cannot fit the pool's context (`limit`)
    request_refused, context_overflow    └── RequestRefused: the seats refused the request itself
                                               (`fault`, the escrow returns at `deadline`)

`code` is the stable, machine-readable name: callers dispatch on it (or on the class) and on the
structured fields, never on the message. `message` is the sentence without advice; `hint` is the
library's advice, if any. Library code raises these; the CLI (cli/errors.py) turns them into one
line for the user, with hints that name its commands and flags looked up by code; the HTTP gateway
(consumer.gateway.dispatch) turns codes into HTTP statuses and OpenAI error types; the p2p adapter
turns them into error frames for a peer. Reverts are decoded in exactly one place
(mesh.chain.RevertDecoder).
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of every error Meshmarket raises on purpose. `code` names it for programs (a class
    attribute; a subclass or an instance may refine it); `message` is the sentence; `hint` says
    what to do about it, in the library's words (the CLI may say it with its commands instead)."""

    code: str = "error"

    def __init__(self, message: str, hint: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} — {self.hint}" if self.hint else base


class ConfigError(MeshError):
    code = "config"


class KeystoreError(MeshError):
    code = "keystore"


# ------------------------------------------------------------------------------ chain

class ChainError(MeshError):
    code = "chain_error"


class NodeUnreachable(ChainError):
    code = "node_unreachable"


class WrongChain(ChainError):
    code = "wrong_chain"


class NotDeployed(ChainError):
    code = "not_deployed"


class NoGas(ChainError):
    """The node refused a transaction because its sender cannot pay for the gas."""

    code = "no_gas"


class JobSlotsFull(ChainError):
    """Every one of the consumer's job slots holds an open job (`limit` of them)."""

    code = "job_slots_full"

    def __init__(self, message: str, hint: str | None = None, *, limit: int = 16) -> None:
        super().__init__(message, hint)
        self.limit = limit


#: Custom errors of the contracts that callers tell apart, by name -> code; every other revert is
#: "reverted" (its `name` still says which).
REVERT_CODES = {
    "ERC20InsufficientBalance": "insufficient_funds",
    "ERC20InsufficientAllowance": "insufficient_funds",
    "NotEnoughProviders": "too_few_providers",
    "SlotBusy": "job_slots_full",
}


class ContractReverted(ChainError):
    """A transaction or call reverted; `name` is the custom error, `error_args` its decoded arguments."""

    code = "reverted"

    def __init__(self, message: str, hint: str | None = None, name: str = "", args: tuple = ()) -> None:
        super().__init__(message, hint, code=REVERT_CODES.get(name))
        self.name = name
        self.error_args = args


class ContractsError(MeshError):
    code = "contracts"


# ------------------------------------------------------------------------------ wire and peers

class ProtocolError(MeshError):
    """A peer message that breaks the protocol; `code` is one of mesh.protocol.ERROR_CODES."""

    code = "protocol_error"

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint, code=code)


class ManifestError(ProtocolError):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__("bad_manifest", message, hint)


class P2PError(MeshError):
    """Root of the p2p adapter's errors; `code` is what goes into an error frame."""

    code = "p2p_error"


class FrameTooLarge(P2PError):
    code = "frame_too_large"


class FrameMalformed(P2PError):
    code = "frame_malformed"


class PeerTimeout(P2PError):
    code = "timeout"


class StreamClosed(P2PError):
    """The stream ended (EOF or reset) before a complete frame, or cannot be written."""

    code = "stream_closed"


class ConnectFailed(P2PError):
    """No authenticated connection or no stream for the protocol could be set up."""

    code = "connect_failed"


class ListenFailed(P2PError):
    code = "listen_failed"


class InvalidPeerId(P2PError):
    """The peer id does not embed a secp256k1 key, so it has no Ethereum address."""

    code = "invalid_peer_id"


# ------------------------------------------------------------------------------ ledger, inference, queries

class LedgerError(MeshError):
    code = "ledger"


class InferenceError(MeshError):
    code = "inference"


class ModelFileError(InferenceError):
    code = "model_file"


class ContextOverflowError(InferenceError):
    """The prompt plus max_tokens does not fit the engine's context window."""

    code = "context_overflow"


class QueryError(MeshError):
    """A query could not be run or finished; `job_id` is its job when one was opened (b"" if none)."""

    code = "query_failed"

    def __init__(self, message: str, hint: str | None = None, *, code: str | None = None,
                 job_id: bytes = b"") -> None:
        super().__init__(message, hint, code=code)
        self.job_id = job_id


class ProviderFailed(QueryError):
    """A provider refused, stalled, died or lied about its answer. `code` says which (a wire code,
    mesh.protocol.ERROR_CODES, or the consumer's: unreachable, bad_manifest, bad_result, …)."""

    def __init__(self, code: str, message: str, provider: str = "") -> None:
        super().__init__(message, code=code)
        self.provider = provider


class TooFewProviders(QueryError):
    """The pool cannot seat this job, checked before anything is sent. `code`: too_few_providers
    (fewer than three offer the model), price_cap_too_low (`needed_price`: the cap that would
    reach three), not_enough_stake (for this many tokens), pool_cannot_seat_jury (`limit`: the
    providers a pool needs to judge a job)."""

    code = "too_few_providers"

    def __init__(self, message: str, *, code: str | None = None, needed_price: int = 0, limit: int = 0) -> None:
        super().__init__(message, code=code)
        self.needed_price = needed_price
        self.limit = limit


class PromptTooLong(QueryError):
    """The prompt plus max_tokens cannot fit the context of any provider of the pool (`limit`
    tokens), found after the job was opened and before its draw took any escrow: the undrawn job
    expires by itself."""

    code = "context_overflow"

    def __init__(self, message: str, *, job_id: bytes, limit: int) -> None:
        super().__init__(message, job_id=job_id)
        self.limit = limit


class RequestRefused(QueryError):
    """The seats refused the request itself (`fault`: the seat's ProviderFailed); nothing was
    delivered, so the escrow returns when the job settles without results, from chain time
    `deadline` (`now`: the chain time when this was raised)."""

    code = "request_refused"

    def __init__(self, message: str, *, job_id: bytes, fault: ProviderFailed, deadline: int, now: int) -> None:
        super().__init__(message, job_id=job_id,
                         code="context_overflow" if fault.code == "context_overflow" else None)
        self.fault = fault
        self.deadline = deadline
        self.now = now


def sole_error(exc: BaseException) -> BaseException:
    """The one exception inside nested exception groups (trio and libp2p's nurseries wrap what a
    task raised), or `exc` itself when it holds several or is not a group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
