"""The provider node: serves inference jobs over libp2p, checks payment on-chain, signs results.

One request per stream (`/meshmarket/infer/2.0.0`, docs/PROTOCOL.md part 2):

    consumer -> infer request (job, seat, sampling)
    provider -> token frames ... -> result frame (tokens, EIP-712 signed) | error frame

Before any compute the request must pass `JobGate` (the job is open and drawn on-chain with
exactly these parameters, this provider sits in that seat, the peer is the job's consumer, the
sampling hashes to the job's promptHash, the delivery window is still open) and `ServedJobs`
(served once per job and seat). What it signed is kept for the claim keeper before it is sent. Inference runs in a worker thread behind the engine's capacity slot: a busy node says
"busy" at once, and so does one consumer asking for more than its fair share (`fair_share`) of a
batched engine's slots. trio stays in this module and mesh.p2p; the engine and the chain are synchronous.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio
from eth_account.signers.local import LocalAccount
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import ContextOverflowError, InferenceError, P2PError, ProtocolError
from meshmarket.mesh.files import append_durable
from meshmarket.mesh.market import ResultClaim
from meshmarket.mesh.p2p import Node, Session
from meshmarket.mesh.protocol import (
    INFER_PROTOCOL,
    MANIFEST_PROTOCOL,
    MAX_MANIFEST_REQUEST_FRAME,
    MAX_REQUEST_FRAME,
    InferRequest,
    Manifest,
    ManifestRequest,
    ResultFrame,
    TokenFrame,
    canonical_json,
    output_hash,
    pack_tokens,
)
from meshmarket.provider.claims import Claim, ClaimKeeper
from meshmarket.provider.engine import Generation, InferenceEngine

log = logging.getLogger("meshmarket.provider")

#: A consumer may open the stream while its openJob transaction is being mined (a block or
#: two on a public chain) and sends the request once the job is open.
REQUEST_TIMEOUT = 60.0
#: A consumer that stops reading for this long is gone: stop generating for it.
SEND_TIMEOUT = 30.0


def _glibc_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def _return_freed_memory() -> None:
    """After each job: glibc keeps the pages freed in each worker thread's malloc arena mapped
    (RSS grows with the threads that ran jobs); malloc_trim gives them back. bench/soak.py, 300
    queries: +18.6 MB without, +9.2 MB with (docs/P2P_NOTES.md); it costs a few ms off the job's
    path, in a worker thread."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def fair_share(slots: int) -> int:
    """The jobs one consumer may run at once on a node with `slots`: half of them, rounded up (all
    of one slot: with one, there is nothing to share)."""
    return max(1, (slots + 1) // 2)


class JobGate:
    """On-chain admission: is this request a paid, drawn, open job with this provider in its seat?
    (synchronous)"""

    def __init__(self, chain: Chain, provider: str, model_hash: bytes) -> None:
        self.chain = chain
        self.provider = to_checksum_address(provider)
        self.model_hash = model_hash
        self.delivery_window = chain.deployment.params.delivery_window
        self.market = chain.market.address
        self._selector = "0x" + keccak(text="jobSlot(address,uint8)")[:4].hex()

    def _slot_and_time(self, consumer: str, slot: int) -> tuple[bytes, int]:
        """The consumer's job slot on-chain and the latest block's timestamp, in ONE JSON-RPC batch
        of raw calls: this check sits before every first token, and a web3 contract call costs
        ~5 ms of Python where the raw round trip costs ~1 ms."""
        data = self._selector + abi_encode(["address", "uint8"], [consumer, slot]).hex()
        try:
            block, stored = self.chain.w3.provider.make_batch_request([
                ("eth_getBlockByNumber", ["latest", False]),
                ("eth_call", [{"to": self.market, "data": data}, "latest"]),
            ])
            return bytes.fromhex(stored["result"][2:]), int(block["result"]["timestamp"], 16)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("internal", "the provider cannot read the chain right now; retry") from exc

    def check(self, req: InferRequest, remote_address: str) -> None:
        job = req.job
        if job.seats[req.seat] != self.provider:
            raise ProtocolError("not_listed", f"seat #{req.seat} of this job is {job.seats[req.seat]}, not {self.provider}")
        if to_checksum_address(remote_address) != job.consumer:
            raise ProtocolError("wrong_consumer", "only the job's consumer may request it: connect with the consumer's key")
        if job.model_hash != self.model_hash:
            raise ProtocolError("wrong_model", f"this provider serves model 0x{self.model_hash.hex()}, "
                                               f"the job is for 0x{job.model_hash.hex()}")
        if req.sampling.max_tokens != job.max_tokens:
            raise ProtocolError("mismatch", f"sampling.max_tokens {req.sampling.max_tokens} differs from the job's "
                                            f"{job.max_tokens}")
        if req.sampling.prompt_hash(job.model_hash) != job.prompt_hash:
            raise ProtocolError("mismatch", "the request does not hash to the job's promptHash: send exactly what "
                                            "was hashed at openJob")
        stored, now = self._slot_and_time(job.consumer, job.slot)
        if stored != job.hash():
            raise ProtocolError("unpaid", "no open job on-chain has these parameters (not opened, not drawn yet, "
                                          "settled, or other seats): open and draw it, then send the current job")
        if now >= job.drawn_at + self.delivery_window:
            raise ProtocolError("expired", "the job's delivery window has passed: open a new job")
        # Escrow needs no separate check: the draw took maxTokens * priceCap per seat (and a jury
        # reserve) into the vault, and it stays there until the job closes.


class ServedJobs:
    """Each (job, seat) is computed once: a replayed request gets `replayed`, not a second run.

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
                append_durable(self._path, f"0x{job_id.hex()} {index}")  # on disk before the compute
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
    on_job: Callable[[JobLog], None] | None = None
    #: Served jobs are handed here, so the provider is paid even if the consumer never settles.
    claims: ClaimKeeper | None = None
    #: Jobs one consumer may run at once (None: `fair_share` of the engine's slots), so that one
    #: consumer cannot hold every slot.
    per_consumer: int | None = None
    _running: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    @property
    def consumer_limit(self) -> int:
        return self.per_consumer or fair_share(self.engine.slot.capacity)

    def attach(self, node: Node) -> None:
        node.serve(INFER_PROTOCOL, self.handle_infer, timeout=REQUEST_TIMEOUT)
        node.serve(MANIFEST_PROTOCOL, self.handle_manifest, timeout=REQUEST_TIMEOUT)

    async def handle_manifest(self, session: Session) -> None:
        ManifestRequest.parse(await session.recv(max_size=MAX_MANIFEST_REQUEST_FRAME), "manifest_request")
        await session.send({"type": "manifest", "manifest": self.manifest.to_dict()})

    async def handle_infer(self, session: Session) -> None:
        t0 = time.perf_counter()
        req = InferRequest.parse(await session.recv(max_size=MAX_REQUEST_FRAME))
        try:
            await trio.to_thread.run_sync(self.gate.check, req, session.remote_address)
        except ProtocolError as exc:
            log.info("refused request from %s: %s (%s)", session.remote_address, exc.code, exc)
            raise
        entry = JobLog(req.job_id, req.job.consumer, price=req.job.prices[req.seat])
        consumer = req.job.consumer
        if self._running.get(consumer, 0) >= self.consumer_limit:
            raise ProtocolError("busy", f"this consumer already runs {self.consumer_limit} job(s) here, the most one "
                                        "consumer may: try another provider or retry")
        if not self.engine.slot.try_acquire():
            raise ProtocolError("busy", "all inference slots are taken: try another provider or retry")
        self._running[consumer] = self._running.get(consumer, 0) + 1
        try:
            if not self.served.claim(req.job_id, req.seat):
                raise ProtocolError("replayed", "this job was already served by this provider")
            await self._serve(session, req, entry, t0)
        finally:
            self.engine.slot.release()
            self._running[consumer] -= 1
            if not self._running[consumer]:
                del self._running[consumer]
        await trio.to_thread.run_sync(_return_freed_memory)  # the answer is out: off its path
        if self.on_job:
            self.on_job(entry)

    async def _serve(self, session: Session, req: InferRequest, entry: JobLog, t0: float) -> None:
        cancel = threading.Event()
        try:
            generation = self.engine.generate(req.sampling, cancel)
        except ContextOverflowError as exc:
            entry.outcome = "refused: context overflow"
            raise ProtocolError("context_overflow", str(exc)) from None
        except InferenceError as exc:
            entry.outcome = "refused: bad request"
            raise ProtocolError("bad_request", str(exc)) from None
        streamed = await self._stream(session, req, generation, cancel, entry, t0)
        if streamed is None:
            entry.outcome = "cancelled: consumer went away"
            return
        text, result = streamed
        out_hash = output_hash(text, result.tokens)
        claim = ResultClaim(req.job_id, out_hash, result.completion_tokens).sign(
            self.account, self.gate.chain.chain_id, self.gate.chain.market.address)
        finish = "stop" if result.finish_reason == "stop" else "length"
        if self.claims is not None:
            # Kept (durably) before the signature leaves: a crash between the two must not leave the
            # consumer with a signed result and this node with nothing to claim.
            self.claims.add(Claim(req.job_id, req.job, req.seat, out_hash, result.completion_tokens,
                                  text_hash=keccak(text.encode("utf-8")), tokens=pack_tokens(result.tokens),
                                  request=canonical_json(req.sampling.request(req.job.model_hash))))
        await session.send(ResultFrame(output_hash=out_hash, token_count=result.completion_tokens,
                                       tokens=pack_tokens(result.tokens), signature=claim.signature,
                                       finish_reason=finish, prompt_tokens=result.prompt_tokens).to_wire())
        entry.tokens = result.completion_tokens
        entry.total_ms = (time.perf_counter() - t0) * 1000
        entry.outcome = "served"

    async def _stream(self, session: Session, req: InferRequest, generation: Generation, cancel: threading.Event,
                      entry: JobLog, t0: float):
        """Run the generation in a worker thread and stream its pieces; (text, result), or None
        when the consumer went away (the generation is then cancelled)."""
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
        done: list = []
        async with trio.open_nursery() as nursery:
            async def run_worker():
                done.append(await trio.to_thread.run_sync(work))

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
                    if not pieces:
                        entry.first_token_ms = (time.perf_counter() - t0) * 1000
                    pieces.append("".join(batch))
                    await session.send(TokenFrame(text=pieces[-1]).to_wire(), timeout=SEND_TIMEOUT)
            except P2PError as exc:
                # The consumer is gone: stop generating, let the worker finish and close.
                log.info("job 0x%s: consumer went away (%s); generation cancelled", req.job_id.hex()[:12], exc)
                cancel.set()
                async for _ in recv:
                    pass
                return None
        return "".join(pieces), done[0]
