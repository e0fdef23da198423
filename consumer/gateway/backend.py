"""The contract between the HTTP gateway and what answers its queries.

The gateway (consumer.gateway.app) speaks OpenAI's HTTP API; a `Backend` does the work. The product's
backend is the market (consumer.gateway.dispatch.Dispatcher: draw three seats on-chain, fan out,
compare, settle); tests of pure HTTP behaviour use a fake. Everything here is plain data: no HTTP,
no JSON, no chain.

Money is always an integer in base units of MESH (6 decimals). Temperature and top_p are integers in
thousandths, exactly as on the wire (mesh.protocol.Sampling): no float reaches a hash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from meshmarket.mesh.errors import MeshError

#: The backend calls this for every piece of text it can release, in order, from the gateway's trio
#: loop, without waiting (the gateway queues the piece; a slow client never stalls the market).
OnToken = Callable[[str], None]


@dataclass(frozen=True)
class CompletionRequest:
    """One validated OpenAI request (chat or legacy completion), as the backend sees it.

    Exactly one of `messages` (kind "chat") and `prompt` (kind "completion") is set.
    """

    kind: Literal["chat", "completion"]
    model: str
    #: chat: ((role, content), ...), role in system|user|assistant ("developer" arrives as "system")
    messages: tuple[tuple[str, str], ...] | None
    #: completion: the raw prompt text (no chat template)
    prompt: str | None
    #: upper bound on generated tokens (the request's, or the gateway's default)
    max_tokens: int
    #: sampling temperature in thousandths (0..2000); 0 is greedy
    temperature_milli: int
    #: nucleus sampling in thousandths (1..1000)
    top_p_milli: int
    #: sampling seed (0..2^32-2, as on the wire); 0 when the request gives none
    seed: int
    #: up to 4 non-empty stop strings: the providers stop before them (and are paid only so far)
    stop: tuple[str, ...]
    stream: bool
    #: stream_options.include_usage (only meaningful when `stream`)
    include_usage: bool
    #: highest price per token (base units) this request accepts from a seat: the gateway's
    #: setting, or lower if the request asks (the `meshmarket.max_price` extension)
    max_price: int
    #: dispute the job if its seats disagree (the `meshmarket.dispute` extension, or the setting)
    dispute: bool = False
    #: the gateway's request id (x-request-id), for logs and receipts
    request_id: str = ""
    #: seats the job may grow to (three drawn, up to two added when seats fail)
    max_seats: int = 5

    @property
    def prompt_bytes(self) -> int:
        if self.prompt is not None:
            return len(self.prompt.encode("utf-8"))
        return sum(len(c.encode("utf-8")) for _, c in self.messages or ())

    @property
    def max_cost(self) -> int:
        """The most this request can take from the consumer: every seat it may grow to paid in full
        at the cap, plus the jury reserve (and a dispute's bond when it may dispute)."""
        shares = self.max_seats + 1 + (1 if self.dispute else 0)
        return self.max_tokens * self.max_price * shares


@dataclass(frozen=True)
class Completion:
    """The verified result of one query."""

    #: the verified text (the agreeing seats'); a stream released only a prefix of it
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    #: the receipt as JSON values: job id, outcome, agreement, seats (tokens, pay, slash), refund,
    #: transaction hashes... The gateway reads one key, `spent` (int base units), for the daily cap.
    receipt: dict = field(default_factory=dict)
    #: the build that produced the answer (OpenAI's system_fingerprint), "" when unknown or mixed
    system_fingerprint: str = ""


class GatewayError(MeshError):
    """A refusal or failure the client sees as an OpenAI error (possibly after pieces were streamed).

    ======  =====================  =========================  ======================================
    status  type                   code                       when
    ======  =====================  =========================  ======================================
    400     invalid_request_error  context_length_exceeded    prompt + max_tokens does not fit
    400     invalid_request_error  invalid_value, ...         a malformed request (schema.py)
    401     invalid_request_error  invalid_api_key            missing or wrong API key
    402     insufficient_quota     request_budget_exceeded    over the per-request cap
    402     insufficient_quota     insufficient_funds         not enough MESH or allowance
    404     invalid_request_error  model_not_found            no such model on the market
    429     insufficient_quota     insufficient_quota         the daily cap would be exceeded
    429     rate_limit_exceeded    too_many_open_jobs         the account's job slots are all open
    502     provider_error         providers_failed           no verified answer (seats failed)
    502     provider_error         no_agreement               the seats disagree, no majority
    502     provider_error         stream_outvoted            what was streamed is not what was verified
    502     provider_error         chain_refused, ...         the contracts refused the job
    503     market_unavailable     too_few_providers, ...     the market cannot draw a job now
    503     market_unavailable     chain_unavailable          the chain node does not answer
    ======  =====================  =========================  ======================================

    A query's own errors (MeshError codes) are mapped in one table, consumer.gateway.dispatch.ERRORS.

    Keyword-only extras:

    - `spent`: base units this failed request took (None: unknown; the gateway then books nothing
      for a 4xx before any token and the whole estimate otherwise).
    - `retryable`: tell HTTP clients they may retry (`x-should-retry`). False by default: the
      official client otherwise retries 429 and 5xx by itself, and a paid request must not be
      repeated behind the user's back.
    - `receipt`: what is known about the job (its id to follow it, the seats), sent as the
      error's `meshmarket` field.
    """

    def __init__(self, status: int, type: str, code: str | None, message: str, param: str | None = None,
                 *, spent: int | None = None, retryable: bool = False, receipt: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.param = param
        self.spent = spent
        self.retryable = retryable
        self.receipt = receipt

    def body(self) -> dict:
        """The OpenAI error object: {"error": {"message", "type", "param", "code"[, "meshmarket"]}}."""
        err: dict = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.receipt is not None:
            err["meshmarket"] = self.receipt
        return {"error": err}

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.type!r}, {self.code!r}, {self.message!r}, {self.param!r})"


@runtime_checkable
class Backend(Protocol):
    """What the gateway needs from the market. Every method runs in the gateway's trio loop."""

    async def models(self) -> list[dict]:
        """Models on offer: [{"id": "smollm2-135m-instruct-q4_1", "model_hash": "0x…", ...}]. `id`
        is required; the other keys reach clients under the model's `meshmarket` field; an
        optional `system_fingerprint` is used on streamed chunks before the receipt is known."""
        ...

    async def complete(self, req: CompletionRequest, on_token: OnToken) -> Completion:
        """Run one query. Call `on_token(piece)` for each piece of text that is final; return the
        verified result, or raise GatewayError (before or after pieces were released)."""
        ...

    async def job(self, job_id: str) -> dict:
        """A job's state on-chain now (a contested receipt's job after its jury), or GatewayError 404."""
        ...

    async def market(self) -> dict:
        """A snapshot for the explorer page (polled every ~2 s: keep it cheap). Amounts are integers
        in base units, times unix seconds:

        {"models": [...], "providers": [{"address", "model", "price", "stake", "reputation",
         "build", "last_seen", "first_token_ms", "slashed", "jobs"}],
         "jobs": [{"id", "time", "model", "outcome", "agreement", "tokens", "paid", "slashed",
         "refund", "local"}], "series": {"jobs_per_minute": [{"t", "jobs", "slashed"}]}, "time"}

        The gateway adds "gateway": {spent_today, reserved, daily_cap, request_cap, max_price,
        poll_ms, time} and turns integers beyond 2^53-1 into decimal strings (for browsers)."""
        ...
