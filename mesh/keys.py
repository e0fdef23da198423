"""Keys: eth-account encrypted keystores in $MESH_HOME/keystore, and Anvil's dev accounts.

A key never appears on a command line or in a plain config file. Passwords come from a prompt or
from $MESH_PASSWORD (for scripts and CI). Anvil's dev keys are public knowledge: `dev:N` names
dev account N and is refused on any chain but the local one (chain id 31337).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from meshmarket.mesh import config
from meshmarket.mesh.anvil import DEV_ACCOUNT_COUNT, DEV_MNEMONIC
from meshmarket.mesh.errors import KeystoreError
from meshmarket.mesh.files import write_atomic

Account.enable_unaudited_hdwallet_features()

#: Keystores use scrypt with eth-account's defaults (n=2^18): slow on purpose against guessing.
#: Tests may lower it through MESH_KDF_N; never set that for real keys.
_DEFAULT_KDF_N = 2**18


@lru_cache(maxsize=DEV_ACCOUNT_COUNT)
def dev_account(index: int) -> LocalAccount:
    if not 0 <= index < DEV_ACCOUNT_COUNT:
        raise KeystoreError(f"dev account {index} does not exist", f"use 0 to {DEV_ACCOUNT_COUNT - 1}")
    return Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


def keystore_dir() -> Path:
    path = config.home() / "keystore"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _path_for(address: str) -> Path:
    return keystore_dir() / f"{to_checksum_address(address)}.json"


def save_keystore(account: LocalAccount, password: str) -> Path:
    if not password:
        raise KeystoreError("an empty password is not allowed", "choose a password")
    n = int(os.environ.get("MESH_KDF_N", _DEFAULT_KDF_N))
    encrypted = Account.encrypt(account.key, password, kdf="scrypt", iterations=n)
    path = _path_for(account.address)
    if path.exists():
        raise KeystoreError(f"a keystore for {account.address} already exists", f"it is at {path}")
    try:
        # Complete and on disk, or absent: a crash mid-write never leaves a truncated keystore that
        # would then block the import again.
        write_atomic(path, json.dumps(encrypted), mode=0o600, exclusive=True)
    except FileExistsError:
        raise KeystoreError(f"a keystore for {account.address} already exists", f"it is at {path}") from None
    return path


def new_account(password: str) -> tuple[LocalAccount, Path]:
    acct = Account.create()
    return acct, save_keystore(acct, password)


def import_key(private_key_hex: str, password: str) -> tuple[LocalAccount, Path]:
    try:
        acct = Account.from_key(private_key_hex.strip())
    except (ValueError, TypeError) as exc:
        raise KeystoreError("that is not a valid private key", "paste 64 hex characters, optionally 0x-prefixed") from exc
    return acct, save_keystore(acct, password)


def has_keystore(name: str) -> bool:
    try:
        return _path_for(name).exists()
    except ValueError:
        return False


def list_accounts() -> list[str]:
    out = []
    for p in sorted(keystore_dir().glob("*.json")):
        try:
            out.append(to_checksum_address("0x" + json.loads(p.read_text())["address"]))
        except (ValueError, KeyError):
            continue  # not a keystore: ignore rather than fail the whole listing
    return out


def load_account(name: str, password: str | None, chain_id: int | None = None) -> LocalAccount:
    """`dev:N` (local chain only) or an address with a keystore."""
    if name.startswith("dev:"):
        if chain_id is not None and chain_id != config.ANVIL_CHAIN_ID:
            raise KeystoreError("dev accounts are public keys and only allowed on the local chain (31337)",
                                "create a keystore with `mesh account new`")
        try:
            return dev_account(int(name[4:]))
        except ValueError as exc:
            raise KeystoreError(f"{name!r} is not a dev account name", f"write dev:0 … dev:{DEV_ACCOUNT_COUNT - 1}") from exc
    try:
        path = _path_for(name)
    except ValueError as exc:
        raise KeystoreError(f"{name!r} is neither an address nor dev:N", "see `mesh account list`") from exc
    if not path.exists():
        # On the local chain, a dev account may also be named by its address.
        if chain_id in (None, config.ANVIL_CHAIN_ID):
            for i in range(DEV_ACCOUNT_COUNT):
                if dev_account(i).address == to_checksum_address(name):
                    return dev_account(i)
        raise KeystoreError(f"no keystore for {name}", "create one with `mesh account new` or `mesh account import`")
    if password is None:
        raise KeystoreError(f"the keystore of {name} needs a password", "set MESH_PASSWORD or answer the prompt")
    try:
        return Account.from_key(Account.decrypt(json.loads(path.read_text()), password))
    except ValueError as exc:
        raise KeystoreError(f"wrong password for {name}", "try again") from exc
