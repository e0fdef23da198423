"""Spending guard: a per-request cap and a per-day (UTC) cap, checked before any work.

A request's worst case is known before its job opens (CompletionRequest.max_cost: every seat the
job may grow to, paid in full at the price cap, plus the jury reserve). It is reserved while the
request runs, so concurrent requests cannot together overshoot the daily cap; when the request
ends the reservation is replaced by what it really took (the receipt's `spent`: the escrow minus
the refund, or the whole escrow while the job is not closed). Everything is an integer in base
units.

With a `path`, the day's total is kept in a small JSON file (written atomically), so a restarted
gateway still knows what it spent today.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshmarket.consumer.gateway.backend import GatewayError
from meshmarket.mesh.files import write_json
from meshmarket.mesh.types import format_amount

log = logging.getLogger("meshmarket.gateway")


@dataclass
class Reservation:
    day: dt.date
    amount: int
    settled: bool = False
    spent: int | None = None


class SpendingGuard:
    def __init__(self, request_cap: int | None, daily_cap: int | None, clock: Callable[[], float] = time.time,
                 path: Path | None = None) -> None:
        self.request_cap = request_cap
        self.daily_cap = daily_cap
        self._clock = clock
        self._path = path
        self._day = self._today()
        self._spent = self._load()
        self._reserved = 0

    def _today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc).date()

    def _load(self) -> int:
        if self._path is None or not self._path.exists():
            return 0
        try:
            data = json.loads(self._path.read_text())
            return int(data["spent"]) if data.get("day") == self._day.isoformat() else 0
        except (ValueError, KeyError, TypeError):
            log.warning("gateway: %s is damaged; today's spending starts from 0", self._path)
            return 0

    def _save(self) -> None:
        if self._path is not None:
            try:
                write_json(self._path, {"day": self._day.isoformat(), "spent": self._spent}, mode=0o600)
            except OSError as exc:  # the cap still holds in memory
                log.warning("gateway: cannot record today's spending in %s: %s", self._path, exc)

    def _roll(self) -> None:
        today = self._today()
        if today != self._day:
            self._day, self._spent, self._reserved = today, 0, 0

    def snapshot(self) -> dict:
        """Integers for /api/market: today's spending, what running requests hold, the caps."""
        self._roll()
        return {"day": self._day.isoformat(), "spent_today": self._spent, "reserved": self._reserved,
                "daily_cap": self.daily_cap, "request_cap": self.request_cap}

    def reserve(self, estimate: int, param: str = "max_tokens") -> Reservation:
        """Reserve `estimate`, or raise GatewayError (402 over the request cap, 429 over the day's).
        Synchronous on purpose: no await between the check and the booking."""
        self._roll()
        if self.request_cap is not None and estimate > self.request_cap:
            raise GatewayError(
                402, "insufficient_quota", "request_budget_exceeded",
                f"This request could cost up to {format_amount(estimate)} (max_tokens x max price x every seat a job "
                f"may grow to, plus the jury reserve), over the per-request cap of {format_amount(self.request_cap)}. "
                "Lower max_tokens or meshmarket.max_price, or raise the gateway's request cap.", param, spent=0)
        if self.daily_cap is not None and self._spent + self._reserved + estimate > self.daily_cap:
            left = max(0, self.daily_cap - self._spent - self._reserved)
            raise GatewayError(
                429, "insufficient_quota", "insufficient_quota",
                f"This request could cost up to {format_amount(estimate)}, but only {format_amount(left)} of the "
                f"daily cap of {format_amount(self.daily_cap)} is left today (UTC). Lower max_tokens, wait for "
                "running requests to finish, or wait until tomorrow.", param, spent=0)
        self._reserved += estimate
        return Reservation(self._day, estimate)

    def settle(self, r: Reservation, spent: int) -> None:
        """The request ended: count `spent` instead of the reservation (once)."""
        if r.settled:
            return
        r.settled = True
        r.spent = spent = max(int(spent), 0)
        if r.day == self._day:
            self._reserved -= r.amount
            self._spent += spent
            if spent:
                self._save()
        # a request that straddled midnight counts on the day it started, which has rolled away
