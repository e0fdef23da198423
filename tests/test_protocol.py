"""The wire protocol, defined once (mesh/protocol.py): one validator per message, strict types,
sentences a remote peer can act on, unknown fields ignored, and JSON Schemas in docs/ that are
generated from the code (and fail this test when stale)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak
from hypothesis import given, settings, strategies as st

from mesh.errors import ProtocolError
from mesh.protocol import (
    ERROR_CODES,
    MAX_PROMPT_BYTES,
    MAX_SEED,
    MESSAGES,
    Hardware,
    InferRequest,
    Job,
    Manifest,
    Sampling,
    canonical_json,
    error_frame,
    json_schemas,
    received_manifest,
)

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "obj,code,message",
    [
        ({"max_tokens": 1}, "bad_request", "give exactly one of messages or prompt"),
        ({"messages": USER, "prompt": "x", "max_tokens": 1}, "bad_request", "exactly one of messages or prompt"),
        ({"prompt": "", "max_tokens": 1}, "bad_request", "sampling.prompt must not be empty"),
        ({"messages": [], "max_tokens": 1}, "bad_request", "messages must hold 1 to 64"),
        ({"messages": "hello", "max_tokens": 1}, "bad_request", "sampling.messages must be a list, got a string"),
        ({"messages": [{"role": "tool", "content": "x"}], "max_tokens": 1}, "bad_request", r"messages\[0\].role must be"),
        ({"messages": [{"role": "user", "content": ""}], "max_tokens": 1}, "bad_request", "content must not be empty"),
        ({"messages": [{"role": "user", "content": "x", "name": "b"}], "max_tokens": 1}, "bad_request", "unknown field"),
        ({"prompt": "x" * (MAX_PROMPT_BYTES + 1), "max_tokens": 1}, "too_large", "the limit is 65536"),
        ({"prompt": "x", "max_tokens": 0}, "bad_request", "max_tokens must be >= 1, got 0"),
        ({"prompt": "x", "max_tokens": 4097}, "bad_request", "max_tokens must be <= 4096"),
        ({"prompt": "x", "max_tokens": 1.5}, "bad_request", "max_tokens must be an integer, got a number with a fraction"),
        ({"prompt": "x", "max_tokens": True}, "bad_request", "max_tokens must be an integer, got a boolean"),
        ({"prompt": "x", "max_tokens": "8"}, "bad_request", "max_tokens must be an integer, got a string"),
        ({"prompt": "x", "max_tokens": None}, "bad_request", "max_tokens must be an integer, got null"),
        ({"prompt": "x", "max_tokens": 1, "temperature_milli": 2001}, "bad_request", "temperature_milli must be <= 2000"),
        ({"prompt": "x", "max_tokens": 1, "top_p_milli": 0}, "bad_request", "top_p_milli must be >= 1"),
        ({"prompt": "x", "max_tokens": 1, "seed": -1}, "bad_request", "seed must be >= 0"),
        ({"prompt": "x", "max_tokens": 1, "seed": 2**32 - 1}, "bad_request", "seed must be <= 4294967294"),
        ({"prompt": "\ud800", "max_tokens": 1}, "bad_request", "lone surrogate"),
        ([1, 2], "bad_request", "sampling must be an object"),
    ],
)
def test_sampling_refusals_name_the_field_and_the_fix(obj, code, message):
    with pytest.raises(ProtocolError, match=message) as info:
        Sampling.parse(obj)
    assert info.value.code == code


def test_sampling_bounds_are_accepted_and_unknown_fields_ignored():
    Sampling.parse({"prompt": "x", "max_tokens": 4096, "temperature_milli": 2000, "top_p_milli": 1, "seed": MAX_SEED,
                    "from_the_future": {"x": 1}})
    s = Sampling(messages=(("user", "hi"),), max_tokens=1)  # Python callers may use pairs
    assert s.to_wire()["messages"] == USER and "prompt" not in s.to_wire()


def test_prompt_hash_is_keccak_of_canonical_json():
    s = Sampling(messages=(("user", "héllo"),), max_tokens=8, seed=3)
    model = keccak(b"model")
    expected = keccak(('{"model":"0x' + model.hex() + '","sampling":{"max_tokens":8,"messages":[{"content":"héllo",'
                       '"role":"user"}],"seed":3,"temperature_milli":0,"top_p_milli":1000}}').encode())
    assert s.prompt_hash(model) == expected


def _request(**over) -> dict:
    job = Job(consumer="0x" + "11" * 20, model_hash=keccak(b"m"), prompt_hash=keccak(b"p"), max_tokens=8, price_cap=10,
              opened_at=1, providers=("0x" + "22" * 20, "0x" + "33" * 20, "0x" + "44" * 20), prices=(10, 10, 10))
    return {**InferRequest(keccak(b"j"), job, 0, Sampling(messages=USER, max_tokens=8)).to_wire(), **over}


@pytest.mark.parametrize(
    "over,message",
    [
        ({"version": None}, "version None; this provider speaks protocol version 1"),
        ({"type": "result"}, "expected a frame of type 'infer'"),
        ({"index": 3}, "infer.index must be <= 2"),
        ({"job_id": "0x12"}, "infer.job_id: must be 0x followed by 64 hex digits"),
        ({"job": None}, "infer.job must be an object, got null"),
    ],
)
def test_infer_request_refusals(over, message):
    with pytest.raises(ProtocolError, match=message):
        InferRequest.parse(_request(**over))


def test_infer_request_round_trips_and_ignores_unknown_fields():
    wire = _request(extension={"anything": [1]})
    req = InferRequest.parse(wire)
    assert InferRequest.parse(req.to_wire()) == req
    wire.pop("version")
    with pytest.raises(ProtocolError, match="no version field"):
        InferRequest.parse(wire)


def test_job_hash_matches_the_contracts_abi_encoding():
    job = Job.parse(_request()["job"])
    assert job.hash() == keccak(bytes.fromhex(_abi_hex(job)))
    assert job.escrow == 8 * 30


def _abi_hex(job: Job) -> str:
    from eth_abi import encode

    return encode(["(address,bytes32,bytes32,uint64,uint64,uint64,address[3],uint64[3])"], [job.as_abi()]).hex()


def test_error_frames_carry_only_documented_codes():
    assert error_frame("busy", "x") == {"type": "error", "code": "busy", "message": "x"}
    with pytest.raises(ValueError, match="unknown error code"):
        error_frame("made_up", "x")
    assert {"stream_closed", "frame_malformed", "frame_too_large", "timeout", "internal"} <= set(ERROR_CODES)


def _manifest() -> tuple[Manifest, object]:
    acct = Account.from_key("0x" + "11" * 32)
    m = Manifest(model_id="m", model_sha256="0x" + "ab" * 32, architecture="llama", quantization="Q4_1",
                 context_length=8192, price_per_token=3, peer_id="16Uiu2", multiaddrs=("/ip4/127.0.0.1/tcp/1",),
                 protocol_version="1", hardware=Hardware(cpu_threads=1, gpu_name="", gpu_memory_mb=0, gpu_layers=0),
                 provider=acct.address, issued_at=1)
    return m.sign(acct), acct


def test_a_received_manifest_is_hashed_as_received_unknown_fields_included():
    m, acct = _manifest()
    raw = {**m.to_dict(), "newer_field": [1, 2]}
    raw.pop("signature")
    digest = keccak(canonical_json(raw))
    raw["signature"] = "0x" + bytes(acct.sign_message(encode_defunct(primitive=digest)).signature).hex()
    manifest, got, signer = received_manifest(raw)
    assert got == digest and signer == acct.address and manifest.model_id == "m"


def test_json_schemas_in_docs_are_generated_from_the_code():
    schemas = json_schemas()
    assert set(schemas) == set(MESSAGES)
    for name, schema in schemas.items():
        path = SCHEMAS / f"{name}.json"
        assert path.exists(), f"missing {path}: run `python -m mesh.protocol --write-schemas`"
        assert json.loads(path.read_text()) == schema, f"{path} is stale: run `python -m mesh.protocol --write-schemas`"
    # What a third-party provider got wrong once: gpu_name is a string, "" without a GPU, never null.
    hw = schemas["manifest"]["$defs"]["Hardware"]["properties"]["gpu_name"]
    assert hw["type"] == "string"


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=5),
                    max_leaves=20))
def test_arbitrary_json_is_refused_with_a_documented_code_or_accepted(value):
    """Whatever JSON a peer sends as a request, the decoder answers a documented code (never a crash)."""
    for candidate in (value, {"type": "infer", "version": 1, **(value if isinstance(value, dict) else {})}):
        try:
            InferRequest.parse(candidate)
        except ProtocolError as exc:
            assert exc.code in ERROR_CODES and str(exc)
