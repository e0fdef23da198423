"""The gateway's settings (`mesh serve` flags and environment): one dataclass whose every default
says why. Amounts are integers in base units of MESH."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshmarket.mesh.protocol import (MAX_MESSAGES, MAX_PROMPT_BYTES, MAX_SEED, MAX_STOP_CHARS, MAX_STOPS,
                           MAX_TEMPERATURE_MILLI, MAX_TOKENS, SEATS)


@dataclass(frozen=True)
class Limits:
    """Request limits: the wire's (mesh.protocol), so a request the gateway accepts is one every
    provider accepts; plus the gateway's own defaults."""

    max_messages: int = MAX_MESSAGES
    max_tokens: int = MAX_TOKENS
    max_prompt_bytes: int = MAX_PROMPT_BYTES
    max_stops: int = MAX_STOPS
    max_stop_chars: int = MAX_STOP_CHARS
    max_seed: int = MAX_SEED
    max_temperature_milli: int = MAX_TEMPERATURE_MILLI
    #: OpenAI's default is "as many as fit"; a market job needs a known size (it sets the escrow).
    default_max_tokens: int = 256
    #: Greedy: three seats must produce the same bytes, and OpenAI's 1.0 gives a sampled answer
    #: that a seat with another build would not reproduce.
    default_temperature_milli: int = 0
    max_model_len: int = 256


@dataclass(frozen=True)
class GatewayConfig:
    """What `mesh serve` is told. Every amount is an integer of base units."""

    #: The most a request pays a seat per output token (the job's price cap). 100 base units is what
    #: `mesh ask` uses; a request may ask for less (`meshmarket.max_price`), never more.
    max_price: int = 100
    #: Refuse a request that could cost more than this (402). None: no per-request cap.
    request_cap: int | None = None
    #: Refuse a request that could take the day's (UTC) spending over this (429). None: no cap.
    daily_cap: int | None = None
    #: When set, every request must carry it (Bearer, or Basic with any user for the explorer).
    #: Required for a non-loopback bind: the gateway spends its account's tokens.
    api_key: str | None = None
    #: Request bodies over this are refused (413) before they are read.
    max_body_bytes: int = 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    #: Seats a job may grow to when seats fail (the contract's maximum, five).
    max_seats: int = SEATS
    #: Dispute a contested job by default (a jury judges every seat; costs a bond when nothing
    #: changes). Off, as in `mesh ask`: a request may ask for it (`meshmarket.dispute`).
    dispute: bool = False
    #: How often the explorer page polls /api/market (ms).
    explorer_poll_ms: int = 2000
    #: How long a model list stays good for the fingerprint of streamed chunks (s).
    models_ttl: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.max_price, bool) or not isinstance(self.max_price, int) or self.max_price < 1:
            raise ValueError("max_price must be a positive integer (base units per token)")
        for name in ("request_cap", "daily_cap"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name} must be a non-negative integer of base units, or None")
        if self.api_key is not None and len(self.api_key) < 16:
            raise ValueError("an API key must have at least 16 characters")
        if not 3 <= self.max_seats <= SEATS:
            raise ValueError(f"max_seats must be between 3 and {SEATS}")
