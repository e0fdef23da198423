"""Typed names for the values that cross module and wire boundaries (after web3/types.py)."""

from __future__ import annotations

from typing import NewType

#: A job id: keccak256(abi.encode(consumer, salt)), 32 bytes.
JobId = NewType("JobId", bytes)
#: An amount of MESH in base units (6 decimals). Money is always an int, never a float.
TokenAmount = NewType("TokenAmount", int)

TOKEN_DECIMALS = 6
TOKEN_SYMBOL = "MESH"


def format_amount(amount: int) -> str:
    """Base units -> '12.345678 MESH', exactly (integer arithmetic, no float rounding)."""
    if not isinstance(amount, int):
        raise TypeError("token amounts are integers (base units)")
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**TOKEN_DECIMALS)
    return f"{sign}{whole:,}.{frac:0{TOKEN_DECIMALS}d} {TOKEN_SYMBOL}"


def parse_amount(text: str) -> int:
    """'1.5' or '1.5 MESH' -> 1500000 base units; '1500000u' -> 1500000. Refuses more than 6 decimals."""
    t = text.strip().removesuffix(TOKEN_SYMBOL).strip().replace(",", "").replace("_", "")
    if t.endswith("u"):
        digits = t[:-1]
        if not digits.isdigit():
            raise ValueError(f"{text!r} is not a whole number of base units")
        return int(digits)
    if t.count(".") > 1 or not t.replace(".", "").isdigit():
        raise ValueError(f"{text!r} is not an amount: write e.g. 12.5 (MESH) or 12500000u (base units)")
    whole, _, frac = t.partition(".")
    if len(frac) > TOKEN_DECIMALS:
        raise ValueError(f"{text!r} has more than {TOKEN_DECIMALS} decimals")
    return int(whole or "0") * 10**TOKEN_DECIMALS + int(frac.ljust(TOKEN_DECIMALS, "0") or "0")


def format_when(at: int, now: int) -> str:
    """A chain time as people read it: 'in 9 min 58 s (16:55:02 UTC)', or '... ago'."""
    import datetime

    delta = at - now
    span = abs(delta)
    parts = [f"{span // 86400} d" if span >= 86400 else "", f"{span % 86400 // 3600} h" if span >= 3600 else "",
             f"{span % 3600 // 60} min" if span >= 60 else "", f"{span % 60} s"]
    text = " ".join(x for x in parts if x)
    clock = datetime.datetime.fromtimestamp(at, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"in {text} ({clock})" if delta >= 0 else f"{text} ago ({clock})"


#: Prices are base units per output token. With 6 decimals that same number is the price in MESH per
#: million tokens (1 MESH per 1M tokens = 1 base unit per token), the unit people know from hosted
#: APIs ("$0.15 per 1M tokens"), so a price is written and printed in it: `10` is 10 MESH/1M tokens.
PRICE_UNIT = f"{TOKEN_SYMBOL}/1M tokens"

_PRICE_FORMS = "write e.g. 10 (MESH per 1M tokens, = 10 base units per token), 10u, or 0.00001/token"


def format_price(units_per_token: int) -> str:
    """Base units per token -> '10 MESH/1M tokens' (the same number: see PRICE_UNIT)."""
    if not isinstance(units_per_token, int):
        raise TypeError("prices are integers (base units per token)")
    return f"{units_per_token:,} {PRICE_UNIT}"


def parse_price(text: str) -> int:
    """A price per output token -> base units per token. '10' or '10 MESH/1M tokens' (what
    format_price prints) -> 10; '10u' -> 10; '0.00001/token' (MESH per token) -> 10. A price is a
    whole number of base units per token: '2.5' (MESH/1M tokens) is refused, not rounded."""
    t = " ".join(text.strip().split())
    low = t.lower()
    for suffix in ("/token", " per token"):
        if low.endswith(suffix):
            try:
                return parse_amount(t[: -len(suffix)])
            except ValueError as exc:
                raise ValueError(f"{text!r} is not a price per token ({exc}): {_PRICE_FORMS}") from None
    for suffix in (PRICE_UNIT.lower(), f"{TOKEN_SYMBOL.lower()}/1m", "/1m tokens", "/1m"):
        if low.endswith(suffix):
            t = t[: -len(suffix)].strip()
            break
    t = t.replace(",", "").replace("_", "")
    if t.endswith("u"):
        if not t[:-1].isdigit():
            raise ValueError(f"{text!r} is not a whole number of base units per token")
        return int(t[:-1])
    whole, dot, frac = t.partition(".")
    if not (whole or frac) or not (whole or "0").isdigit() or (dot and not (frac or "0").isdigit()):
        raise ValueError(f"{text!r} is not a price: {_PRICE_FORMS}")
    if frac.strip("0"):
        raise ValueError(f"{text!r} {PRICE_UNIT} is not a whole number of base units per token "
                         f"(1 {PRICE_UNIT} = 1 base unit per token): round it")
    return int(whole or "0")
