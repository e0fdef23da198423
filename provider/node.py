"""The provider node: serves inference jobs over libp2p, checks payment on-chain, signs results.

One request per stream (`/meshmarket/infer/1.0.0`, docs/PROTOCOL.md part 2):

    consumer -> infer request (job, index, sampling)
    provider -> token frames ... -> result frame (EIP-712 signed) | error frame

Before any compute the request must pass `JobGate` (the job is open on-chain with exactly these
parameters, lists this provider at that index, the peer is the job's consumer, the sampling
hashes to the job's promptHash, the delivery window is still open) and `ServedJobs` (served
once). Inference runs in a worker thread behind the engine's capacity slot: a busy node says
"busy" at once. trio stays in this module and mesh.p2p; the engine and the chain are synchronous.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from mesh.chain import Chain
from mesh.market import ResultClaim
from mesh.p2p import Node, P2PError, Session
from mesh.wire import (
    INFER_PROTOCOL,
    MANIFEST_PROTOCOL,
    MAX_REQUEST_FRAME,
    InferRequest,
    WireError,
    error_frame,
    result_frame,
    token_frame,
)
from provider.engine import ContextOverflowError, GenerationRequest, InferenceEngine
from provider.claims import Claim, ClaimKeeper
from provider.manifest import Manifest

log = logging.getLogger("meshmarket.provider")

#: A consumer may open the stream while its openJob transaction is being mined (a block or
#: two on a public chain) and sends the request once the job is open.
REQUEST_TIMEOUT = 60.0
#: A consumer that stops reading for this long is gone: stop generating for it.
SEND_TIMEOUT = 30.0
CLOSED_JOB = b"\x00" * 31 + b"\x01"


class JobGate:
    """On-chain admission: is this request a paid, open job for this provider? (synchronous)"""

    def __init__(self, chain: Chain, provider: str, model_hash: bytes) -> None:
        self.chain = chain
        self.provider = to_checksum_address(provider)
        self.model_hash = model_hash
        self.delivery_window = chain.deployment.params.delivery_window
        self.market = chain.market.address
        self._selector = "0x" + keccak(text="jobHashes(bytes32)")[:4].hex()

    def _job_hash_and_time(self, job_id: bytes) -> tuple[bytes, int]:
        """jobHashes(jobId) and the latest block's timestamp, in ONE JSON-RPC
        batch of raw calls: this check sits before every first token, and a web3 contract
        call costs ~5 ms of Python where the raw round trip costs ~1 ms."""
        try:
            block, stored = self.chain.w3.provider.make_batch_request([
                ("eth_getBlockByNumber", ["latest", False]),
                ("eth_call", [{"to": self.market, "data": self._selector + job_id.hex()}, "latest"]),
            ])
            return bytes.fromhex(stored["result"][2:]), int(block["result"]["timestamp"], 16)
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError("internal", "the provider cannot read the chain right now; retry") from exc

    def check(self, req: InferRequest, remote_address: str) -> None:
        job = req.job
        if to_checksum_address(job.providers[req.index]) != self.provider:
            raise WireError("not_listed", f"provider #{req.index} of this job is {job.providers[req.index]}, not {self.provider}")
        if to_checksum_address(remote_address) != job.consumer:
            raise WireError("wrong_consumer", "only the job's consumer may request it: connect with the consumer's key")
        if job.model_hash != self.model_hash:
            raise WireError("wrong_model", f"this provider serves model 0x{self.model_hash.hex()}, the job is for 0x{job.model_hash.hex()}")
        if req.sampling.max_tokens != job.max_tokens:
            raise WireError("mismatch", f"sampling.max_tokens {req.sampling.max_tokens} differs from the job's {job.max_tokens}")
        if req.sampling.prompt_hash(job.model_hash) != job.prompt_hash:
            raise WireError("mismatch", "the request does not hash to the job's promptHash: send exactly what was hashed at openJob")
        stored, now = self._job_hash_and_time(req.job_id)
        if stored == b"\x00" * 32:
            raise WireError("unpaid", "no such job on-chain: open it (escrow the payment) before sending the request")
        if stored == CLOSED_JOB:
            raise WireError("unpaid", "the job is already settled")
        if stored != job.hash():
            raise WireError("unpaid", "the job on-chain has other parameters (a replaced provider, other prices?): send the current job")
        if now >= job.opened_at + self.delivery_window:
            raise WireError("expired", "the job's delivery window has passed: open a new job")
        # Escrow needs no separate check: a job hash is stored only after the registry took
        # maxTokens * sum(prices) into escrow, and it stays there until the job closes.


class ServedJobs:
    """Each (job, index) is computed once: a replayed request gets `replayed`, not a second run.

    With a `path`, every claim is appended (and flushed) before compute, so a restart does not
    forget what was served. Entries of closed jobs are harmless: job ids are never reused.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._seen: set[tuple[bytes, int]] = set()
        self._lock = threading.Lock()
        self._path = path
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                job, _, index = line.partition(" ")
                if len(job) == 66 and index.isdigit():
                    self._seen.add((bytes.fromhex(job[2:]), int(index)))

    def claim(self, job_id: bytes, index: int) -> bool:
        with self._lock:
            key = (job_id, index)
            if key in self._seen:
                return False
            if self._path is not None:
                with open(self._path, "a") as fh:
                    fh.write(f"0x{job_id.hex()} {index}\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            self._seen.add(key)
            return True


@dataclass
class JobLog:
    """What the node tells its operator about each job (printed by `mesh provider start`)."""

    job_id: bytes
    consumer: str
    tokens: int = 0
    price: int = 0
    first_token_ms: float = math.nan
    total_ms: float = math.nan
    outcome: str = ""

    @property
    def pay(self) -> int:
        return self.tokens * self.price


@dataclass
class ProviderService:
    account: LocalAccount
    engine: InferenceEngine
    gate: JobGate
    manifest: Manifest
    served: ServedJobs = field(default_factory=ServedJobs)
    #: Demo only: return altered output (and sign it), to show the cheater being slashed.
    cheater: bool = False
    on_job: Callable[[JobLog], None] | None = None
    #: Served jobs are handed here, so the provider is paid even if the consumer never settles.
    claims: ClaimKeeper | None = None

    def attach(self, node: Node) -> None:
        node.serve(INFER_PROTOCOL, self.handle_infer, timeout=REQUEST_TIMEOUT)
        node.serve(MANIFEST_PROTOCOL, self.handle_manifest, timeout=REQUEST_TIMEOUT)

    async def handle_manifest(self, session: Session) -> None:
        frame = await session.recv(max_size=4096)
        if frame.get("type") != "manifest_request":
            await session.send(error_frame("bad_request", "expected a frame of type 'manifest_request'"))
            return
        await session.send({"type": "manifest", "manifest": self.manifest.to_dict()})

    async def handle_infer(self, session: Session) -> None:
        t0 = time.perf_counter()
        try:
            frame = await session.recv(max_size=MAX_REQUEST_FRAME)
            req = InferRequest.from_wire(frame)
            await trio.to_thread.run_sync(self.gate.check, req, session.remote_address)
        except WireError as exc:
            log.info("refused request from %s: %s (%s)", session.remote_address, exc.code, exc)
            await session.send(error_frame(exc.code, str(exc)))
            return
        entry = JobLog(req.job_id, req.job.consumer, price=req.job.prices[req.index])
        if not self.engine.slot.try_acquire():
            await session.send(error_frame("busy", "all inference slots are taken: try another provider or retry"))
            return
        try:
            if not self.served.claim(req.job_id, req.index):
                await session.send(error_frame("replayed", "this job was already served by this provider"))
                return
            await self._serve(session, req, entry, t0)
        finally:
            self.engine.slot.release()
        if self.on_job:
            self.on_job(entry)

    async def _serve(self, session: Session, req: InferRequest, entry: JobLog, t0: float) -> None:
        s = req.sampling
        try:
            gen_req = GenerationRequest(
                messages=tuple({"role": r, "content": c} for r, c in s.messages),
                max_tokens=s.max_tokens, temperature=s.temperature_milli / 1000, top_p=s.top_p_milli / 1000, seed=s.seed,
            )
            generation = self.engine.generate(gen_req, cancel := threading.Event())
        except ContextOverflowError as exc:
            await session.send(error_frame("context_overflow", str(exc)))
            entry.outcome = "refused: context overflow"
            return
        except ValueError as exc:
            await session.send(error_frame("bad_request", str(exc)))
            entry.outcome = "refused: bad request"
            return

        # Unbounded (at most max_tokens pieces): the worker hands each piece over without
        # waiting for the trio loop, so inference never stalls on the network.
        send, recv = trio.open_memory_channel[str](math.inf)
        token = trio.lowlevel.current_trio_token()

        def work():
            try:
                with generation:
                    for piece in generation:
                        token.run_sync_soon(send.send_nowait, piece)
                    return generation.result
            finally:
                token.run_sync_soon(send.close)

        pieces: list[str] = []
        result = None
        gone = False
        async with trio.open_nursery() as nursery:
            async def run_worker():
                nonlocal result
                result = await trio.to_thread.run_sync(work)

            nursery.start_soon(run_worker)
            try:
                async for piece in recv:
                    # Pieces that queued up while the last frame was being written go out
                    # together: one frame each would make the network the bottleneck.
                    batch = [piece]
                    while True:
                        try:
                            batch.append(recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    text = "".join(batch)
                    if self.cheater:
                        text = text.upper()
                    if not pieces:
                        entry.first_token_ms = (time.perf_counter() - t0) * 1000
                    pieces.append(text)
                    await session.send(token_frame(text), timeout=SEND_TIMEOUT)
            except P2PError as exc:
                # The consumer is gone: stop generating, let the worker finish and close.
                log.info("job 0x%s: consumer went away (%s); generation cancelled", req.job_id.hex()[:12], exc)
                cancel.set()
                gone = True
                async for _ in recv:
                    pass
        if gone:
            entry.outcome = "cancelled: consumer went away"
            return
        if self.cheater:
            # A per-provider mark, so that two cheaters also disagree with each other.
            mark = f" [{self.account.address[2:8]}]"
            pieces.append(mark)
            await session.send(token_frame(mark), timeout=SEND_TIMEOUT)
        assert result is not None
        text = "".join(pieces)
        out_hash = keccak(text.encode("utf-8"))
        claim = ResultClaim(req.job_id, out_hash, result.completion_tokens).sign(
            self.account, self.gate.chain.chain_id, self.gate.chain.market.address)
        await session.send(result_frame(out_hash, result.completion_tokens, claim.signature, result.finish_reason))
        if self.claims is not None:
            self.claims.add(Claim(req.job_id, req.job, req.index, out_hash, result.completion_tokens))
        entry.tokens = result.completion_tokens
        entry.total_ms = (time.perf_counter() - t0) * 1000
        entry.outcome = "served" + (" (altered output)" if self.cheater else "")
