"""Continuous batching: many jobs generated at once in one llama.cpp context.

`BatchedEngine` is an `InferenceEngine` (provider/engine.py) with `slots` sequences in one
context. One worker thread owns the context and runs the loop:

    admit waiting jobs into free sequences -> prefill each new prompt (its own llama_decode, in
    N_BATCH chunks, exactly as the single-job engine feeds it) -> one decode step holding the next
    token of every running sequence -> sample each sequence from its own row of logits

so a new job joins between decode steps, and a finished, cancelled or abandoned job leaves its
sequence free for the next step. Each sequence has:

* its own KV cells: the context is created with `kv_unified = false`, so sequence s lives in its
  own KV stream of `n_ctx` cells (the per-slot context; the context holds `slots × n_ctx` cells,
  declared in the manifest as context_length and slots). A sequence's cells start at cell 0 of its
  stream after every job (`llama_memory_seq_rm`), as the single-job engine's start after
  `llama_memory_clear`: the same cells, the same float order in attention.
* its own sampler: the chain llama-cpp-python's `Llama.generate` builds (`Llama._init_sampler`,
  called here so it cannot drift: penalties, then greedy, or top-k 40 / typical / top-p / min-p /
  temperature / dist(seed)), sampled with `llama_sampler_sample` at the sequence's row.
* its own stop strings, max_tokens, UTF-8 decoder and cancel flag.

Whether a sequence's tokens change with the batch around it is measured (bench/batching.py and
docs/VERIFICATION.md's build-fingerprint rules); tests/test_batch.py checks equality with
the single-job engine.

The worker never waits for a reader: each job's pieces go into its own queue, bounded by the job's
max_tokens (one piece per token at most), so a slow reader costs memory of its own job only and
never a decode step of the others; the node cancels a reader that stops for SEND_TIMEOUT.
"""

from __future__ import annotations

import codecs
import logging
import queue
import threading
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

from meshmarket.mesh.errors import ContextOverflowError, InferenceError, ModelFileError
from meshmarket.mesh.protocol import (
    SAMPLER_MIN_P,
    SAMPLER_REPEAT_PENALTY,
    SAMPLER_TOP_K,
    SAMPLER_TYPICAL_P,
    Sampling,
    StopScanner,
)
from meshmarket.provider.engine import (
    FLASH_ATTN,
    N_BATCH,
    N_UBATCH,
    EngineSlot,
    FinishReason,
    Generation,
    GenerationResult,
    build_of,
)
from meshmarket.provider.prompt import PromptBuilder

log = logging.getLogger("meshmarket.provider")

#: The Llama object only tokenizes and holds the weights; its own context is never decoded in.
_TOKENIZER_CTX = 256


@dataclass
class _Job:
    """One request's life in the batch: filled by the worker, read through `out` by its Generation."""

    request: Sampling
    prompt: list[int]
    cancel: threading.Event
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    seq: int = -1
    sampler: object = None
    n_past: int = 0
    last: int = -1
    generated: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = StopScanner(self.request.stop)


class BatchedEngine:
    """llama.cpp with `slots` sequences in one context, decoded together by one worker thread.

    `slot` (capacity `slots`) is for admission, as in `LlamaCppEngine`; `n_ctx` is each
    sequence's context (what a request must fit in)."""

    def __init__(self, model_path: str | Path, n_ctx: int = 2048, n_threads: int = 1, n_gpu_layers: int = 0,
                 slots: int = 4) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self.model_path = str(model_path)
        if not Path(self.model_path).is_file():
            raise ModelFileError(f"model file not found: {self.model_path}", "pass the path of a .gguf file")
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self._lc = llama_cpp
        self._llama = llama_cpp.Llama(model_path=self.model_path, n_ctx=_TOKENIZER_CTX, n_threads=n_threads,
                                      n_threads_batch=n_threads, n_gpu_layers=n_gpu_layers, n_batch=N_BATCH,
                                      n_ubatch=N_UBATCH, flash_attn=FLASH_ATTN, verbose=False)
        params = llama_cpp.llama_context_default_params()
        ctypes_copy(params, self._llama.context_params)
        params.n_ctx = n_ctx * slots
        params.n_seq_max = slots
        params.kv_unified = False  # one KV stream per sequence: its cells never interleave with others'
        self._ctx = _internals.LlamaContext(model=self._llama._model, params=params, verbose=False)
        self.n_ctx = llama_cpp.llama_n_ctx_seq(self._ctx.ctx)
        self.slots = slots
        self.slot = EngineSlot(slots)
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.build = build_of(n_gpu_layers)
        self.prompts = PromptBuilder(self._llama, self.model_path)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._batch = llama_cpp.llama_batch_init(max(N_BATCH, slots), 0, 1)
        self._waiting: deque[_Job] = deque()
        self._running: dict[int, _Job] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._sampler_lock = threading.Lock()
        self._worker = threading.Thread(target=self._loop, name="batched-engine", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ the interface

    def prompt_tokens(self, request: Sampling) -> list[int]:
        return self.prompts.tokens(request)

    def count_prompt_tokens(self, request: Sampling) -> int:
        return len(self.prompt_tokens(request))

    def generate(self, request: Sampling, cancel: threading.Event | None = None) -> Generation:
        """Check the request fits a sequence, then return a lazy stream: the job joins the batch on
        the first `next()` and leaves it when it ends or the stream is closed."""
        tokens = self.prompt_tokens(request)
        if len(tokens) + request.max_tokens > self.n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens and max_tokens is {request.max_tokens}: "
                f"{len(tokens) + request.max_tokens} exceeds the context window of {self.n_ctx} tokens"
            )
        job = _Job(request, tokens, cancel or threading.Event())
        return Generation(self._stream(job), len(tokens))

    def _stream(self, job: _Job) -> Generator[str, None, GenerationResult]:
        with self._wake:
            if self._closed:
                raise InferenceError("the engine is closed")
            self._waiting.append(job)
            self._wake.notify()
        try:
            while True:
                item = job.out.get()
                if isinstance(item, str):
                    yield item
                elif isinstance(item, GenerationResult):
                    return item
                else:
                    raise item
        finally:
            job.cancel.set()  # closed early: the worker drops the sequence at its next step

    def tokenize(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode(), add_bos=False, special=False)

    def piece(self, token: int) -> bytes:
        return self._llama.detokenize([token])

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._worker.join()
        self._lc.llama_batch_free(self._batch)
        self._ctx.close()
        self._llama.close()

    @property
    def active(self) -> int:
        """Sequences in the batch now (running or waiting to be prefilled)."""
        return len(self._running) + len(self._waiting)

    # ------------------------------------------------------------------ the worker

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._running:
                    self._wake.wait()
                if self._closed:
                    failed = list(self._waiting) + list(self._running.values())
                    self._waiting.clear()
                    break
                admitted = []
                free = [s for s in range(self.slots) if s not in self._running]
                while self._waiting and free:
                    job = self._waiting.popleft()
                    job.seq = free.pop(0)
                    self._running[job.seq] = job
                    admitted.append(job)
            try:
                for job in admitted:
                    self._prefill(job)
                self._step()
            except Exception as exc:  # a failed decode fails the jobs in it, never the node
                log.exception("batched decode failed")
                for job in list(self._running.values()):
                    self._finish(job, None, InferenceError(f"llama.cpp decode failed: {exc}"))
        for job in failed:
            job.out.put(InferenceError("the engine was closed"))

    def _prefill(self, job: _Job) -> None:
        """The prompt alone, in N_BATCH chunks with logits for the last token: the ubatches the
        single-job engine decodes, then the first token sampled."""
        lc = self._lc
        lc.llama_memory_seq_rm(self._mem, job.seq, -1, -1)
        with self._sampler_lock:  # Llama._init_sampler reads the Llama's seed
            self._llama.set_seed(job.request.seed)
            job.sampler = self._llama._init_sampler(
                top_k=SAMPLER_TOP_K, top_p=job.request.top_p, min_p=SAMPLER_MIN_P, typical_p=SAMPLER_TYPICAL_P,
                temp=job.request.temperature, repeat_penalty=SAMPLER_REPEAT_PENALTY)
        if job.cancel.is_set():
            return self._finish(job, "cancelled")
        prompt = job.prompt
        for start in range(0, len(prompt), N_BATCH):
            chunk = prompt[start:start + N_BATCH]
            self._fill([(t, start + i, job.seq, start + i == len(prompt) - 1) for i, t in enumerate(chunk)])
            self._decode()
        job.n_past = len(prompt)
        self._accept(job, job.sampler.sample(self._ctx, self._batch.n_tokens - 1))

    def _step(self) -> None:
        """One decode step: the last token of every running sequence, one row each."""
        for job in list(self._running.values()):
            if job.cancel.is_set():
                self._finish(job, "cancelled")
        jobs = list(self._running.values())
        if not jobs:
            return
        self._fill([(job.last, job.n_past, job.seq, True) for job in jobs])
        self._decode()
        for row, job in enumerate(jobs):
            job.n_past += 1
            self._accept(job, job.sampler.sample(self._ctx, row))

    def _fill(self, rows: list[tuple[int, int, int, bool]]) -> None:
        b = self._batch
        for i, (token, pos, seq, logits) in enumerate(rows):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(rows)

    def _decode(self) -> None:
        rc = self._lc.llama_decode(self._ctx.ctx, self._batch)
        if rc != 0:
            raise InferenceError(f"llama_decode returned {rc}")

    def _accept(self, job: _Job, token: int) -> None:
        """A sampled token: end of generation, or a piece for the reader (held back while it may be
        the start of a stop string), then the job's end conditions."""
        if self._lc.llama_vocab_is_eog(self._vocab, token):
            return self._finish(job, "stop")
        job.generated.append(token)
        job.last = token
        safe, stopped = job.stops.feed(job.decoder.decode(self.piece(token)))
        if safe:
            job.pieces.append(safe)
            job.out.put(safe)
        if stopped:
            return self._finish(job, "stop")
        if len(job.generated) >= job.request.max_tokens:
            return self._finish(job, "length")

    def _finish(self, job: _Job, reason: FinishReason | None, error: Exception | None = None) -> None:
        """The job leaves the batch: its cells are freed, its reader gets the result (or error)."""
        self._running.pop(job.seq, None)
        self._lc.llama_memory_seq_rm(self._mem, job.seq, -1, -1)
        job.sampler = None
        if error is not None or reason is None:
            job.out.put(error or InferenceError("generation failed"))
            return
        if not job.stops.stopped:
            tail, stopped = job.stops.feed(job.decoder.decode(b"", final=True))
            if stopped:
                reason = "stop"
            tail += job.stops.flush()
            if tail:
                job.pieces.append(tail)
                job.out.put(tail)
        job.out.put(GenerationResult(text="".join(job.pieces), prompt_tokens=len(job.prompt),
                                     tokens=tuple(job.generated), finish_reason=reason))


def ctypes_copy(dst, src) -> None:
    """Copy a ctypes structure's fields (llama_context_params) into another."""
    import ctypes

    ctypes.memmove(ctypes.addressof(dst), ctypes.addressof(src), ctypes.sizeof(dst))
