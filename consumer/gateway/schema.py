"""OpenAI request parsing (strict) and response/chunk building (OpenAI's exact shapes).

Parameters of POST /v1/chat/completions and /v1/completions fall in four groups:

* used: model, messages | prompt, max_tokens (chat also max_completion_tokens), temperature,
  top_p, seed, stop, stream, stream_options.include_usage, and the extension `meshmarket`
  ({"max_price": <int, at most the gateway's>, "dispute": <bool>});
* accepted only at their neutral value, refused otherwise (400 unsupported_parameter/_value):
  n (1), logprobs (false/null), top_logprobs (null), echo (false), best_of (1), suffix (null/""),
  frequency_penalty / presence_penalty (0), logit_bias (null/{}), response_format ({"type": "text"}),
  modalities (["text"]), tools / functions (null/[]), tool_choice / function_call (null/"none");
* ignored (harmless: bookkeeping or hints with no effect on the text): user, metadata, store,
  service_tier, prompt_cache_key, prompt_cache_retention, prompt_cache_options,
  safety_identifier, parallel_tool_calls, stream_options.include_obfuscation (no obfuscation
  field is ever sent);
* refused whenever given non-null: audio, prediction, reasoning_effort, verbosity,
  web_search_options, moderation. Any other name is refused as unknown (400 unknown_parameter).

Deviations from OpenAI, on purpose: temperature defaults to 0 (greedy: three providers must
agree), temperature/top_p are rounded to thousandths (the wire has no floats), seed must fit the
wire (0..2^32-2), max_tokens defaults to the gateway's setting (every request has a known cost),
stop strings are at most 64 characters (the wire's limit), "developer" messages are sent as "system",
text content parts are joined with "\\n", and empty message contents are refused (the wire
refuses them).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from meshmarket.consumer.gateway.backend import Completion, CompletionRequest, GatewayError
from meshmarket.consumer.gateway.config import GatewayConfig, Limits

# ------------------------------------------------------------------------------ limits


_CHAT_USED = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
              "stop", "stream", "stream_options", "meshmarket"}
_COMPLETION_USED = {"model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
                    "stream_options", "meshmarket"}
_IGNORED = {"user", "metadata", "store", "service_tier", "prompt_cache_key", "prompt_cache_retention",
            "prompt_cache_options", "safety_identifier", "parallel_tool_calls"}
_ALWAYS_REFUSED = {"audio", "prediction", "reasoning_effort", "verbosity", "web_search_options", "moderation"}


def _neutral_checks() -> dict[str, tuple[Any, str]]:
    """name -> (predicate on the value, what to say when it is not neutral)."""
    return {
        "n": (lambda v: v in (None, 1) and not isinstance(v, bool), "only n=1 is supported (one answer per request)"),
        "logprobs": (lambda v: v in (None, False) or (v == 0 and not isinstance(v, bool)), "logprobs are not supported"),
        "top_logprobs": (lambda v: v in (None, 0) and not isinstance(v, bool), "top_logprobs is not supported"),
        "echo": (lambda v: v in (None, False), "echo is not supported"),
        "best_of": (lambda v: v in (None, 1) and not isinstance(v, bool), "only best_of=1 is supported"),
        "suffix": (lambda v: v in (None, ""), "suffix (insertion) is not supported"),
        "frequency_penalty": (lambda v: v in (None, 0) and not isinstance(v, bool), "frequency_penalty is not supported (only 0)"),
        "presence_penalty": (lambda v: v in (None, 0) and not isinstance(v, bool), "presence_penalty is not supported (only 0)"),
        "logit_bias": (lambda v: v is None or v == {}, "logit_bias is not supported"),
        "response_format": (lambda v: v is None or v == {"type": "text"}, "only response_format {\"type\": \"text\"} is supported (no JSON mode or schemas)"),
        "modalities": (lambda v: v is None or v == ["text"], "only the text modality is supported"),
        "tools": (lambda v: v is None or v == [], "tools (function calling) are not supported"),
        "functions": (lambda v: v is None or v == [], "functions (function calling) are not supported"),
        "tool_choice": (lambda v: v in (None, "none"), "tool_choice is not supported (no tools)"),
        "function_call": (lambda v: v in (None, "none"), "function_call is not supported (no functions)"),
    }


_NEUTRAL = _neutral_checks()
_CHAT_NEUTRAL = {"n", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty", "logit_bias",
                 "response_format", "modalities", "tools", "functions", "tool_choice", "function_call"}
_COMPLETION_NEUTRAL = {"n", "logprobs", "echo", "best_of", "suffix", "frequency_penalty", "presence_penalty",
                       "logit_bias"}
_COMPLETION_IGNORED = {"user"}


def bad(message: str, param: str | None = None, code: str = "invalid_value", status: int = 400) -> GatewayError:
    return GatewayError(status, "invalid_request_error", code, message, param, spent=0)


# ------------------------------------------------------------------------------ JSON body


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(body: bytes) -> dict:
    """Bytes -> a JSON object, or GatewayError 400. Floats arrive as Decimal (exact); NaN and
    Infinity, which Python's json accepts by default, are refused."""
    try:
        text = body.decode("utf-8")
        obj = json.loads(text, parse_float=Decimal, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise bad("The request body is not valid UTF-8.", None, "invalid_json") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; so are huge ints
        raise bad(f"We could not parse the JSON body of your request ({e}). The body must be a JSON object.",
                  None, "invalid_json") from None
    if not isinstance(obj, dict):
        raise bad("The request body must be a JSON object.", None, "invalid_json")
    return obj


# ------------------------------------------------------------------------------ field helpers


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, Decimal):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _int(body: dict, name: str, lo: int, hi: int, default: int | None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{name}' must be an integer, got {_type_name(v)}.", name, "invalid_type")
    if not lo <= v <= hi:
        raise bad(f"'{name}' must be between {lo} and {hi}, got {v}.", name)
    return v


def _milli(body: dict, name: str, lo: int, hi: int, default: int) -> int:
    """A number in [lo/1000, hi/1000] -> integer thousandths (rounded half-even)."""
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, Decimal)):
        raise bad(f"'{name}' must be a number, got {_type_name(v)}.", name, "invalid_type")
    try:
        milli = int((Decimal(v) * 1000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    except InvalidOperation:
        raise bad(f"'{name}' is not a usable number.", name) from None
    if not lo <= milli <= hi:
        raise bad(f"'{name}' must be between {Decimal(lo) / 1000} and {Decimal(hi) / 1000}, got {v}.", name)
    return milli


def _bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be a boolean, got {_type_name(v)}.", name, "invalid_type")
    return v


def _check_params(body: dict, used: set[str], neutral: set[str], ignored: set[str], endpoint: str) -> None:
    for name, value in body.items():
        if name in used or name in ignored:
            continue
        if name in neutral:
            ok, why = _NEUTRAL[name]
            if not ok(value):
                raise bad(f"Unsupported value for '{name}': {why}.", name, "unsupported_value")
            continue
        if name in _ALWAYS_REFUSED:
            if value is not None:
                raise bad(f"'{name}' is not supported by this gateway.", name, "unsupported_parameter")
            continue
        raise bad(f"Unrecognized request argument supplied to {endpoint}: '{name}'.", name, "unknown_parameter")


# ------------------------------------------------------------------------------ common fields


def _model(body: dict, limits: Limits) -> str:
    if "model" not in body or body["model"] is None:
        raise bad("You must provide a model parameter.", "model", "missing_required_parameter")
    m = body["model"]
    if not isinstance(m, str):
        raise bad(f"'model' must be a string, got {_type_name(m)}.", "model", "invalid_type")
    if not m.strip() or len(m) > limits.max_model_len:
        raise bad(f"'model' must be a non-empty string of at most {limits.max_model_len} characters.", "model")
    return m


def _stop(body: dict, limits: Limits) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list):
        raise bad(f"'stop' must be a string or an array of strings, got {_type_name(v)}.", "stop", "invalid_type")
    if len(items) > limits.max_stops:
        raise bad(f"'stop' may hold at most {limits.max_stops} sequences, got {len(items)}.", "stop")
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise bad(f"'stop[{i}]' must be a string, got {_type_name(s)}.", "stop", "invalid_type")
        if not s:
            raise bad("Stop sequences must not be empty.", "stop")
        if len(s) > limits.max_stop_chars:
            raise bad(f"Stop sequences may be at most {limits.max_stop_chars} characters.", "stop")
    return tuple(dict.fromkeys(items))  # drop duplicates, keep order


def _stream(body: dict) -> tuple[bool, bool]:
    stream = _bool(body, "stream", False)
    opts = body.get("stream_options")
    if opts is None:
        return stream, False
    if not stream:
        raise bad("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    if not isinstance(opts, dict):
        raise bad(f"'stream_options' must be an object, got {_type_name(opts)}.", "stream_options", "invalid_type")
    for k in opts:
        if k not in ("include_usage", "include_obfuscation"):
            raise bad(f"Unrecognized stream option: 'stream_options.{k}'.", f"stream_options.{k}", "unknown_parameter")
    include_obfuscation = opts.get("include_obfuscation")
    if include_obfuscation is not None and not isinstance(include_obfuscation, bool):
        raise bad("'stream_options.include_obfuscation' must be a boolean.", "stream_options.include_obfuscation", "invalid_type")
    return stream, _bool(opts, "include_usage", False)


def _sampling(body: dict, limits: Limits, max_tokens: int) -> dict:
    return {
        "max_tokens": max_tokens,
        "temperature_milli": _milli(body, "temperature", 0, limits.max_temperature_milli,
                                    limits.default_temperature_milli),
        "top_p_milli": _milli(body, "top_p", 1, 1000, 1000),
        "seed": _int(body, "seed", 0, limits.max_seed, 0),
    }


def _extension(body: dict, config: GatewayConfig) -> dict:
    """The `meshmarket` request extension: a lower price cap, or a dispute when the seats disagree."""
    ext = body.get("meshmarket")
    if ext is None:
        return {"max_price": config.max_price, "dispute": config.dispute}
    if not isinstance(ext, dict):
        raise bad(f"'meshmarket' must be an object, got {_type_name(ext)}.", "meshmarket", "invalid_type")
    for k in ext:
        if k not in ("max_price", "dispute"):
            raise bad(f"Unrecognized field 'meshmarket.{k}' (known: max_price, dispute).", f"meshmarket.{k}",
                      "unknown_parameter")
    return {"max_price": _int(ext, "max_price", 1, config.max_price, config.max_price),
            "dispute": _bool(ext, "dispute", config.dispute)}


def _common(body: dict, config: GatewayConfig, request_id: str, names: tuple[str, ...]) -> dict:
    """The fields chat and completion share, checked in the order a user reads them."""
    stream, include_usage = _stream(body)
    return {"stop": _stop(body, config.limits), "stream": stream, "include_usage": include_usage,
            "request_id": request_id, "max_seats": config.max_seats, **_extension(body, config),
            **_sampling(body, config.limits, _max_tokens(body, config.limits, names))}


def _max_tokens(body: dict, limits: Limits, names: tuple[str, ...]) -> int:
    given = {n: _int(body, n, 1, limits.max_tokens, None) for n in names}
    values = {v for v in given.values() if v is not None}
    if len(values) > 1:
        raise bad(f"'{names[0]}' and '{names[1]}' disagree; give one of them.", names[0])
    return values.pop() if values else limits.default_max_tokens


def _check_size(size: int, limits: Limits, param: str) -> None:
    if size > limits.max_prompt_bytes:
        raise bad(f"The prompt is {size:,} bytes; this gateway accepts at most {limits.max_prompt_bytes:,} "
                  "bytes of prompt text. Please shorten it.", param, "context_length_exceeded")


# ------------------------------------------------------------------------------ endpoints


_MESSAGE_KEYS = {"role", "content", "name"}
_MESSAGE_NULL_KEYS = {"tool_calls", "function_call", "refusal", "audio", "tool_call_id"}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    where = f"messages[{i}].content"
    if isinstance(c, str):
        text = c
    elif isinstance(c, list):
        parts = []
        for j, p in enumerate(c):
            if not isinstance(p, dict) or "type" not in p:
                raise bad(f"'{where}[{j}]' must be a content part object with a 'type'.", where, "invalid_type")
            if p["type"] != "text":
                raise bad(f"Content parts of type {p['type']!r} are not supported (text only).", where, "unsupported_value")
            if set(p) - {"type", "text"} or not isinstance(p.get("text"), str):
                raise bad(f"'{where}[{j}]' must be {{\"type\": \"text\", \"text\": <string>}}.", where, "invalid_type")
            parts.append(p["text"])
        text = "\n".join(parts)
    elif c is None:
        raise bad(f"'{where}' is required (tool calls are not supported).", where, "missing_required_parameter")
    else:
        raise bad(f"'{where}' must be a string or an array of text parts, got {_type_name(c)}.", where, "invalid_type")
    if not text:
        raise bad(f"'{where}' must not be empty.", where)
    return text


def parse_chat(body: dict, config: GatewayConfig, request_id: str = "") -> CompletionRequest:
    """Validate a POST /v1/chat/completions body."""
    limits = config.limits
    _check_params(body, _CHAT_USED, _CHAT_NEUTRAL, _IGNORED, "/v1/chat/completions")
    model = _model(body, limits)
    msgs = body.get("messages")
    if msgs is None:
        raise bad("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(msgs, list):
        raise bad(f"'messages' must be an array, got {_type_name(msgs)}.", "messages", "invalid_type")
    if not 1 <= len(msgs) <= limits.max_messages:
        raise bad(f"'messages' must hold 1 to {limits.max_messages} messages, got {len(msgs)}.", "messages")
    out, size = [], 0
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"'messages[{i}]' must be an object, got {_type_name(m)}.", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role in ("tool", "function"):
            raise bad(f"'messages[{i}]': {role} messages are not supported (no function calling).",
                      f"messages[{i}].role", "unsupported_value")
        if role not in _ROLES:
            raise bad(f"'messages[{i}].role' must be one of system, developer, user, assistant; got {role!r}.",
                      f"messages[{i}].role")
        for k, v in m.items():
            if k in _MESSAGE_KEYS:
                continue
            if k in _MESSAGE_NULL_KEYS:
                if v not in (None, []):
                    raise bad(f"'messages[{i}].{k}' is not supported.", f"messages[{i}].{k}", "unsupported_parameter")
                continue
            raise bad(f"Unrecognized field 'messages[{i}].{k}'.", f"messages[{i}].{k}", "unknown_parameter")
        if "name" in m and m["name"] is not None and not isinstance(m["name"], str):
            raise bad(f"'messages[{i}].name' must be a string.", f"messages[{i}].name", "invalid_type")
        text = _content(m, i)
        size += len(text.encode("utf-8"))
        out.append((_ROLES[role], text))
    _check_size(size, limits, "messages")
    return CompletionRequest(kind="chat", model=model, messages=tuple(out), prompt=None,
                             **_common(body, config, request_id, ("max_completion_tokens", "max_tokens")))


def parse_completion(body: dict, config: GatewayConfig, request_id: str = "") -> CompletionRequest:
    """Validate a POST /v1/completions body (a raw prompt: no chat template)."""
    limits = config.limits
    _check_params(body, _COMPLETION_USED, _COMPLETION_NEUTRAL, _COMPLETION_IGNORED, "/v1/completions")
    model = _model(body, limits)
    if body.get("prompt") is None:
        raise bad("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    p = body["prompt"]
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, list):
        raise bad("'prompt' must be one string: batches and token arrays are not supported.", "prompt", "unsupported_value")
    if not isinstance(p, str):
        raise bad(f"'prompt' must be a string, got {_type_name(p)}.", "prompt", "invalid_type")
    if not p:
        raise bad("'prompt' must not be empty.", "prompt")
    _check_size(len(p.encode("utf-8")), limits, "prompt")
    return CompletionRequest(kind="completion", model=model, messages=None, prompt=p,
                             **_common(body, config, request_id, ("max_tokens",)))


# ------------------------------------------------------------------------------ responses


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


def usage(c: Completion) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


@dataclass
class ChunkMaker:
    """Builds the chunks of one streamed response (chat.completion.chunk or text_completion)."""

    kind: str
    id: str
    created: int
    model: str
    fingerprint: str
    include_usage: bool

    def _base(self, choices: list, fingerprint: str | None = None) -> dict:
        d = {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
             "created": self.created, "model": self.model, "system_fingerprint": fingerprint or self.fingerprint,
             "choices": choices}
        if self.include_usage:
            d["usage"] = None
        return d

    def _choice(self, text: str | None, finish: str | None, role: bool = False) -> dict:
        if self.kind == "chat":
            delta: dict = {}
            if role:
                delta = {"role": "assistant", "content": "", "refusal": None}
            elif text is not None:
                delta = {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}

    def first(self) -> dict | None:
        """Chat opens with an empty assistant delta (as OpenAI does); completions have none."""
        return self._base([self._choice(None, None, role=True)]) if self.kind == "chat" else None

    def text(self, text: str) -> dict:
        return self._base([self._choice(text, None)])

    def finish(self, reason: str, fingerprint: str, receipt: dict | None) -> dict:
        """The chunk carrying finish_reason; the receipt rides on it unless a usage chunk follows."""
        d = self._base([self._choice(None, reason)], fingerprint)
        if receipt is not None:
            d["meshmarket"] = receipt
        return d

    def usage(self, c: Completion, receipt: dict) -> dict:
        d = self._base([], c.system_fingerprint or self.fingerprint)
        d["usage"] = usage(c)
        d["meshmarket"] = receipt
        return d


def full_response(kind: str, id: str, created: int, model: str, text: str, finish: str, c: Completion,
                  receipt: dict) -> dict:
    """The non-streamed chat.completion / text_completion object."""
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                  "logprobs": None, "finish_reason": finish}
        obj = "chat.completion"
    else:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": id, "object": obj, "created": created, "model": model,
            "system_fingerprint": c.system_fingerprint, "choices": [choice], "usage": usage(c), "meshmarket": receipt}
