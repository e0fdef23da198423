"""The Meshmarket wire protocol, defined once: every message two peers exchange, typed and checked.

What crosses the wire (docs/PROTOCOL.md, part 2, and the JSON Schemas generated from this module
in docs/schemas/), on the two protocol ids `MANIFEST_PROTOCOL` and `INFER_PROTOCOL`:

    /meshmarket/manifest/2.0.0   ManifestRequest  ->  ManifestResponse (carrying a signed Manifest)
    /meshmarket/infer/2.0.0      InferRequest     ->  TokenFrame*  ->  ResultFrame | ErrorFrame

plus `Job` (the on-chain job tuple, as the JobOpened event and the request carry it) and
`canonical_json`, the one encoding whose bytes are hashed or signed (the manifest hash, the
request's promptHash).

Each message is a pydantic model with ONE validator: strict scalars (an integer is never a bool, a
float or a string), bounded sizes, 0x-hex for bytes, checksummed addresses, text that is valid
Unicode. Unknown fields are ignored, so a newer peer may add some (petals' ServerInfo rule); the
manifest hash still covers them because it is computed over the object as received. Anything
wrong raises `ProtocolError(code, message)` with a message a remote peer can act on; `code` is one
of `ERROR_CODES`, which is also the list of codes an error frame may carry.

This module knows nothing of libp2p or trio (mesh.p2p frames and sends these messages) and
nothing of providers or consumers (they build and check them).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import is_checksum_address, keccak, to_checksum_address
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from meshmarket.mesh.errors import ManifestError, ProtocolError
from meshmarket.mesh.limits import (  # noqa: F401 — re-exported
    JOB_SLOTS,
    MAX_DEPTH,
    MAX_FRAME,
    MAX_INT_DIGITS,
    MAX_JOB_TOKENS,
    MAX_MANIFEST_FRAME,
    MAX_MANIFEST_REQUEST_FRAME,
    MAX_MESSAGES,
    MAX_PROMPT_BYTES,
    MAX_REQUEST_FRAME,
    MAX_SEED,
    MAX_STOP_CHARS,
    MAX_STOPS,
    MAX_TEMPERATURE_MILLI,
    MAX_TOKENS,
    SEATS,
    UINT64_MAX,
)

PROTOCOL_VERSION = 2
INFER_PROTOCOL = "/meshmarket/infer/2.0.0"
MANIFEST_PROTOCOL = "/meshmarket/manifest/2.0.0"
MANIFEST_VERSION = 2
#: A constant inside the signed manifest bytes: a manifest signature can never be replayed as a
#: signature over some other Meshmarket record that is also JSON.
MANIFEST_KIND = "meshmarket.manifest"

# ------------------------------------------------------------------------------ limits

# (in mesh.limits, a dependency-free module the CLI reads at start-up; re-exported above)

ZERO_ADDRESS = "0x" + "00" * 20

#: Sampler settings that are not part of a request are part of the protocol: every provider uses
#: them, or sampled answers differ. They equal llama-cpp-python's create_completion defaults.
#: The most concurrent jobs a manifest may declare (llama.cpp's LLAMA_MAX_SEQ is 256).
MAX_SLOTS = 256
SAMPLER_TOP_K = 40
SAMPLER_MIN_P = 0.05
SAMPLER_TYPICAL_P = 1.0
SAMPLER_REPEAT_PENALTY = 1.0

#: Every code an error frame may carry, and what the receiver should do about it.
ERROR_CODES: dict[str, str] = {
    "bad_request": "the request is malformed: fix the field the message names",
    "too_large": "the prompt or the frame is over a limit: send less",
    "unpaid": "no open job on-chain matches the request (not opened, settled, or other parameters)",
    "not_listed": "this provider is not one of the job's providers at the given index",
    "wrong_consumer": "the peer is not the job's consumer: connect with the consumer's key",
    "wrong_model": "the job is for a model this provider does not serve",
    "mismatch": "the request does not hash to the job's promptHash, or max_tokens differs from the job's",
    "expired": "the job's delivery window has passed: open a new job",
    "replayed": "this provider already served this job",
    "busy": "the provider is at capacity: try another provider or retry later",
    "context_overflow": "prompt plus max_tokens exceeds the model's context: shorten the prompt or max_tokens",
    "internal": "the provider failed: try another provider",
    "timeout": "a frame did not arrive in time",
    "frame_malformed": "the frame is not a UTF-8 JSON object within the limits: fix the encoding",
    "frame_too_large": "the frame is over the size limit: send less",
    "stream_closed": "the stream ended before a complete frame",
}

# ------------------------------------------------------------------------------ canonical JSON


def canonical_json(obj: Any) -> bytes:
    """The bytes that are hashed or signed: keys sorted, separators `,` and `:` without spaces,
    UTF-8 as is (no \\u escapes beyond JSON's own), no floats. Any JSON library that sorts keys and
    writes compact output produces the same bytes for protocol values."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


# ------------------------------------------------------------------------------ field types


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (an unpaired \\ud800-\\udfff escape): send valid Unicode") from None
    return value


def _hex(size: int):
    pattern = re.compile(rf"^0x[0-9a-fA-F]{{{2 * size}}}$")

    def parse(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray)) and len(value) == size:
            return bytes(value)
        if not isinstance(value, str) or not pattern.match(value):
            raise ValueError(f"must be 0x followed by {2 * size} hex digits")
        return bytes.fromhex(value[2:])

    return parse


def _hex_bytes(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not re.fullmatch(r"0x(?:[0-9a-fA-F]{8})*", value):
        raise ValueError("must be 0x followed by 8 hex digits per token")
    return bytes.fromhex(value[2:])


def _address(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"0x[0-9a-fA-F]{40}", value):
        raise ValueError("must be a 0x address of 40 hex digits")
    return to_checksum_address(value)


def _hex_out(value: bytes) -> str:
    return "0x" + value.hex()


#: Scalars are strict: an integer is never a bool, a float or a string.
Int = Annotated[int, Strict()]
Uint64 = Annotated[Int, Field(ge=0, le=UINT64_MAX)]
Text = Annotated[str, Strict(), AfterValidator(_text)]
NonEmptyText = Annotated[Text, Field(min_length=1)]
Hex32 = Annotated[bytes, BeforeValidator(_hex(32)), PlainSerializer(_hex_out, return_type=str),
                  WithJsonSchema({"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"})]
Signature = Annotated[bytes, BeforeValidator(_hex(65)), PlainSerializer(_hex_out, return_type=str),
                      WithJsonSchema({"type": "string", "pattern": "^0x[0-9a-fA-F]{130}$",
                                      "description": "65 bytes r || s || v"})]
Address = Annotated[str, BeforeValidator(_address),
                    WithJsonSchema({"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"})]


class WireModel(BaseModel):
    """A protocol message: immutable, unknown fields ignored, scalars strict."""

    model_config = ConfigDict(frozen=True, extra="ignore", validate_default=True)

    @classmethod
    def parse(cls, obj: Any, where: str | None = None, code: str = "bad_request"):
        """Validate `obj` (a decoded JSON value or Python values) or raise ProtocolError(code)."""
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise ProtocolError(code, describe(exc, where or cls.__name__)) from None

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


_KINDS = {"int_type": "an integer", "string_type": "a string", "bool_type": "a boolean", "tuple_type": "a list",
          "list_type": "a list", "dict_type": "an object", "model_type": "an object", "bytes_type": "0x-hex"}
_BOUNDS = {"greater_than_equal": ("ge", ">="), "less_than_equal": ("le", "<="), "greater_than": ("gt", ">"),
           "less_than": ("lt", "<"), "too_long": ("max_length", "at most this long:")}
_JSON_NAMES = {"NoneType": "null", "dict": "an object", "list": "a list", "str": "a string", "int": "an integer",
               "float": "a number with a fraction", "bool": "a boolean"}


def describe(exc: ValidationError, where: str) -> str:
    """The first validation error as one sentence a peer can act on: where, what, what was sent."""
    err = exc.errors(include_url=False)[0]
    path = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
    kind, got = err["type"], err["input"]
    shown = repr(got) if len(repr(got)) <= 40 else repr(got)[:40] + "…"
    if kind == "missing":
        return f"{path}: missing field"
    if kind in _KINDS:
        return f"{path} must be {_KINDS[kind]}, got {_JSON_NAMES.get(type(got).__name__, type(got).__name__)}"
    if kind == "extra_forbidden":
        return f"{path}: unknown field (only the documented keys are allowed here)"
    if kind == "too_short":
        return f"{path} must not be empty" if err["ctx"]["min_length"] == 1 else \
            f"{path} must hold at least {err['ctx']['min_length']}, got {shown}"
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        return f"{path} must be {op} {err['ctx'][key]}, got {shown}"
    if kind == "literal_error":
        return f"{path} must be {err['ctx']['expected']}, got {shown}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path}: {msg}" if not err["loc"] else f"{path}: {msg} (got {shown})"


# ------------------------------------------------------------------------------ what the model is asked


class Message(WireModel):
    # Extra keys (name, tool_calls, ...) would change what some chat templates render, so
    # providers could disagree on the prompt: only role and content.
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: NonEmptyText


class Sampling(WireModel):
    """What the model is asked, hashed into the job's promptHash: chat `messages` (formatted with
    the model's own chat template) or a raw `prompt`, never both. No floats on the wire:
    temperature and top_p travel in thousandths, so every implementation hashes the same bytes."""

    messages: tuple[Message, ...] | None = None
    prompt: NonEmptyText | None = None
    max_tokens: Annotated[Int, Field(ge=1, le=MAX_TOKENS)]
    temperature_milli: Annotated[Int, Field(ge=0, le=MAX_TEMPERATURE_MILLI)] = 0
    top_p_milli: Annotated[Int, Field(ge=1, le=1000)] = 1000
    seed: Annotated[Int, Field(ge=0, le=MAX_SEED)] = 0
    #: Generation ends before the first of these strings appears in the text (finish "stop").
    stop: Annotated[tuple[Annotated[NonEmptyText, Field(max_length=MAX_STOP_CHARS)], ...],
                    Field(max_length=MAX_STOPS)] = ()

    @model_validator(mode="before")
    @classmethod
    def _pairs(cls, data: Any) -> Any:
        # Python callers may write messages as (role, content) tuples; the wire has objects.
        if isinstance(data, dict) and isinstance(data.get("messages"), (list, tuple)):
            msgs = [{"role": m[0], "content": m[1]} if isinstance(m, tuple) and len(m) == 2 else m
                    for m in data["messages"]]
            data = {**data, "messages": msgs}
        return data

    @model_validator(mode="after")
    def _one_input(self) -> Sampling:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages or prompt")
        if self.messages is not None and not 1 <= len(self.messages) <= MAX_MESSAGES:
            raise ValueError(f"messages must hold 1 to {MAX_MESSAGES} messages")
        return self

    @property
    def prompt_bytes(self) -> int:
        if self.prompt is not None:
            return len(self.prompt.encode())
        return sum(len(m.content.encode()) for m in self.messages or ())

    @property
    def temperature(self) -> float:
        return self.temperature_milli / 1000

    @property
    def top_p(self) -> float:
        return self.top_p_milli / 1000

    @classmethod
    def parse(cls, obj: Any, where: str | None = None, code: str = "bad_request") -> Sampling:
        s = super().parse(obj, where or "sampling", code)
        if s.prompt_bytes > MAX_PROMPT_BYTES:
            raise ProtocolError("too_large", f"the prompt is {s.prompt_bytes} bytes; the limit is {MAX_PROMPT_BYTES}")
        return s

    def to_wire(self) -> dict[str, Any]:
        wire = self.model_dump(mode="json", exclude_none=True)
        if not self.stop:
            del wire["stop"]  # absent and empty hash the same way: absent
        return wire

    def request(self, model_hash: bytes) -> dict[str, Any]:
        """The request as the job hashes it: {"model": "0x<model hash>", "sampling": <this>}. Its
        canonical JSON is what a dispute publishes for the jury."""
        return {"model": "0x" + model_hash.hex(), "sampling": self.to_wire()}

    def prompt_hash(self, model_hash: bytes) -> bytes:
        """keccak256 of the canonical request: the job's on-chain promptHash."""
        return keccak(canonical_json(self.request(model_hash)))


# ------------------------------------------------------------------------------ the job


JOB_ABI = "(address,uint8,bytes32,bytes32,bytes32,uint64,uint64,uint64,uint64,bytes32,address[5],uint64[5])"
_NO_SEATS = (ZERO_ADDRESS,) * SEATS


class Job(WireModel):
    """The on-chain job (Solidity `JobMarket.Job`): the market stores only keccak256(abi.encode(job)).

    Opened by the consumer with no seats; `drawn_at`, `seed`, the first three `seats` and their
    `prices` are set by the draw; a seat added later fills the next empty place. An empty seat is
    the zero address with price 0."""

    consumer: Address
    #: Which of the consumer's job slots on-chain holds it (JobMarket.RING of them).
    slot: Annotated[Int, Field(ge=0, lt=JOB_SLOTS)]
    model_hash: Hex32
    #: 0 = the open market; else the private mesh (pool) the job is drawn from.
    group: Hex32 = b"\x00" * 32
    prompt_hash: Hex32
    max_tokens: Annotated[Int, Field(ge=1, le=MAX_JOB_TOKENS)]
    price_cap: Annotated[Int, Field(ge=1, le=UINT64_MAX)]
    open_block: Uint64
    drawn_at: Uint64 = 0
    seed: Hex32 = b"\x00" * 32
    seats: tuple[Address, Address, Address, Address, Address] = _NO_SEATS
    prices: tuple[Uint64, Uint64, Uint64, Uint64, Uint64] = (0,) * SEATS

    def as_abi(self) -> tuple:
        return (self.consumer, self.slot, self.model_hash, self.group, self.prompt_hash, self.max_tokens,
                self.price_cap, self.open_block, self.drawn_at, self.seed, list(self.seats), list(self.prices))

    @property
    def job_id(self) -> bytes:
        """keccak256(abi.encode(consumer, openBlock, slot)): never reused (a slot opens once a block)."""
        return keccak(abi_encode(["address", "uint64", "uint8"], [self.consumer, self.open_block, self.slot]))

    def hash(self) -> bytes:
        """keccak256(abi.encode(job)): what the market stores for an open job."""
        return keccak(abi_encode([JOB_ABI], [self.as_abi()]))

    @property
    def seat_count(self) -> int:
        return sum(1 for s in self.seats if s != ZERO_ADDRESS)

    @property
    def held(self) -> int:
        """What the job holds in the vault: maxTokens * priceCap per seat (three at least) plus a
        jury reserve of one more share (JobMarket._held)."""
        return self.max_tokens * self.price_cap * (max(3, self.seat_count) + 1)

    @property
    def jury_fee(self) -> int:
        """A dispute's bond, and the consumer's jury reserve: maxTokens * priceCap."""
        return self.max_tokens * self.price_cap

    def seat_of(self, provider: str) -> int | None:
        provider = to_checksum_address(provider)
        return next((i for i, s in enumerate(self.seats) if s == provider), None)

    def drawn(self, seed: bytes, drawn_at: int, seats: Sequence[str], prices: Sequence[int]) -> Job:
        """The job after drawSeats (its first seats and prices; the rest stay empty)."""
        seats = [to_checksum_address(a) for a in seats] + [ZERO_ADDRESS] * (SEATS - len(seats))
        prices = [int(p) for p in prices] + [0] * (SEATS - len(prices))
        return self.model_copy(update={"seed": bytes(seed), "drawn_at": int(drawn_at), "seats": tuple(seats),
                                       "prices": tuple(prices)})

    def with_seat(self, index: int, provider: str, price: int) -> Job:
        seats, prices = list(self.seats), list(self.prices)
        seats[index], prices[index] = to_checksum_address(provider), int(price)
        return self.model_copy(update={"seats": tuple(seats), "prices": tuple(prices)})

    @classmethod
    def from_event(cls, args: Any, block_number: int) -> Job:
        """From the decoded arguments of a JobOpened event and the block it is in (no seats yet)."""
        return cls(consumer=args["consumer"], slot=int(args["slot"]), model_hash=bytes(args["modelHash"]),
                   group=bytes(args["group"]), prompt_hash=bytes(args["promptHash"]), max_tokens=int(args["maxTokens"]),
                   price_cap=int(args["priceCap"]), open_block=int(block_number))


class StopScanner:
    """The protocol's stop rule over streamed text: generation ends before the first stop string
    appears. `feed` returns the text that can be released (it can never be the start of a stop
    string) and whether a stop string was found; `cut` applies the same rule to a whole text."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buf = self.held + piece
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held, self.stopped = "", True
            return buf[:min(hits)], True
        # Keep back the longest tail that could still grow into a stop string.
        keep = max((k for s in self.stops for k in range(min(len(s) - 1, len(buf)), 0, -1)
                    if buf.endswith(s[:k])), default=0)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        """At the end of the output: what was held back was not a stop string after all."""
        held, self.held = self.held, ""
        return held

    @staticmethod
    def cut(text: str, stops: Sequence[str]) -> str:
        hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
        return text[:min(hits)] if hits else text


def output_hash(text: str, tokens: Sequence[int]) -> bytes:
    """What a seat signs as its output: keccak256(keccak256(UTF-8 text) || keccak256(tokens)), the
    tokens as uint32 big-endian. The consumer checks both parts; a jury scores the tokens and checks
    that they detokenize to the text (docs/PROTOCOL.md)."""
    return keccak(keccak(text.encode("utf-8")) + keccak(pack_tokens(tokens)))


def pack_tokens(tokens: Sequence[int]) -> bytes:
    return b"".join(int(t).to_bytes(4, "big") for t in tokens)


def unpack_tokens(data: bytes) -> list[int]:
    if len(data) % 4:
        raise ValueError("token bytes come in fours (uint32 big-endian)")
    return [int.from_bytes(data[i:i + 4], "big") for i in range(0, len(data), 4)]


# ------------------------------------------------------------------------------ frames


class InferRequest(WireModel):
    """Consumer -> provider, first frame of /meshmarket/infer: run `sampling` for seat `seat` of the job."""

    type: Literal["infer"] = "infer"
    version: Int = PROTOCOL_VERSION
    job_id: Hex32
    job: Job
    seat: Annotated[Int, Field(ge=0, lt=SEATS)]
    sampling: Sampling

    def __init__(self, *args: Any, **data: Any):
        # InferRequest(job_id, job, seat, sampling) reads like the protocol; keywords work too.
        # (pydantic also calls this from model_validate, with keywords only.)
        super().__init__(**dict(zip(("job_id", "job", "seat", "sampling"), args)), **data)

    @model_validator(mode="after")
    def _own_job(self) -> InferRequest:
        # A seat signs Result(job_id, ...): it must be the id of the job it checks and computes,
        # or a consumer could get an answer to one job signed as another's.
        if self.job_id != self.job.job_id:
            raise ValueError("job_id is not the job's id (keccak256(abi.encode(consumer, openBlock, slot)))")
        return self

    @classmethod
    def parse(cls, obj: Any, where: str | None = None, code: str = "bad_request") -> InferRequest:
        if not isinstance(obj, dict) or obj.get("type") != "infer":
            raise ProtocolError("bad_request", "expected a frame of type 'infer'")
        if obj.get("version") != PROTOCOL_VERSION:
            got = "no version field" if "version" not in obj else f"version {obj['version']!r}"
            raise ProtocolError("bad_request", f"infer: {got}; this provider speaks protocol version {PROTOCOL_VERSION}")
        req = super().parse(obj, "infer", code)
        Sampling.parse(obj["sampling"])  # the prompt-size limit has its own code
        return req


class TokenFrame(WireModel):
    """Provider -> consumer: one or more whole UTF-8 characters of the answer."""

    type: Literal["token"] = "token"
    text: Text


class ResultFrame(WireModel):
    """Provider -> consumer, last frame: the EIP-712 signed Result(jobId, outputHash, tokenCount)
    and the output tokens it covers (`output_hash(text, tokens)`)."""

    type: Literal["result"] = "result"
    output_hash: Hex32
    token_count: Uint64
    #: The generated token ids, uint32 big-endian each, 0x-hex.
    tokens: Annotated[bytes, BeforeValidator(_hex_bytes), PlainSerializer(_hex_out, return_type=str),
                      WithJsonSchema({"type": "string", "pattern": "^0x([0-9a-fA-F]{8})*$"})] = b""
    signature: Signature
    finish_reason: Literal["stop", "length"] = "stop"
    #: The prompt's length in the model's tokens, as the provider counted it (informational: not
    #: signed; a consumer reports it as usage).
    prompt_tokens: Annotated[Int, Field(ge=0)] = 0


class ErrorFrame(WireModel):
    """Either side, last frame: a refusal or failure with one of ERROR_CODES."""

    type: Literal["error"] = "error"
    code: Text
    message: Text = ""


def error_frame(code: str, message: str) -> dict[str, Any]:
    """An error frame restricted to the documented codes."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}: add it to ERROR_CODES and docs/PROTOCOL.md")
    return {"type": "error", "code": code, "message": message}


class ManifestRequest(WireModel):
    """Consumer -> provider, /meshmarket/manifest: send your signed manifest."""

    type: Literal["manifest_request"] = "manifest_request"


class Hardware(WireModel):
    cpu_threads: Annotated[Int, Field(ge=1)]
    #: "" when there is no GPU (never null).
    gpu_name: Text
    gpu_memory_mb: Annotated[Int, Field(ge=0)]
    gpu_layers: Annotated[Int, Field(ge=0)]


class Build(WireModel):
    """What shapes a provider's floats, so that two seats with equal builds give byte-identical
    output for the same request (docs/VERIFICATION.md): llama.cpp's version and backend, the CPU
    features it was compiled for, and the runtime settings measured to change outputs. Thread
    count and context size do not change outputs and are left out."""

    llama_cpp: NonEmptyText
    #: "CPU", "CUDA", "Metal", "Vulkan", "ROCm" or "SYCL".
    backend: NonEmptyText
    cpu_features: tuple[NonEmptyText, ...]
    n_batch: Annotated[Int, Field(ge=1)]
    n_ubatch: Annotated[Int, Field(ge=1)]
    flash_attn: Annotated[bool, Strict()]
    gpu_layers: Annotated[Int, Field(ge=0)]

    @property
    def fingerprint(self) -> str:
        """"fp_" + the first 10 hex digits of sha256(canonical JSON): the OpenAI-style
        system_fingerprint of answers from this build."""
        return "fp_" + hashlib.sha256(canonical_json(self.model_dump(mode="json"))).hexdigest()[:10]


class Manifest(WireModel):
    """A provider's signed advertisement: what it serves, at what price, where, on what hardware.

    Signed with EIP-191 personal_sign over manifest_hash() = keccak256(canonical JSON of every
    field but `signature`, `kind` included); a contract can check it with OpenZeppelin's
    MessageHashUtils.toEthSignedMessageHash(bytes32) + ECDSA.recover.
    """

    kind: Literal["meshmarket.manifest"] = MANIFEST_KIND
    version: Int = MANIFEST_VERSION
    model_id: NonEmptyText
    #: sha256 of the GGUF file, lowercase: the registry's modelHash.
    model_sha256: Annotated[Text, Field(pattern=r"^0x[0-9a-f]{64}$")]
    architecture: NonEmptyText
    quantization: NonEmptyText
    context_length: Annotated[Int, Field(ge=1)]
    #: Token base units per output token; never a float.
    price_per_token: Annotated[Int, Field(ge=0, le=UINT64_MAX)]
    peer_id: NonEmptyText
    multiaddrs: tuple[NonEmptyText, ...]
    protocol_version: NonEmptyText
    hardware: Hardware
    #: The build and settings that shape outputs; absent means "undeclared" (a consumer then counts
    #: the seat as a build of its own).
    build: Build | None = None
    #: How many jobs it generates at once (continuous batching, provider/batch.py), each in its own
    #: `context_length` cells; absent means one at a time (manifests from before the field hash as
    #: they were signed).
    slots: Annotated[Int, Field(ge=1, le=MAX_SLOTS)] | None = None
    #: The checksummed address that must have signed (checksummed as sent: normalising it would
    #: change the signed bytes).
    provider: Text
    issued_at: Uint64
    signature: Annotated[Text, Field(pattern=r"^0x[0-9a-f]{130}$")] | None = None

    @model_validator(mode="after")
    def _checks(self) -> Manifest:
        if self.version != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest version {self.version}, expected {MANIFEST_VERSION}")
        if not is_checksum_address(self.provider):
            raise ValueError(f"provider must be a checksummed Ethereum address, got {self.provider!r}")
        return self

    @classmethod
    def parse(cls, obj: Any, where: str | None = None, code: str = "bad_manifest") -> Manifest:
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise ManifestError(describe(exc, where or "manifest")) from None


    # -- encoding

    def body(self) -> dict[str, Any]:
        """Every signed field (all but the signature), as JSON values."""
        return self.model_dump(mode="json", exclude={"signature"}, exclude_none=True)

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.body())

    def manifest_hash(self) -> str:
        """keccak256 of the canonical bytes, 0x-hex (a bytes32)."""
        return "0x" + keccak(self.canonical_bytes()).hex()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> str:
        return canonical_json(self.to_dict()).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from None
        return cls.parse(data)

    # -- signing

    def sign(self, account: LocalAccount) -> Manifest:
        """A copy signed by `account`, which must be the manifest's provider."""
        if account.address != self.provider:
            raise ManifestError(f"signer {account.address} is not the provider {self.provider}")
        signed = account.sign_message(encode_defunct(primitive=bytes.fromhex(self.manifest_hash()[2:])))
        return self.model_copy(update={"signature": "0x" + bytes(signed.signature).hex()})

    def verify(self) -> str:
        """The signer; ManifestError unless it is the provider."""
        if self.signature is None:
            raise ManifestError("manifest is not signed")
        signer = manifest_signer(bytes.fromhex(self.manifest_hash()[2:]), self.signature)
        if signer != self.provider:
            raise ManifestError(f"manifest signed by {signer}, not by provider {self.provider}")
        return signer


def manifest_signer(digest: bytes, signature: str) -> str:
    try:
        return Account.recover_message(encode_defunct(primitive=digest), signature=bytes.fromhex(signature[2:]))
    except Exception as exc:  # eth-keys raises several types for malformed v/r/s
        raise ManifestError(f"invalid signature: {exc}") from None


def received_manifest(raw: Any) -> tuple[Manifest, bytes, str]:
    """A manifest as received from a peer: (the checked manifest, the keccak256 of what was
    received, its signer). The hash covers unknown fields too: a newer provider may add some, and
    the hash it registered on-chain covers the bytes it signed."""
    manifest = Manifest.parse(raw)
    if manifest.signature is None:
        raise ManifestError("manifest is not signed")
    digest = keccak(canonical_json({k: v for k, v in raw.items() if k != "signature"}))
    return manifest, digest, manifest_signer(digest, manifest.signature)


class ManifestResponse(WireModel):
    """Provider -> consumer: its signed manifest."""

    type: Literal["manifest"] = "manifest"
    manifest: dict[str, Any]


#: Every message of the protocol, by the name its JSON Schema is published under (docs/schemas/).
MESSAGES: dict[str, type[WireModel]] = {
    "manifest": Manifest,
    "manifest_request": ManifestRequest,
    "manifest_response": ManifestResponse,
    "infer_request": InferRequest,
    "token": TokenFrame,
    "result": ResultFrame,
    "error": ErrorFrame,
    "job": Job,
    "sampling": Sampling,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema (draft 2020-12) of every message, generated from the models above."""
    out = {}
    for name, model in MESSAGES.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://meshmarket.invalid/schemas/{name}.json"
        out[name] = schema
    return out



def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, schema in json_schemas().items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        out.append(path)
    return out


if __name__ == "__main__":
    # python -m meshmarket.mesh.protocol --write-schemas   (regenerates docs/schemas/*.json)
    import sys

    if sys.argv[1:] != ["--write-schemas"]:
        sys.exit("usage: python -m meshmarket.mesh.protocol --write-schemas")
    for written in write_schemas(Path(__file__).resolve().parent.parent / "docs" / "schemas"):
        print(written)
