"""Property-based fuzzing of what a provider reads from the network: every input, JSON or not, gets
one of the error codes docs/PROTOCOL.md lists (mesh.protocol.ERROR_CODES) with a sentence a peer can
act on, never `internal`, never a traceback, and the node keeps serving.

Two levels, the same inputs:
- the request decoder (mesh.p2p.decode_body, then InferRequest.parse / ManifestRequest.parse), in
  memory: hundreds of examples a second;
- a live in-process provider (tests/harness.py: the real service on a real libp2p host, the real
  engine and the session's Anvil), fed raw length-prefixed bytes on both of its protocols.

Inputs: arbitrary bytes and lengths; arbitrary JSON (lone surrogates, 60-digit integers, huge and
tiny floats, deep and wide nesting); and a valid request with one field broken (deleted, retyped,
pushed past a bound), which reaches the checks behind the parser.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import trio
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshmarket.mesh.errors import P2PError, ProtocolError
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.p2p import MAX_DEPTH, Node, decode_body
from meshmarket.mesh.protocol import (
    ERROR_CODES,
    INFER_PROTOCOL,
    MANIFEST_PROTOCOL,
    ZERO_ADDRESS,
    InferRequest,
    Job,
    ManifestRequest,
    Sampling,
)

CONSUMER = dev_account(5)
PROVIDER = 1  # dev:1, the in-process provider
#: What a refusal may say: any documented code but `internal` (a malformed input is the peer's
#: fault and must be named as such).
REFUSALS = set(ERROR_CODES) - {"internal"}


# ------------------------------------------------------------------------------ inputs

SURROGATES = st.sampled_from(["\ud800", "\udfff", "\ud83d", "x\udc00y"])
TEXT = st.one_of(st.text(max_size=24), st.tuples(st.text(max_size=8), SURROGATES, st.text(max_size=8)).map("".join))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-(10**60), 10**60),
    st.floats(allow_nan=False, allow_infinity=False), TEXT,
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)


def _json(value: Any) -> bytes:
    # ensure_ascii escapes surrogates as \udXXX: valid JSON text, no valid Unicode.
    return json.dumps(value, ensure_ascii=True).encode()


def _valid_request(provider: str, model_hash: bytes) -> dict[str, Any]:
    """A well-formed infer request for a job that was never opened: it passes every check up to the
    chain (answer `unpaid`), so a broken copy of it probes every check before that."""
    sampling = Sampling(messages=(("user", "Name three colours."),), max_tokens=8)
    job = Job(consumer=CONSUMER.address, slot=3, model_hash=model_hash, prompt_hash=sampling.prompt_hash(model_hash),
              max_tokens=8, price_cap=20, open_block=7, drawn_at=1, seed=keccak(b"seed"),
              seats=(provider, dev_account(2).address, dev_account(3).address, ZERO_ADDRESS, ZERO_ADDRESS),
              prices=(10, 10, 10, 0, 0))
    return InferRequest(job.job_id, job, 0, sampling).to_wire()


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _paths(value, prefix + (i,))
    return out


EDGES = st.sampled_from([0, -1, 1, 2**64, 2**256, 10**40, "", "0x", "0x" + "00" * 32, "0X" + "ab" * 32, [], {},
                         None, True, 1.5, "x" * 70_000, [{"role": "user", "content": "hi"}] * 65])


def _same_kind(draw, value: Any) -> Any:
    """Another value of the same shape: it still parses, so the checks behind the parser see it
    (another seat, consumer, hash, price, prompt...)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return draw(st.integers(0, max(8, value * 2)))
    if isinstance(value, str) and value.startswith("0x"):
        return "0x" + draw(st.binary(min_size=(len(value) - 2) // 2, max_size=(len(value) - 2) // 2)).hex()
    if isinstance(value, str):
        return draw(st.text(min_size=1, max_size=40))
    return value


@st.composite
def broken_requests(draw, base: dict[str, Any]) -> bytes:
    """`base` with one field deleted, changed (to an edge value, any JSON or another value of its
    kind) or an unknown field added."""
    request = copy.deepcopy(base)
    path = draw(st.sampled_from(_paths(request)[1:]))
    parent = request
    for key in path[:-1]:
        parent = parent[key]
    op = draw(st.sampled_from(["delete", "edge", "json", "add", "same", "same"]))
    if op == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif op == "add" and isinstance(parent, dict):
        parent[draw(TEXT)] = draw(JSON)
    elif op == "same":
        parent[path[-1]] = _same_kind(draw, parent[path[-1]])
    else:
        parent[path[-1]] = draw(EDGES) if op == "edge" else draw(JSON)
    return _json(request)


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


NOT_JSON = st.one_of(
    st.binary(max_size=200),
    st.just(b"[" * 5000), st.just(b'{"a":' * (MAX_DEPTH + 1)),
    st.just(b'{"type":"infer","version":' + b"9" * 5000 + b"}"),
    st.just(b'{"type":"infer","version":2,"x":1e999}'),
    st.just(b'{"type":"infer","version":2,"x":NaN}'),
)
ANY_JSON = st.one_of(JSON.map(_json), st.dictionaries(TEXT, JSON, max_size=6).map(_json))
TYPED = st.fixed_dictionaries({"type": st.sampled_from(["infer", "manifest_request", "token", ""])},
                              optional={"version": JSON, "job_id": JSON, "job": JSON, "seat": JSON,
                                        "sampling": JSON}).map(_json)


def bodies(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    broken = broken_requests(base)
    return st.one_of(NOT_JSON, ANY_JSON, TYPED, broken, broken, broken)  # most inputs reach the checks


def _model_hash() -> bytes:
    return keccak(b"a model")


def _set(path: str, value: Any):
    """A change of one field; the request's job_id follows its job (it must be the job's id)."""
    def change(request: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = request
        for key in parents:
            target = target[key]
        target[last] = value
        if path != "job_id":
            request["job_id"] = "0x" + Job.model_validate(request["job"]).job_id.hex()
    return change


#: One well-formed request per check behind the parser, in the provider's order, and its code.
CHECKS = [
    (lambda r: None, "unpaid"),  # every check passed but the chain's: the job was never opened
    (_set("job_id", "0x" + keccak(b"another job").hex()), "bad_request"),
    (_set("seat", 1), "not_listed"),
    (_set("job.consumer", dev_account(6).address), "wrong_consumer"),
    (_set("job.model_hash", "0x" + keccak(b"another model").hex()), "wrong_model"),
    (_set("sampling.max_tokens", 7), "mismatch"),
    (_set("sampling.seed", 1), "mismatch"),
]


# ------------------------------------------------------------------------------ the checks


def assert_refusal(code: str, message: str) -> None:
    """A refusal a remote peer can act on."""
    assert code in REFUSALS, f"{code!r}: {message}"
    assert message and len(message) <= 2000, message
    message.encode("utf-8")  # sendable back, whatever the input held
    for leak in ("Traceback", "set_int_max_str_digits", "NoneType", "internal error", "object at 0x"):
        assert leak not in message, message


def decode_request(body: bytes, parse=InferRequest.parse) -> object | None:
    """What a provider does with a request body; the parsed request, or None after a refusal."""
    try:
        return parse(decode_body(body))
    except (P2PError, ProtocolError) as exc:
        assert_refusal(exc.code, str(exc))
        return None


# ------------------------------------------------------------------------------ in memory


@settings(max_examples=400, deadline=None)
@given(body=bodies(_valid_request(dev_account(PROVIDER).address, _model_hash())))
def test_the_request_decoder_refuses_every_bad_input_with_a_documented_code(body: bytes) -> None:
    decode_request(body)
    decode_request(body, lambda obj: ManifestRequest.parse(obj, "manifest_request"))


def test_the_valid_base_request_parses() -> None:
    """The mutations start from a request the decoder accepts (else they would test nothing)."""
    request = decode_request(_json(_valid_request(dev_account(PROVIDER).address, _model_hash())))
    assert isinstance(request, InferRequest) and request.seat == 0


# ------------------------------------------------------------------------------ a live provider


def test_a_live_provider_answers_every_bad_input_with_a_documented_code(served, engine, tmp_path) -> None:
    from tests.harness import providers

    base = _valid_request(dev_account(PROVIDER).address, served.model_hash)
    seen: dict[str, int] = {}

    async def exchange(node: Node, p, protocol: str, data: bytes) -> dict[str, Any]:
        async with node.open_session(p.peer_id, p.addrs, protocol, timeout=30) as session:
            # Raw bytes, then end of input: a short frame is answered at once, not waited for.
            await session._stream.write(data)
            await session._stream.close()
            return await session.recv(timeout=30)

    async def attack(node: Node, p, data: bytes) -> None:
        infer = await exchange(node, p, INFER_PROTOCOL, data)
        assert infer["type"] == "error", infer
        assert_refusal(infer["code"], infer["message"])
        seen[infer["code"]] = seen.get(infer["code"], 0) + 1
        manifest = await exchange(node, p, MANIFEST_PROTOCOL, data)
        if manifest["type"] == "error":
            assert_refusal(manifest["code"], manifest["message"])
        else:
            assert manifest["type"] == "manifest" and manifest["manifest"]["peer_id"] == p.peer_id

    raw = st.one_of(bodies(base).map(frame), st.binary(max_size=64),
                    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=64)).map(
                        lambda t: t[0].to_bytes(4, "big") + t[1]))

    with providers(served, engine, tmp_path, (PROVIDER,), consumer=CONSUMER) as run:
        async def body(node, ps):
            p = ps[PROVIDER]
            token = trio.lowlevel.current_trio_token()

            @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
            @given(data=raw)
            def fuzz(data: bytes) -> None:
                trio.from_thread.run(attack, node, p, data, trio_token=token)

            await trio.to_thread.run_sync(fuzz)
            # Each check behind the parser, reached on purpose (the fuzz reaches them by chance).
            for change, code in CHECKS:
                request = copy.deepcopy(base)
                change(request)
                assert (await exchange(node, p, INFER_PROTOCOL, frame(_json(request))))["code"] == code, code
            # Nothing was computed, and the node still serves.
            assert p.log == []
            assert (await exchange(node, p, MANIFEST_PROTOCOL, frame(b'{"type":"manifest_request"}')))["type"] == "manifest"

        run(body)
    # The inputs reached far: past the framing, into the request checks and on to the chain.
    assert {"frame_malformed", "bad_request"} <= set(seen), seen

