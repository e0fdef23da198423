"""The committed contract artifacts are exactly what the sources compile to (product and test-only)."""

from __future__ import annotations

import json

import pytest

from meshmarket.contracts.compile import TARGETS, compile_all, source_digest, stale_artifacts


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.src.name)
def test_committed_artifacts_match_a_fresh_compile(target):
    fresh = compile_all(target)  # real solc (npm, WebAssembly) through py-solc-x
    assert set(fresh) == {name for _, name in target.contracts}
    assert stale_artifacts(fresh, target) == [], "run `python -m meshmarket.contracts.compile` and commit the build/ directories"


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.src.name)
def test_artifacts_record_the_source_digest(target):
    digest = source_digest(target)
    for _, name in target.contracts:
        art = json.loads((target.build / f"{name}.json").read_text())
        assert art["sourceDigest"] == digest, f"{name} was built from other sources"
        assert art["bytecode"].startswith("0x") and len(art["bytecode"]) > 100


def test_the_wheel_installs_one_top_level_name(tmp_path):
    """Everything installs under `meshmarket` (pyproject's package-dir mapping): no generic top-level
    name such as `mesh`, `cli` or `ledger` is put into site-packages, where it would shadow (or be
    shadowed by) another distribution's. Data files ride along: artifacts, migrations, the explorer."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    import shutil

    root = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"  # a copy: setuptools writes build/ into the tree it builds
    for name in ("cli", "mesh", "provider", "consumer", "contracts", "ledger", "migrations"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("meshmarket-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"meshmarket"}
    for needed in ("meshmarket/contracts/build/JobMarket.json", "meshmarket/migrations/versions/0001_initial_schema.py",
                   "meshmarket/migrations/env.py", "meshmarket/consumer/gateway/explorer/index.html",
                   "meshmarket/cli/main.py"):
        assert needed in names, f"{needed} missing from the wheel"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mesh = meshmarket.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()
