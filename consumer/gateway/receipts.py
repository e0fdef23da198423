"""From a query's Receipt (consumer.receipt) to what an OpenAI client gets: the answer, `usage`, a
finish reason, the verification receipt in the `meshmarket` field, and which outcomes are answers
at all. Pure functions: no chain, no network.

When is an answer an answer? When at least two seats signed the same result:

    agreed                      200 (paid at once)
    contested, k >= 2 of n      200: a majority signed it; the dissenters are unpaid unless a jury
                                says otherwise (the receipt says which, `GET /v1/meshmarket/jobs/{id}`
                                follows it)
    pending, k >= 2             200: a seat is missing, the job settles after its claim window
    anything else               502: no verified answer (`providers_failed`, `no_agreement`)
"""

from __future__ import annotations

import math
from collections import Counter

from meshmarket.consumer.gateway.backend import Completion, CompletionRequest, GatewayError
from meshmarket.consumer.receipt import Receipt

#: Bytes of UTF-8 per token, for estimates before a job (the context check) and for usage when no
#: seat reported its count: English text with a BPE vocabulary of ~50k averages ~4 (SmolLM2: 4.2);
#: code and other scripts less.
BYTES_PER_TOKEN = 4
#: The chat template's tokens around each message (role markers, separators).
TEMPLATE_TOKENS_PER_MESSAGE = 4


def estimate_prompt_tokens(req: CompletionRequest) -> int:
    messages = len(req.messages) if req.messages is not None else 0
    return math.ceil(req.prompt_bytes / BYTES_PER_TOKEN) + TEMPLATE_TOKENS_PER_MESSAGE * messages + 1


def agreeing(receipt: Receipt) -> int:
    """k of the receipt's "k/n" agreement."""
    head = receipt.agreement.split("/", 1)[0]
    return int(head) if head.isdigit() else 0


def completion_tokens(receipt: Receipt) -> int:
    """The token count the answer's seats signed (what each of them is paid for): the paid or
    provisionally paid seats', else the most common count among the seats that delivered."""
    backing = [s.tokens for s in receipt.slots if s.agreed or s.status.startswith("paid unless")]
    counts = Counter(backing or [s.tokens for s in receipt.slots if s.tokens > 0])
    return counts.most_common(1)[0][0] if counts else 0


def spent_of(receipt: Receipt) -> int:
    """What the job took from the consumer: the escrow minus the refund once closed; the whole
    escrow while it is not (a contest or a missing seat may still pay up to it)."""
    return receipt.escrow - receipt.refund if receipt.settled else receipt.escrow


def finish_reason(receipt: Receipt, tokens: int, max_tokens: int) -> str:
    """The answering seat's own (its signed result's frame), else from the token count."""
    if receipt.finish_reason in ("stop", "length"):
        return receipt.finish_reason
    return "length" if tokens >= max_tokens else "stop"


def receipt_json(receipt: Receipt, *, model: str, txs: dict, stream_mode: str | None) -> dict:
    """The `meshmarket` field: the receipt without the text (it is the message), plus the model,
    the transactions, what was spent, and how the gateway streamed and counted."""
    d = receipt.as_dict()
    d.pop("text", None)
    d.update(model=model, tx=txs, spent=spent_of(receipt), verified=receipt.outcome == "agreed")
    d["gateway"] = {"stream": stream_mode, "prompt_tokens": "providers" if receipt.prompt_tokens > 0 else "estimate"}
    return d


def outcome_error(receipt: Receipt, meshmarket: dict) -> GatewayError | None:
    """None when the receipt carries an answer two seats signed; else the error to send."""
    k = agreeing(receipt)
    if receipt.outcome == "agreed" or (receipt.outcome in ("contested", "pending") and k >= 2):
        return None
    job = meshmarket["job_id"]
    if receipt.outcome == "contested":
        return GatewayError(502, "provider_error", "no_agreement",
                            f"The seats of job {job} disagree and no two signed the same answer; nobody is paid "
                            "unless a jury decides (see meshmarket.providers). Ask again: other seats are drawn.",
                            None, spent=meshmarket["spent"], receipt=meshmarket)
    if receipt.outcome == "refunded":
        why = "no seat returned a valid result; the escrow was refunded"
    else:
        why = f"only {k} seat(s) answered; the job settles after the seats' claim window and the gateway moves it on"
    return GatewayError(502, "provider_error", "providers_failed",
                        f"No verified answer for job {job}: {why}. Statuses: "
                        + "; ".join(f"#{s.index} {s.status or 'no result'}" for s in receipt.slots) + ".",
                        None, spent=meshmarket["spent"], receipt=meshmarket)


def to_completion(receipt: Receipt, req: CompletionRequest, meshmarket: dict) -> Completion:
    tokens = completion_tokens(receipt)
    prompt_tokens = receipt.prompt_tokens if receipt.prompt_tokens > 0 else estimate_prompt_tokens(req)
    return Completion(text=receipt.text, finish_reason=finish_reason(receipt, tokens, req.max_tokens),  # type: ignore[arg-type]
                      prompt_tokens=prompt_tokens, completion_tokens=tokens, receipt=meshmarket,
                      system_fingerprint=receipt.system_fingerprint)
