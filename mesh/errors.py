"""The one exception root of Meshmarket and its subtrees.

    MeshError                      every error this project raises on purpose
    ├── ConfigError                bad settings, missing deployment, bad user input
    ├── KeystoreError              keystores: missing, wrong password, refused key
    ├── ChainError                 talking to the chain
    │   ├── NodeUnreachable        no JSON-RPC node at the URL
    │   ├── WrongChain             the node is not the chain the deployment was made on
    │   ├── NotDeployed            no contracts at the recorded addresses
    │   └── ContractReverted       a revert, decoded into a sentence (mesh.chain.decode_revert)
    ├── P2PError                   peers and streams (mesh.p2p)
    ├── LedgerError                the local SQL ledger
    └── InferenceError             the model engine

Library code raises these; only the CLI turns them into click errors (mesh/cli.py), so a user
sees one sentence saying what to do, never a traceback.
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


class ChainError(MeshError):
    pass


class NodeUnreachable(ChainError):
    pass


class WrongChain(ChainError):
    pass


class NotDeployed(ChainError):
    pass


class ContractReverted(ChainError):
    """A transaction or call reverted; `name` is the custom error, `args` its decoded arguments."""

    def __init__(self, message: str, hint: str | None = None, name: str = "", args: tuple = ()) -> None:
        super().__init__(message, hint)
        self.name = name
        self.error_args = args


# P2PError lives in mesh.p2p (with its subtree) so the adapter stays one self-contained module.


class LedgerError(MeshError):
    pass


class InferenceError(MeshError):
    pass
