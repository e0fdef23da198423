"""The committed contract artifacts are exactly what the sources compile to (product and test-only)."""

from __future__ import annotations

import json

import pytest

from contracts.compile import TARGETS, compile_all, source_digest, stale_artifacts


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.src.name)
def test_committed_artifacts_match_a_fresh_compile(target):
    fresh = compile_all(target)  # real solc (npm, WebAssembly) through py-solc-x
    assert set(fresh) == {name for _, name in target.contracts}
    assert stale_artifacts(fresh, target) == [], "run `python -m contracts.compile` and commit the build/ directories"


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.src.name)
def test_artifacts_record_the_source_digest(target):
    digest = source_digest(target)
    for _, name in target.contracts:
        art = json.loads((target.build / f"{name}.json").read_text())
        assert art["sourceDigest"] == digest, f"{name} was built from other sources"
        assert art["bytecode"].startswith("0x") and len(art["bytecode"]) > 100
