"""Compile the Solidity sources with py-solc-x over the npm `solc` (WebAssembly) compiler.

Writes one artifact per contract to <target>/build/<Name>.json (ABI, creation and runtime
bytecode, compiler version, a hash of every source that went in). Two targets: the product's
contracts (contracts/src -> contracts/build, shipped) and the test-only contracts (tests/contracts
-> tests/contracts/build, not shipped). The artifacts are committed so a user without Node can
deploy; tests/test_artifacts.py fails when they are stale.

    python -m meshmarket.contracts.compile          # rebuild the artifacts
    python -m meshmarket.contracts.compile --check  # exit 1 if the committed artifacts are stale
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from meshmarket.mesh.errors import ContractsError

HERE = Path(__file__).resolve().parent
WRAPPER = HERE / "solcjs-wrapper"


@dataclass(frozen=True)
class Target:
    """A directory of sources, where their artifacts go, and which contracts get one."""

    src: Path
    build: Path
    #: (source path relative to src, contract name)
    contracts: tuple[tuple[str, str], ...]


PRODUCT = Target(HERE / "src", HERE / "build", (
    ("MeshToken.sol", "MeshToken"),
    ("ProviderRegistry.sol", "ProviderRegistry"),
    ("JobMarket.sol", "JobMarket"),
))
#: Test-only contracts (a hostile token for the reentrancy test, a harness exposing the SortitionTree
#: library): compiled the same way, never shipped.
TESTS = Target(HERE.parent / "tests" / "contracts", HERE.parent / "tests" / "contracts" / "build", (
    ("HostileToken.sol", "HostileToken"),
    ("SortitionHarness.sol", "SortitionHarness"),
))
TARGETS = (PRODUCT, TESTS)

#: Cancun for transient storage (OpenZeppelin's ReentrancyGuardTransient); the optimizer's runs
#: favour cheap calls over small deployments because jobs are many and deployments few.
SETTINGS = {
    "optimizer": {"enabled": True, "runs": 1000},
    "viaIR": True,
    "evmVersion": "cancun",
    "remappings": ["@openzeppelin/contracts/=node_modules/@openzeppelin/contracts/"],
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


def node_root() -> Path:
    """The directory holding node_modules/ (the repository root unless MESH_NODE_ROOT says otherwise)."""
    return Path(os.environ.get("MESH_NODE_ROOT", HERE.parent))


def source_digest(target: Target = PRODUCT) -> str:
    """sha256 over every .sol file of the target (names and contents), to spot stale artifacts cheaply."""
    h = hashlib.sha256()
    for path in sorted(target.src.rglob("*.sol")):
        h.update(path.relative_to(target.src).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return "0x" + h.hexdigest()


def compile_all(target: Target = PRODUCT) -> dict[str, dict]:
    import solcx  # imported here: deploying from committed artifacts needs no compiler

    root = node_root()
    if not (root / "node_modules" / "solc" / "solc.js").exists():
        raise ContractsError(f"the npm package 'solc' is not installed under {root}", "run the README's set-up command")
    prefix = target.src.relative_to(HERE.parent).as_posix()
    sources = {f"{prefix}/{p.relative_to(target.src).as_posix()}": {"content": p.read_text()}
               for p in sorted(target.src.rglob("*.sol"))}
    standard_input = {"language": "Solidity", "sources": sources, "settings": SETTINGS}
    env_root = os.environ.get("MESH_NODE_ROOT")
    os.environ["MESH_NODE_ROOT"] = str(root)
    try:
        out = solcx.compile_standard(standard_input, solc_binary=str(WRAPPER), base_path=str(root))
    except solcx.exceptions.SolcError as exc:
        raise ContractsError(str(exc)) from exc
    finally:
        if env_root is None:
            os.environ.pop("MESH_NODE_ROOT", None)
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise ContractsError("\n".join(e.get("formattedMessage", e["message"]) for e in errors))
    digest = source_digest(target)
    artifacts = {}
    for rel, name in target.contracts:
        c = out["contracts"][f"{prefix}/{rel}"][name]
        artifacts[name] = {
            "contractName": name,
            "source": f"{prefix}/{rel}",
            "compiler": "solc 0.8.37 (npm solc, WebAssembly)",
            "settings": {k: v for k, v in SETTINGS.items() if k != "outputSelection"},
            "sourceDigest": digest,
            "abi": c["abi"],
            "bytecode": "0x" + c["evm"]["bytecode"]["object"],
            "deployedBytecode": "0x" + c["evm"]["deployedBytecode"]["object"],
        }
    return artifacts


def write_artifacts(artifacts: dict[str, dict], target: Target = PRODUCT) -> None:
    target.build.mkdir(exist_ok=True)
    for name, art in artifacts.items():
        (target.build / f"{name}.json").write_text(json.dumps(art, indent=1, sort_keys=True) + "\n")


def stale_artifacts(fresh: dict[str, dict] | None = None, target: Target = PRODUCT) -> list[str]:
    """Names whose committed artifact differs from what the sources compile to."""
    fresh = fresh if fresh is not None else compile_all(target)
    stale = []
    for name, art in fresh.items():
        path = target.build / f"{name}.json"
        if not path.exists():
            stale.append(name)
            continue
        old = json.loads(path.read_text())
        if any(old.get(k) != art[k] for k in ("abi", "bytecode", "deployedBytecode", "sourceDigest")):
            stale.append(name)
    return stale


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = [n for t in TARGETS for n in stale_artifacts(target=t)]
        if stale:
            print("stale artifacts: " + ", ".join(stale) + " (run python -m meshmarket.contracts.compile)", file=sys.stderr)
            return 1
        print("artifacts are up to date")
        return 0
    for target in TARGETS:
        arts = compile_all(target)
        write_artifacts(arts, target)
        for name, art in arts.items():
            print(f"{name}: {(len(art['deployedBytecode']) - 2) // 2} bytes runtime")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
