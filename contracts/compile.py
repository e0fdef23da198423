"""Compile the Solidity sources with py-solc-x over the npm `solc` (WebAssembly) compiler.

Writes one artifact per contract to contracts/build/<Name>.json (ABI, creation and runtime
bytecode, compiler version, a hash of every source that went in). The artifacts are committed so
a user without Node can deploy; tests/test_artifacts.py fails when they are stale.

    python -m contracts.compile          # rebuild the artifacts
    python -m contracts.compile --check  # exit 1 if the committed artifacts are stale
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
BUILD = HERE / "build"
WRAPPER = HERE / "solcjs-wrapper"

#: Contracts that get an artifact: (source path relative to src/, contract name).
CONTRACTS: tuple[tuple[str, str], ...] = (
    ("MeshToken.sol", "MeshToken"),
    ("ProviderRegistry.sol", "ProviderRegistry"),
    ("JobMarket.sol", "JobMarket"),
    ("test/HostileToken.sol", "HostileToken"),
)

#: Cancun for transient storage (OpenZeppelin's ReentrancyGuardTransient); the optimizer's runs
#: favour cheap calls over small deployments because jobs are many and deployments few.
SETTINGS = {
    "optimizer": {"enabled": True, "runs": 10_000},
    "viaIR": True,
    "evmVersion": "cancun",
    "remappings": ["@openzeppelin/contracts/=node_modules/@openzeppelin/contracts/"],
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


class CompileError(RuntimeError):
    pass


def node_root() -> Path:
    """The directory holding node_modules/ (the repository root unless MESH_NODE_ROOT says otherwise)."""
    return Path(os.environ.get("MESH_NODE_ROOT", HERE.parent))


def source_digest() -> str:
    """sha256 over every .sol file under src/ (names and contents), to spot stale artifacts cheaply."""
    h = hashlib.sha256()
    for path in sorted(SRC.rglob("*.sol")):
        h.update(path.relative_to(SRC).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return "0x" + h.hexdigest()


def compile_all() -> dict[str, dict]:
    import solcx  # imported here: deploying from committed artifacts needs no compiler

    root = node_root()
    if not (root / "node_modules" / "solc" / "solc.js").exists():
        raise CompileError(f"the npm package 'solc' is not installed under {root}: run the README's set-up command")
    sources = {
        f"contracts/src/{p.relative_to(SRC).as_posix()}": {"content": p.read_text()}
        for p in sorted(SRC.rglob("*.sol"))
    }
    standard_input = {"language": "Solidity", "sources": sources, "settings": SETTINGS}
    env_root = os.environ.get("MESH_NODE_ROOT")
    os.environ["MESH_NODE_ROOT"] = str(root)
    try:
        out = solcx.compile_standard(standard_input, solc_binary=str(WRAPPER), base_path=str(root))
    except solcx.exceptions.SolcError as exc:
        raise CompileError(str(exc)) from exc
    finally:
        if env_root is None:
            os.environ.pop("MESH_NODE_ROOT", None)
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(e.get("formattedMessage", e["message"]) for e in errors))
    digest = source_digest()
    artifacts = {}
    for rel, name in CONTRACTS:
        c = out["contracts"][f"contracts/src/{rel}"][name]
        artifacts[name] = {
            "contractName": name,
            "source": f"contracts/src/{rel}",
            "compiler": "solc 0.8.37 (npm solc, WebAssembly)",
            "settings": {k: v for k, v in SETTINGS.items() if k != "outputSelection"},
            "sourceDigest": digest,
            "abi": c["abi"],
            "bytecode": "0x" + c["evm"]["bytecode"]["object"],
            "deployedBytecode": "0x" + c["evm"]["deployedBytecode"]["object"],
        }
    return artifacts


def write_artifacts(artifacts: dict[str, dict]) -> None:
    BUILD.mkdir(exist_ok=True)
    for name, art in artifacts.items():
        (BUILD / f"{name}.json").write_text(json.dumps(art, indent=1, sort_keys=True) + "\n")


def load_artifact(name: str) -> dict:
    path = BUILD / f"{name}.json"
    if not path.exists():
        raise CompileError(f"no build artifact for {name} at {path}: run `python -m contracts.compile`")
    return json.loads(path.read_text())


def stale_artifacts(fresh: dict[str, dict] | None = None) -> list[str]:
    """Names whose committed artifact differs from what the sources compile to."""
    fresh = fresh if fresh is not None else compile_all()
    stale = []
    for name, art in fresh.items():
        path = BUILD / f"{name}.json"
        if not path.exists():
            stale.append(name)
            continue
        old = json.loads(path.read_text())
        if any(old.get(k) != art[k] for k in ("abi", "bytecode", "deployedBytecode", "sourceDigest")):
            stale.append(name)
    return stale


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_artifacts()
        if stale:
            print("stale artifacts: " + ", ".join(stale) + " (run python -m contracts.compile)", file=sys.stderr)
            return 1
        print("artifacts are up to date")
        return 0
    arts = compile_all()
    write_artifacts(arts)
    for name, art in arts.items():
        print(f"{name}: {(len(art['deployedBytecode']) - 2) // 2} bytes runtime")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
