"""The consumer's side of the inference and manifest protocols (trio; used by consumer/query.py,
tests and benchmarks). Every answer is verified before it is believed: the text and the tokens hash
to the signed output hash, the tokens number the signed count, and the EIP-712 signature is the
seat's provider's. A validly signed answer that claims more tokens than the job allows is not
dropped: it is a provable lie, kept (`Answer.lie`) so that settlement slashes it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from eth_utils import to_checksum_address

from meshmarket.mesh.errors import P2PError, ProtocolError, ProviderFailed
from meshmarket.mesh.market import ResultClaim
from meshmarket.mesh.p2p import Node, address_from_peer_id
from meshmarket.mesh.protocol import (
    INFER_PROTOCOL,
    MANIFEST_PROTOCOL,
    MAX_MANIFEST_FRAME,
    MAX_REQUEST_FRAME,
    ErrorFrame,
    InferRequest,
    Manifest,
    ManifestRequest,
    ManifestResponse,
    ResultFrame,
    TokenFrame,
    output_hash,
    received_manifest,
    unpack_tokens,
)

#: The first token needs the provider's on-chain check and the prompt's evaluation.
FIRST_TOKEN_TIMEOUT = 30.0
#: Between tokens a healthy provider needs milliseconds; this much silence is a stall.
TOKEN_TIMEOUT = 10.0


@dataclass
class Answer:
    provider: str
    text: str
    result: ResultFrame
    claim: ResultClaim
    first_token_ms: float
    total_ms: float
    #: A signed claim of more tokens than the job allows: submitted at settlement, where it is slashed.
    lie: bool = False

    @property
    def tokens(self) -> list[int]:
        return unpack_tokens(self.result.tokens)


async def fetch_manifest(node: Node, peer_id: str, addrs: Sequence[str], timeout: float = 10.0) -> tuple[Manifest, bytes]:
    """The provider's signed manifest and the keccak256 of what was received (what the registry
    holds); its signer must be the peer Noise authenticated."""
    try:
        async with node.open_session(peer_id, addrs, MANIFEST_PROTOCOL, timeout) as s:
            await s.send(ManifestRequest().to_wire())
            frame = await s.recv(max_size=MAX_MANIFEST_FRAME)
    except P2PError as exc:
        raise ProviderFailed("unreachable", f"cannot fetch the manifest of {peer_id}: {exc}") from exc
    try:
        manifest, digest, signer = received_manifest(ManifestResponse.parse(frame, "manifest response").manifest)
    except ProtocolError as exc:
        raise ProviderFailed("bad_manifest", f"{peer_id} sent an invalid manifest: {exc}") from exc
    if signer != address_from_peer_id(peer_id) or manifest.peer_id != peer_id or signer != manifest.provider:
        raise ProviderFailed("bad_manifest", f"the manifest of {peer_id} is signed by someone else")
    return manifest, digest


async def run_job(node: Node, peer_id: str, addrs: Sequence[str],
                  req: InferRequest | Callable[[], Awaitable[InferRequest]], *, chain_id: int, market: str,
                  on_token: Callable[[str], None] | None = None, connect_timeout: float = 10.0,
                  first_token_timeout: float = FIRST_TOKEN_TIMEOUT, token_timeout: float = TOKEN_TIMEOUT,
                  expected: str | None = None) -> Answer:
    """Send a request to one provider, stream its tokens, verify and return its signed answer.

    `req` may be a coroutine function: the stream is then opened first and the request awaited
    after, so stream set-up (several ms in py-libp2p) overlaps with the chain. `expected` is the
    provider's address (needed up front in that case).
    """
    if isinstance(req, InferRequest):
        expected = to_checksum_address(req.job.seats[req.seat])
    assert expected is not None, "pass expected= with a deferred request"
    if address_from_peer_id(peer_id) != expected:
        raise ProviderFailed("wrong_peer", f"peer {peer_id} is not provider {expected}", expected)
    first_ms = float("nan")
    pieces: list[str] = []
    try:
        async with node.open_session(peer_id, addrs, INFER_PROTOCOL, connect_timeout) as s:
            if not isinstance(req, InferRequest):
                req = await req()
                if req.job.seats[req.seat] != expected:
                    raise ProviderFailed("wrong_peer", f"seat {req.seat} is not {expected}", expected)
            t0 = time.perf_counter()
            await s.send(req.to_wire(), max_size=MAX_REQUEST_FRAME)
            while True:
                frame = await s.recv(timeout=token_timeout if pieces else first_token_timeout)
                kind = frame.get("type")
                if kind == "token":
                    text = TokenFrame.parse(frame, "token").text
                    if not pieces:
                        first_ms = (time.perf_counter() - t0) * 1000
                    pieces.append(text)
                    if on_token:
                        on_token(text)
                elif kind == "result":
                    result = ResultFrame.parse(frame, "result")
                    break
                elif kind == "error":
                    err = ErrorFrame.parse(frame, "error")
                    raise ProviderFailed(err.code, err.message, expected)
                else:
                    raise ProviderFailed("bad_frame", f"unexpected frame type {kind!r}", expected)
    except ProtocolError as exc:
        raise ProviderFailed("bad_frame", str(exc), expected) from exc
    except P2PError as exc:
        raise ProviderFailed(exc.code, f"provider {expected}: {exc}", expected) from exc
    text = "".join(pieces)
    tokens = unpack_tokens(result.tokens)
    if len(tokens) != result.token_count:
        raise ProviderFailed("bad_result", f"the result lists {len(tokens)} tokens but signs {result.token_count}",
                             expected)
    if output_hash(text, tokens) != result.output_hash:
        raise ProviderFailed("bad_result", "the streamed text and tokens do not hash to the signed output hash", expected)
    claim = ResultClaim(req.job_id, result.output_hash, result.token_count, result.signature)
    if claim.signer(chain_id, market) != expected:
        raise ProviderFailed("bad_result", "the result is not signed by the seat's provider", expected)
    return Answer(expected, text, result, claim, first_ms, (time.perf_counter() - t0) * 1000,
                  lie=result.token_count > req.job.max_tokens)
