"""The one exception root of Meshmarket and its whole tree (after web3.py's `exceptions.py`).

    MeshError                      every error this project raises on purpose; `hint` says what to do
    ├── ConfigError                bad settings, missing deployment, bad user input
    ├── KeystoreError              keystores: missing, wrong password, refused key
    ├── ChainError                 talking to the chain (mesh.chain)
    │   ├── NodeUnreachable        no JSON-RPC node at the URL
    │   ├── WrongChain             the node is not the chain the deployment was made on
    │   ├── NotDeployed            no contracts at the recorded addresses
    │   └── ContractReverted       a revert, decoded into a sentence (mesh.chain.RevertDecoder)
    ├── ContractsError             building the contracts: compiler missing or failing, no artifact
    ├── ProtocolError              a message that breaks the wire protocol (mesh.protocol); `code` is
    │   └── ManifestError            the protocol's error code: bad manifest (unsigned, wrong signer…)
    ├── P2PError                   peers and streams (mesh.p2p); `code` goes into the error frame
    │   ├── FrameTooLarge, FrameMalformed, PeerTimeout, StreamClosed
    │   └── ConnectFailed, ListenFailed, InvalidPeerId
    ├── LedgerError                the local SQL ledger
    ├── InferenceError             the model engine
    │   ├── ModelFileError           no model file, or not a readable GGUF
    │   └── ContextOverflowError     prompt + max_tokens does not fit the context window
    └── QueryError                 a consumer's query could not be run (too few providers, no funds…)
        └── ProviderFailed           one provider refused, stalled, died or lied (`code`, `provider`)

Library code raises these; only the CLI (cli/main.py) turns them into one line for the user, and
only the p2p adapter turns them into error frames for a peer. Reverts are decoded in exactly one
place (mesh.chain.RevertDecoder).
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of every error Meshmarket raises on purpose. `hint` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} — {self.hint}" if self.hint else base


class ConfigError(MeshError):
    pass


class KeystoreError(MeshError):
    pass


# ------------------------------------------------------------------------------ chain

class ChainError(MeshError):
    pass


class NodeUnreachable(ChainError):
    pass


class WrongChain(ChainError):
    pass


class NotDeployed(ChainError):
    pass


class ContractReverted(ChainError):
    """A transaction or call reverted; `name` is the custom error, `error_args` its decoded arguments."""

    def __init__(self, message: str, hint: str | None = None, name: str = "", args: tuple = ()) -> None:
        super().__init__(message, hint)
        self.name = name
        self.error_args = args


class ContractsError(MeshError):
    pass


# ------------------------------------------------------------------------------ wire and peers

class ProtocolError(MeshError):
    """A peer message that breaks the protocol; `code` is one of mesh.protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code


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
    pass


class InferenceError(MeshError):
    pass


class ModelFileError(InferenceError):
    pass


class ContextOverflowError(InferenceError):
    """The prompt plus max_tokens does not fit the engine's context window."""


class QueryError(MeshError):
    pass


class ProviderFailed(QueryError):
    """A provider refused, stalled, died or lied about its answer. `code` says which."""

    def __init__(self, code: str, message: str, provider: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.provider = provider


def sole_error(exc: BaseException) -> BaseException:
    """The one exception inside nested exception groups (trio and libp2p's nurseries wrap what a
    task raised), or `exc` itself when it holds several or is not a group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
