"""What the CLI says about an error: the library's sentence, then what to do, in the words of this
CLI's commands and flags. One table, by MeshError.code (mesh/errors.py); a code not in it keeps the
library's own hint. The root group (cli/main.py) prints `sentence(exc)` and exits with 1.

The library's messages never name a command or a flag: the same errors reach the HTTP gateway's
clients, who have neither.
"""

from __future__ import annotations

from collections.abc import Callable

from meshmarket.mesh.errors import MeshError
from meshmarket.mesh.types import format_when


def _escrow_note(exc: MeshError) -> str:
    """What became of a refused query's job: drawn (its escrow returns when it settles) or only
    opened (nothing was escrowed)."""
    job_id: bytes = getattr(exc, "job_id", b"")
    if not job_id:
        return ""
    deadline = getattr(exc, "deadline", None)
    if deadline is None:
        return f"; job 0x{job_id.hex()} was opened but not drawn: nothing was escrowed, and it expires by itself"
    when = format_when(deadline, exc.now)  # type: ignore[attr-defined]
    return (f"; the escrow of job 0x{job_id.hex()} returns to your credit when it settles without results "
            f"({when}: `mesh settle`)")


#: MeshError.code -> what to do (a sentence, or a function of the error for one that needs its data).
HINTS: dict[str, str | Callable[[MeshError], str]] = {
    "context_overflow": lambda e: "shorten the prompt or lower --max-tokens" + _escrow_note(e),
    "request_refused": lambda e: "change the request" + _escrow_note(e),
    "too_few_providers": "wait for more providers, or choose another model or group (`mesh models`)",
    "price_cap_too_low": lambda e: f"raise --max-price to at least {e.needed_price}",  # type: ignore[attr-defined]
    "not_enough_stake": "ask for fewer --max-tokens, or retry later",
    "pool_cannot_seat_jury": "ask a larger pool (another --group, or the open market), or pass --min-pool 0 if you "
                             "trust every provider of this pool",
    "job_slots_full": "settle your open jobs first (`mesh settle`)",
    "api_key_required": "set an API key ($MESH_GATEWAY_KEY or --api-key-file; every request must then carry it), "
                        "or bind to 127.0.0.1",
}


def hint(exc: MeshError) -> str | None:
    """What to do about `exc`, as this CLI says it."""
    said = HINTS.get(exc.code)
    if said is None:
        return exc.hint
    return said(exc) if callable(said) else said


def sentence(exc: MeshError) -> str:
    """One line for the user: what went wrong — what to do."""
    advice = hint(exc)
    return f"{exc.message} — {advice}" if advice else exc.message
