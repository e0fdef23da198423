"""The wire protocol, defined once (mesh/protocol.py): one validator per message, strict types,
sentences a remote peer can act on, unknown fields ignored, and JSON Schemas in docs/ that are
generated from the code (and fail this test when stale). Version 2: the job is the on-chain tuple
with its drawn seats, a request names its seat, a result carries its tokens, a request may give
stop strings (StopScanner)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak
from hypothesis import given, settings, strategies as st

from meshmarket.mesh.errors import ManifestError, ProtocolError
from meshmarket.mesh.protocol import (
    ERROR_CODES,
    MAX_PROMPT_BYTES,
    MAX_SEED,
    MESSAGES,
    PROTOCOL_VERSION,
    ZERO_ADDRESS,
    Build,
    Hardware,
    InferRequest,
    Job,
    Manifest,
    ResultFrame,
    Sampling,
    StopScanner,
    canonical_json,
    error_frame,
    json_schemas,
    output_hash,
    pack_tokens,
    received_manifest,
    unpack_tokens,
)

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
USER = [{"role": "user", "content": "hi"}]
CONSUMER, A, B, C = ("0x" + d * 20 for d in ("11", "22", "33", "44"))


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
        # Stop strings (v2): at most four, each non-empty and at most 64 long, a list of strings.
        ({"prompt": "x", "max_tokens": 1, "stop": ["a"] * 5}, "bad_request",
         "sampling.stop must be at most this long: 4"),
        ({"prompt": "x", "max_tokens": 1, "stop": ["a" * 65]}, "bad_request", r"sampling.stop\[0\] must be at most"),
        ({"prompt": "x", "max_tokens": 1, "stop": [""]}, "bad_request", r"sampling.stop\[0\] must not be empty"),
        ({"prompt": "x", "max_tokens": 1, "stop": "\n"}, "bad_request", "sampling.stop must be a list, got a string"),
        ({"prompt": "x", "max_tokens": 1, "stop": [7]}, "bad_request", r"sampling.stop\[0\] must be a string"),
        ({"prompt": "x", "max_tokens": 1, "stop": ["\udfff"]}, "bad_request", "lone surrogate"),
    ],
)
def test_sampling_refusals_name_the_field_and_the_fix(obj, code, message):
    with pytest.raises(ProtocolError, match=message) as info:
        Sampling.parse(obj)
    assert info.value.code == code


def test_sampling_bounds_are_accepted_and_unknown_fields_ignored():
    s = Sampling.parse({"prompt": "x", "max_tokens": 4096, "temperature_milli": 2000, "top_p_milli": 1,
                        "seed": MAX_SEED, "stop": ["a" * 64, "b", "c", "d"], "from_the_future": {"x": 1}})
    assert s.stop == ("a" * 64, "b", "c", "d") and "from_the_future" not in s.to_wire()
    s = Sampling(messages=(("user", "hi"),), max_tokens=1)  # Python callers may use pairs
    assert s.to_wire()["messages"] == USER and "prompt" not in s.to_wire()


def test_prompt_hash_is_keccak_of_canonical_json():
    s = Sampling(messages=(("user", "héllo"),), max_tokens=8, seed=3)
    model = keccak(b"model")
    expected = keccak(('{"model":"0x' + model.hex() + '","sampling":{"max_tokens":8,"messages":[{"content":"héllo",'
                       '"role":"user"}],"seed":3,"temperature_milli":0,"top_p_milli":1000}}').encode())
    assert s.prompt_hash(model) == expected
    assert keccak(canonical_json(s.request(model))) == expected  # what a dispute publishes hashes to it
    # No stop strings and an empty list are the same request: the key is absent from the hashed bytes.
    assert Sampling.parse({**s.to_wire(), "stop": []}).prompt_hash(model) == expected
    # Stop strings are part of what is hashed (they change the answer).
    stopped = s.model_copy(update={"stop": ("\n\n",)})
    assert stopped.prompt_hash(model) == keccak(
        ('{"model":"0x' + model.hex() + '","sampling":{"max_tokens":8,"messages":[{"content":"héllo","role":"user"}],'
         '"seed":3,"stop":["\\n\\n"],"temperature_milli":0,"top_p_milli":1000}}').encode())
    assert stopped.prompt_hash(model) != expected


def _job(**over) -> Job:
    fields = dict(consumer=CONSUMER, slot=3, model_hash=keccak(b"m"), prompt_hash=keccak(b"p"), max_tokens=8,
                  price_cap=10, open_block=41, drawn_at=1_700_000_000, seed=keccak(b"seed"),
                  seats=(A, B, C, ZERO_ADDRESS, ZERO_ADDRESS), prices=(10, 9, 10, 0, 0))
    return Job(**{**fields, **over})


def _request(**over) -> dict:
    job = _job()
    return {**InferRequest(job.job_id, job, 1, Sampling(messages=USER, max_tokens=8)).to_wire(), **over}


@pytest.mark.parametrize(
    "over,message",
    [
        ({"version": None}, f"version None; this provider speaks protocol version {PROTOCOL_VERSION}"),
        ({"version": 1}, f"version 1; this provider speaks protocol version {PROTOCOL_VERSION}"),
        ({"type": "result"}, "expected a frame of type 'infer'"),
        ({"seat": 5}, "infer.seat must be < 5"),
        ({"seat": -1}, "infer.seat must be >= 0"),
        ({"seat": True}, "infer.seat must be an integer, got a boolean"),
        ({"job_id": "0x12"}, "infer.job_id: must be 0x followed by 64 hex digits"),
        # The id a seat signs its result for must be the id of the job it checks and computes.
        ({"job_id": "0x" + keccak(b"another job").hex()}, r"job_id is not the job's id"),
        ({"job": {**_job().to_wire(), "slot": 4}}, r"job_id is not the job's id"),
        ({"job": None}, "infer.job must be an object, got null"),
        ({"job": {**_job().to_wire(), "slot": 16}}, "infer.job.slot must be < 16"),
        ({"job": {**_job().to_wire(), "seats": [A, B, C]}}, r"infer.job.seats\[3\]: missing field"),
        ({"job": {**_job().to_wire(), "prices": [10, 10, 10, 0, 2**64]}}, r"infer.job.prices\[4\] must be <="),
        ({"job": {**_job().to_wire(), "seed": "0x12"}}, "infer.job.seed: must be 0x followed by 64 hex digits"),
        ({"job": {**_job().to_wire(), "max_tokens": 2**20 + 1}}, "infer.job.max_tokens must be <= 1048576"),
        ({"sampling": {"prompt": "x", "max_tokens": 8, "stop": [""]}}, r"infer.sampling.stop\[0\] must not be empty"),
    ],
)
def test_infer_request_refusals(over, message):
    with pytest.raises(ProtocolError, match=message) as info:
        InferRequest.parse(_request(**over))
    assert info.value.code == "bad_request"


def test_a_version_1_request_is_refused_with_the_version_it_needs():
    """A v1 consumer (an `index`, a job with `providers` and `opened_at`) learns which version to speak."""
    v1 = {"type": "infer", "version": 1, "job_id": "0x" + "ab" * 32, "index": 0,
          "job": {"consumer": CONSUMER, "model_hash": "0x" + "00" * 32, "prompt_hash": "0x" + "00" * 32,
                  "max_tokens": 8, "price_cap": 10, "opened_at": 1, "providers": [A, B, C], "prices": [10, 10, 10]},
          "sampling": {"messages": USER, "max_tokens": 8}}
    with pytest.raises(ProtocolError, match="version 1; this provider speaks protocol version 2"):
        InferRequest.parse(v1)
    with pytest.raises(ProtocolError, match="infer.job.slot: missing field"):
        InferRequest.parse({**v1, "version": 2})  # v1's job has no slot, its request no seat


def test_a_request_names_its_own_jobs_id():
    job = _job()
    with pytest.raises(ValueError, match="job_id is not the job's id"):
        InferRequest(keccak(b"another job"), job, 0, Sampling(messages=USER, max_tokens=8))
    assert InferRequest(job.job_id, job, 0, Sampling(messages=USER, max_tokens=8)).job_id == job.job_id


def test_infer_request_round_trips_and_ignores_unknown_fields():
    wire = _request(extension={"anything": [1]})
    req = InferRequest.parse(wire)
    assert req.seat == 1 and req.job == _job() and req.job_id == _job().job_id
    assert InferRequest.parse(req.to_wire()) == req
    assert wire["version"] == PROTOCOL_VERSION == 2
    wire.pop("version")
    with pytest.raises(ProtocolError, match="no version field"):
        InferRequest.parse(wire)


def test_job_hash_and_id_match_the_contracts_abi_encoding():
    job = Job.parse(_request()["job"])
    # Written out independently of mesh.protocol's JOB_ABI: the Solidity struct, field by field.
    encoded = abi_encode(["(address,uint8,bytes32,bytes32,bytes32,uint64,uint64,uint64,uint64,bytes32,address[5],"
                          "uint64[5])"],
                         [(CONSUMER, 3, keccak(b"m"), b"\x00" * 32, keccak(b"p"), 8, 10, 41, 1_700_000_000,
                           keccak(b"seed"), [A, B, C, ZERO_ADDRESS, ZERO_ADDRESS], [10, 9, 10, 0, 0])])
    assert len(encoded) == 640  # a static tuple: the 640 bytes after the selector (docs/PROTOCOL.md)
    assert job.hash() == keccak(encoded)
    assert job.job_id == keccak(abi_encode(["address", "uint64", "uint8"], [CONSUMER, 41, 3]))
    # Every field is covered: change any one and the hash changes.
    for change in ({"slot": 4}, {"group": keccak(b"g")}, {"open_block": 42}, {"drawn_at": 1}, {"seed": keccak(b"x")},
                   {"prices": (10, 9, 11, 0, 0)}, {"seats": (B, A, C, ZERO_ADDRESS, ZERO_ADDRESS)}, {"price_cap": 11}):
        assert _job(**change).hash() != job.hash(), change
    # The job id names consumer, open block and slot only: the draw does not change it.
    assert _job(drawn_at=0, seed=b"\x00" * 32, seats=(ZERO_ADDRESS,) * 5, prices=(0,) * 5).job_id == job.job_id


def test_job_seats_escrow_and_the_draw():
    undrawn = _job(drawn_at=0, seed=b"\x00" * 32, seats=(ZERO_ADDRESS,) * 5, prices=(0,) * 5)
    assert undrawn.seat_count == 0 and undrawn.seat_of(A) is None
    drawn = undrawn.drawn(keccak(b"seed"), 1_700_000_000, [B.lower(), A, C], [9, 10, 10])
    a, b, c = _job().seats[:3]  # checksummed
    assert drawn.seats == (b, a, c, ZERO_ADDRESS, ZERO_ADDRESS)
    assert drawn.seat_count == 3 and drawn.seat_of(A.lower()) == 1 and drawn.seat_of(B) == 0
    assert drawn.prices == (9, 10, 10, 0, 0)
    # Three seats and a jury reserve are held; an added seat holds one more share.
    assert drawn.held == 8 * 10 * 4 and drawn.jury_fee == 8 * 10
    grown = drawn.with_seat(3, "0x" + "55" * 20, 7)
    assert grown.seat_count == 4 and grown.held == 8 * 10 * 5 and grown.seat_of("0x" + "55" * 20) == 3
    assert grown.hash() != drawn.hash() and grown.job_id == drawn.job_id


def test_output_hash_covers_text_and_tokens():
    tokens = [1, 0xFFFFFFFF, 258]
    packed = pack_tokens(tokens)
    assert packed == bytes.fromhex("00000001" "ffffffff" "00000102") and unpack_tokens(packed) == tokens
    h = output_hash("héllo", tokens)
    assert h == keccak(keccak("héllo".encode()) + keccak(packed))
    assert h != output_hash("héllo", [1, 0xFFFFFFFF, 259]) and h != output_hash("hello", tokens)
    assert output_hash("", []) == keccak(keccak(b"") + keccak(b""))
    with pytest.raises(ValueError, match="fours"):
        unpack_tokens(b"\x00\x01\x02")


def test_result_frame_carries_the_tokens_as_packed_hex():
    tokens = [5, 70000, 2**32 - 1]
    frame = ResultFrame(output_hash=output_hash("x", tokens), token_count=3, tokens=pack_tokens(tokens),
                        signature=b"\x01" * 65, finish_reason="stop")
    wire = frame.to_wire()
    assert wire["tokens"] == "0x00000005" "00011170" "ffffffff"
    back = ResultFrame.parse(wire)
    assert back == frame and unpack_tokens(back.tokens) == tokens
    for bad, message in (("0x123", "8 hex digits per token"), ("00000005", "8 hex digits per token"),
                         (5, "8 hex digits per token")):
        with pytest.raises(ProtocolError, match=message):
            ResultFrame.parse({**wire, "tokens": bad})
    with pytest.raises(ProtocolError, match="finish_reason"):
        ResultFrame.parse({**wire, "finish_reason": "cancelled"})  # a cancelled job is never signed
    assert back.prompt_tokens == 0 and ResultFrame.parse({**wire, "prompt_tokens": 31}).prompt_tokens == 31
    with pytest.raises(ProtocolError, match="prompt_tokens must be >= 0"):
        ResultFrame.parse({**wire, "prompt_tokens": -1})


# ------------------------------------------------------------------------------ stop strings


def _scan(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], bool, int]:
    """Feed pieces as a provider streams them: (released pieces, stopped, pieces consumed)."""
    scanner, out = StopScanner(stops), []
    for k, piece in enumerate(pieces, 1):
        safe, stopped = scanner.feed(piece)
        out.append(safe)
        if stopped:
            assert scanner.feed("more") == ("", True)  # nothing after the stop
            return out, True, k
    out.append(scanner.flush())
    return out, False, len(pieces)


@pytest.mark.parametrize(
    "pieces,stops,released,stopped",
    [
        # The stop string arrives over three pieces: its first two are held back, never released.
        (["Red.", "\n", "\n", "2."], ("\n\n2",), ["Red.", "", "", ""], True),
        # Held back, then it was not the stop after all: released with the next piece.
        (["a", "\n", "b", "\n"], ("\n\n",), ["a", "", "\nb", "", "\n"], False),
        # The stop starts inside a piece: the piece is cut before it.
        ([" it's", " also", " the"], ("lso the",), [" it's", " a", ""], True),
        # Of several stop strings, the one that starts first wins, whichever is listed first.
        (["ab", "cd"], ("cd", "bc"), ["a", ""], True),
        # A stop string in the first piece: nothing at all is released.
        (["STOP here"], ("STOP",), [""], True),
        (["no stop", " at all"], ("###",), ["no stop", " at all", ""], False),
        (["x", "y"], (), ["x", "y", ""], False),
    ],
)
def test_stop_scanner_never_releases_part_of_a_stop_string(pieces, stops, released, stopped):
    out, hit, used = _scan(pieces, stops)
    assert (out, hit) == (released, stopped)
    assert "".join(out) == StopScanner.cut("".join(pieces[:used]), stops)


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(st.text(alphabet="ab\n", max_size=4), max_size=12),
       stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=4), max_size=4).map(tuple))
def test_streamed_text_is_the_cut_of_the_text_generated_so_far(pieces, stops):
    """Whatever the pieces and the stop strings: what is released, piece by piece, is exactly the
    generated text cut before the first stop string (what a jury recomputes from the tokens with
    `text_of`), no stop string ever appears in it, and generation stops at the first piece that
    completes one."""
    out, hit, used = _scan(pieces, stops)
    text = "".join(pieces[:used])
    streamed = "".join(out)
    assert streamed == StopScanner.cut(text, stops)
    assert not any(s in streamed for s in stops)
    assert hit == any(s in text for s in stops)
    if hit:  # stopped at the first piece that completed a stop string, not later
        assert not any(s in "".join(pieces[:used - 1]) for s in stops)
    else:
        assert streamed == "".join(pieces)


# ------------------------------------------------------------------------------ frames and manifests


def test_error_frames_carry_only_documented_codes():
    assert error_frame("busy", "x") == {"type": "error", "code": "busy", "message": "x"}
    with pytest.raises(ValueError, match="unknown error code"):
        error_frame("made_up", "x")
    assert {"stream_closed", "frame_malformed", "frame_too_large", "timeout", "internal", "not_listed", "unpaid",
            "expired", "replayed", "mismatch"} <= set(ERROR_CODES)


BUILD = Build(llama_cpp="0.3.36", backend="CPU", cpu_features=("AVX", "AVX2"), n_batch=512, n_ubatch=512,
              flash_attn=False, gpu_layers=0)


def _manifest(build: Build | None = BUILD) -> tuple[Manifest, object]:
    acct = Account.from_key("0x" + "11" * 32)
    m = Manifest(model_id="m", model_sha256="0x" + "ab" * 32, architecture="llama", quantization="Q4_1",
                 context_length=8192, price_per_token=3, peer_id="16Uiu2", multiaddrs=("/ip4/127.0.0.1/tcp/1",),
                 protocol_version=str(PROTOCOL_VERSION),
                 hardware=Hardware(cpu_threads=1, gpu_name="", gpu_memory_mb=0, gpu_layers=0), build=build,
                 provider=acct.address, issued_at=1)
    return m.sign(acct), acct


def test_a_received_manifest_is_hashed_as_received_unknown_fields_included():
    m, acct = _manifest()
    raw = {**m.to_dict(), "newer_field": [1, 2]}
    raw["build"]["newer_setting"] = True
    raw.pop("signature")
    digest = keccak(canonical_json(raw))
    raw["signature"] = "0x" + bytes(acct.sign_message(encode_defunct(primitive=digest)).signature).hex()
    manifest, got, signer = received_manifest(raw)
    assert got == digest and signer == acct.address and manifest.model_id == "m" and manifest.build == BUILD


def test_the_build_fingerprint_is_stable_and_covers_every_setting():
    fp = BUILD.fingerprint
    expected = "fp_" + hashlib.sha256(b'{"backend":"CPU","cpu_features":["AVX","AVX2"],"flash_attn":false,'
                                      b'"gpu_layers":0,"llama_cpp":"0.3.36","n_batch":512,"n_ubatch":512}').hexdigest()
    assert fp == expected[:13] and len(fp) == 13
    assert Build.parse(json.loads(json.dumps(BUILD.to_wire()))).fingerprint == fp  # survives the wire
    for change in ({"llama_cpp": "0.3.37"}, {"backend": "CUDA"}, {"cpu_features": ("AVX",)}, {"n_batch": 256},
                   {"n_ubatch": 256}, {"flash_attn": True}, {"gpu_layers": 1}):
        assert BUILD.model_copy(update=change).fingerprint != fp, change


def test_the_manifest_signs_its_build_and_may_leave_it_out():
    m, acct = _manifest()
    assert m.verify() == acct.address and m.body()["build"] == BUILD.to_wire()
    swapped = Manifest.parse({**m.to_dict(), "build": {**BUILD.to_wire(), "n_batch": 256}})
    with pytest.raises(ManifestError, match="not by provider"):
        swapped.verify()  # the build is signed: it cannot be changed on the way
    bare, _ = _manifest(build=None)
    assert "build" not in bare.body() and "build" not in bare.to_dict() and bare.verify() == acct.address
    assert bare.manifest_hash() != m.manifest_hash()
    with pytest.raises(ManifestError, match=r"build.n_batch must be >= 1"):
        Manifest.parse({**m.to_dict(), "build": {**BUILD.to_wire(), "n_batch": 0}})


def test_json_schemas_in_docs_are_generated_from_the_code():
    schemas = json_schemas()
    assert set(schemas) == set(MESSAGES)
    for name, schema in schemas.items():
        path = SCHEMAS / f"{name}.json"
        assert path.exists(), f"missing {path}: run `python -m meshmarket.mesh.protocol --write-schemas`"
        assert json.loads(path.read_text()) == schema, f"{path} is stale: run `python -m meshmarket.mesh.protocol --write-schemas`"
    # What a third-party provider got wrong once: gpu_name is a string, "" without a GPU, never null.
    hw = schemas["manifest"]["$defs"]["Hardware"]["properties"]["gpu_name"]
    assert hw["type"] == "string"
    # v2: a request names its seat, a job has five seats, a result carries its tokens.
    assert {"seat", "job_id", "job", "sampling"} <= set(schemas["infer_request"]["required"])
    assert schemas["result"]["properties"]["tokens"]["pattern"] == "^0x([0-9a-fA-F]{8})*$"
    seats = schemas["job"]["properties"]["seats"]
    assert seats["minItems"] == seats["maxItems"] == 5


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=5),
                    max_leaves=20))
def test_arbitrary_json_is_refused_with_a_documented_code_or_accepted(value):
    """Whatever JSON a peer sends as a request, the decoder answers a documented code (never a crash)."""
    extra = value if isinstance(value, dict) else {}
    for candidate in (value, {"type": "infer", "version": PROTOCOL_VERSION, **extra}, {**_request(), **extra}):
        try:
            InferRequest.parse(candidate)
        except ProtocolError as exc:
            assert exc.code in ERROR_CODES and str(exc)
