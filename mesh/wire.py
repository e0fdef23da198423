"""Strict, versioned schemas of everything that crosses the peer-to-peer wire.

One definition serves both sides (hivemind's servicer idea): the provider parses requests with
`InferRequest.from_wire` and the consumer builds them with `to_wire`; likewise for results and
manifests. Unknown fields are ignored (newer peers may add some); known fields are type- and
range-checked, and anything wrong raises `WireError(code, message)` with a message that says
what to fix. See docs/PROTOCOL.md, part 2.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak, to_checksum_address

from mesh import p2p
from mesh.errors import MeshError
from mesh.market import Job

PROTOCOL_VERSION = 1
INFER_PROTOCOL = "/meshmarket/infer/1.0.0"
MANIFEST_PROTOCOL = "/meshmarket/manifest/1.0.0"

#: Largest request frame a provider reads (prompts are at most 64 KiB of text).
MAX_REQUEST_FRAME = 256 * 1024
MAX_PROMPT_BYTES = 64 * 1024
MAX_MESSAGES = 64
MAX_TOKENS = 4096
ROLES = ("system", "user", "assistant")

#: Error codes a provider may answer with; the consumer's reaction depends only on the code.
ERROR_CODES = {
    "bad_request": "the request is malformed; fix it",
    "too_large": "the frame is over the limit",
    "unpaid": "no open job on-chain matches the request (not opened, settled, or other parameters)",
    "not_listed": "this provider is not one of the job's providers at the given index",
    "wrong_consumer": "the peer is not the job's consumer",
    "wrong_model": "the job is for a model this provider does not serve",
    "mismatch": "the request does not hash to the job's promptHash, or max_tokens differs",
    "expired": "the job's delivery window has passed",
    "replayed": "this job was already served",
    "busy": "the provider is at capacity; try another",
    "context_overflow": "prompt plus max_tokens exceeds the model's context",
    "internal": "the provider failed",
    "timeout": "a frame did not arrive in time",
}

_HEX32 = re.compile(r"^0x[0-9a-fA-F]{64}$")
_SIG = re.compile(r"^0x[0-9a-fA-F]{130}$")
_ADDR = re.compile(r"^0x[0-9a-fA-F]{40}$")


class WireError(MeshError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no floats: the bytes that are hashed or signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _need(obj: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise WireError("bad_request", f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, bool) and kind is not bool:
        raise WireError("bad_request", f"{where}.{key} must be {_kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise WireError("bad_request", f"{where}.{key} must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return {"str": "a string", "int": "an integer", "list": "a list", "dict": "an object"}.get(kind.__name__, kind.__name__)


def _int(obj: dict, key: str, lo: int, hi: int, where: str) -> int:
    v = _need(obj, key, int, where)
    if not lo <= v <= hi:
        raise WireError("bad_request", f"{where}.{key} must be between {lo} and {hi}, got {v}")
    return v


def _hex32(obj: dict, key: str, where: str) -> bytes:
    v = _need(obj, key, str, where)
    if not _HEX32.match(v):
        raise WireError("bad_request", f"{where}.{key} must be 0x and 64 hex digits")
    return bytes.fromhex(v[2:])


def _addr(v: Any, where: str) -> str:
    if not isinstance(v, str) or not _ADDR.match(v):
        raise WireError("bad_request", f"{where} must be a 0x address of 40 hex digits")
    return to_checksum_address(v)


# ------------------------------------------------------------------------------ generation params

@dataclass(frozen=True)
class Sampling:
    """What the model is asked; hashed into the job's promptHash. No floats on the wire:
    temperature and top_p travel in thousandths so every implementation hashes the same bytes."""

    messages: tuple[tuple[str, str], ...]
    max_tokens: int
    temperature_milli: int = 0
    top_p_milli: int = 1000
    seed: int = 0

    def to_wire(self) -> dict:
        return {
            "messages": [{"role": r, "content": c} for r, c in self.messages],
            "max_tokens": self.max_tokens,
            "temperature_milli": self.temperature_milli,
            "top_p_milli": self.top_p_milli,
            "seed": self.seed,
        }

    def prompt_hash(self, model_hash: bytes) -> bytes:
        """keccak256 of the canonical {model, sampling}: the job's on-chain promptHash."""
        return keccak(canonical_json({"model": "0x" + model_hash.hex(), "sampling": self.to_wire()}))

    @classmethod
    def from_wire(cls, obj: Any) -> Sampling:
        where = "sampling"
        if not isinstance(obj, dict):
            raise WireError("bad_request", "sampling must be an object")
        msgs = _need(obj, "messages", list, where)
        if not 1 <= len(msgs) <= MAX_MESSAGES:
            raise WireError("bad_request", f"sampling.messages must hold 1 to {MAX_MESSAGES} messages")
        out, size = [], 0
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or set(m) != {"role", "content"}:
                raise WireError("bad_request", f"sampling.messages[{i}] must be exactly {{role, content}}")
            if m["role"] not in ROLES:
                raise WireError("bad_request", f"sampling.messages[{i}].role must be one of {', '.join(ROLES)}")
            if not isinstance(m["content"], str) or not m["content"]:
                raise WireError("bad_request", f"sampling.messages[{i}].content must be a non-empty string")
            size += len(m["content"].encode("utf-8"))
            out.append((m["role"], m["content"]))
        if size > MAX_PROMPT_BYTES:
            raise WireError("too_large", f"the prompt is {size} bytes; the limit is {MAX_PROMPT_BYTES}")
        return cls(
            messages=tuple(out),
            max_tokens=_int(obj, "max_tokens", 1, MAX_TOKENS, where),
            temperature_milli=_int(obj, "temperature_milli", 0, 2000, where),
            top_p_milli=_int(obj, "top_p_milli", 1, 1000, where),
            seed=_int(obj, "seed", 0, 2**32 - 2, where),
        )


# ------------------------------------------------------------------------------ job on the wire

def job_to_wire(job: Job) -> dict:
    return {
        "consumer": job.consumer,
        "model_hash": "0x" + job.model_hash.hex(),
        "prompt_hash": "0x" + job.prompt_hash.hex(),
        "max_tokens": job.max_tokens,
        "price_cap": job.price_cap,
        "opened_at": job.opened_at,
        "providers": list(job.providers),
        "prices": list(job.prices),
    }


def job_from_wire(obj: Any) -> Job:
    where = "job"
    if not isinstance(obj, dict):
        raise WireError("bad_request", "job must be an object")
    providers = _need(obj, "providers", list, where)
    prices = _need(obj, "prices", list, where)
    if len(providers) != 3 or len(prices) != 3:
        raise WireError("bad_request", "job.providers and job.prices must have 3 entries")
    for i, p in enumerate(prices):
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < 2**64:
            raise WireError("bad_request", f"job.prices[{i}] must be an integer in [0, 2^64)")
    return Job(
        consumer=_addr(obj.get("consumer"), "job.consumer"),
        model_hash=_hex32(obj, "model_hash", where),
        prompt_hash=_hex32(obj, "prompt_hash", where),
        max_tokens=_int(obj, "max_tokens", 1, 2**20, where),
        price_cap=_int(obj, "price_cap", 1, 2**64 - 1, where),
        opened_at=_int(obj, "opened_at", 0, 2**64 - 1, where),
        providers=tuple(_addr(p, f"job.providers[{i}]") for i, p in enumerate(providers)),
        prices=tuple(prices),
    )


@dataclass(frozen=True)
class InferRequest:
    job_id: bytes
    job: Job
    index: int
    sampling: Sampling

    def to_wire(self) -> dict:
        return {"type": "infer", "version": PROTOCOL_VERSION, "job_id": "0x" + self.job_id.hex(),
                "job": job_to_wire(self.job), "index": self.index, "sampling": self.sampling.to_wire()}

    @classmethod
    def from_wire(cls, obj: dict) -> InferRequest:
        if obj.get("type") != "infer":
            raise WireError("bad_request", "expected a frame of type 'infer'")
        version = obj.get("version")
        if version != PROTOCOL_VERSION:
            raise WireError("bad_request", f"protocol version {version!r} is not supported; this provider speaks {PROTOCOL_VERSION}")
        return cls(
            job_id=_hex32(obj, "job_id", "infer"),
            job=job_from_wire(obj.get("job")),
            index=_int(obj, "index", 0, 2, "infer"),
            sampling=Sampling.from_wire(obj.get("sampling")),
        )


# ------------------------------------------------------------------------------ provider -> consumer

def token_frame(text: str) -> dict:
    return {"type": "token", "text": text}


def result_frame(output_hash: bytes, token_count: int, signature: bytes, finish_reason: str) -> dict:
    return {"type": "result", "output_hash": "0x" + output_hash.hex(), "token_count": token_count,
            "signature": "0x" + signature.hex(), "finish_reason": finish_reason}


@dataclass(frozen=True)
class ResultFrame:
    output_hash: bytes
    token_count: int
    signature: bytes
    finish_reason: str

    @classmethod
    def from_wire(cls, obj: dict) -> ResultFrame:
        sig = _need(obj, "signature", str, "result")
        if not _SIG.match(sig):
            raise WireError("bad_request", "result.signature must be 0x and 130 hex digits")
        reason = obj.get("finish_reason", "stop")
        return cls(
            output_hash=_hex32(obj, "output_hash", "result"),
            token_count=_int(obj, "token_count", 0, 2**64 - 1, "result"),
            signature=bytes.fromhex(sig[2:]),
            finish_reason=reason if isinstance(reason, str) else "stop",
        )


def error_frame(code: str, message: str) -> dict:
    """The adapter's error frame, restricted to the protocol's documented codes."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}: add it to ERROR_CODES and docs/PROTOCOL.md")
    return p2p.error_frame(code, message)
