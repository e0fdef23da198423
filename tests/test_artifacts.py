"""The committed contract artifacts are exactly what the sources compile to."""

from __future__ import annotations

import json

from contracts.compile import BUILD, CONTRACTS, compile_all, source_digest, stale_artifacts


def test_committed_artifacts_match_a_fresh_compile():
    fresh = compile_all()  # real solc (npm, WebAssembly) through py-solc-x
    assert set(fresh) == {name for _, name in CONTRACTS}
    assert stale_artifacts(fresh) == [], "run `python -m contracts.compile` and commit contracts/build/"


def test_artifacts_record_the_source_digest():
    digest = source_digest()
    for _, name in CONTRACTS:
        art = json.loads((BUILD / f"{name}.json").read_text())
        assert art["sourceDigest"] == digest, f"{name} was built from other sources"
        assert art["bytecode"].startswith("0x") and len(art["bytecode"]) > 100
