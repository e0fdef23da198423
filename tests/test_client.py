"""The consumer believes nothing it cannot check: hostile providers (real libp2p hosts speaking
the protocol with lies) are caught by `consumer.client` before their answers are used. Protocol v2:
a result carries its tokens, and the signed output hash covers the streamed text and those tokens;
the signature is EIP-712 with domain version "2", by the provider of the request's seat."""

from __future__ import annotations

import trio
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from meshmarket.consumer.client import run_job
from meshmarket.consumer.query import compare
from meshmarket.mesh.errors import ProviderFailed
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.market import RESULT_TYPES, ResultClaim, result_domain
from meshmarket.mesh.p2p import Node
from meshmarket.mesh.protocol import (
    INFER_PROTOCOL,
    ZERO_ADDRESS,
    InferRequest,
    Job,
    ResultFrame,
    Sampling,
    TokenFrame,
    output_hash,
    pack_tokens,
)

PROVIDER, IMPOSTOR, CONSUMER = dev_account(1), dev_account(2), dev_account(5)
CHAIN_ID, MARKET = 31337, "0x" + "11" * 20
SAMPLING = Sampling(messages=(("user", "hi"),), max_tokens=8)
TEXT, TOKENS = "four", [1, 2]


def job_for(provider: str) -> Job:
    """A drawn job whose seat 0 is `provider` and seat 1 the impostor."""
    return Job(consumer=CONSUMER.address, slot=0, model_hash=keccak(b"m"),
               prompt_hash=SAMPLING.prompt_hash(keccak(b"m")), max_tokens=8, price_cap=10, open_block=7,
               drawn_at=1_700_000_000, seed=keccak(b"seed"),
               seats=(provider, IMPOSTOR.address, dev_account(3).address, ZERO_ADDRESS, ZERO_ADDRESS),
               prices=(10, 10, 10, 0, 0))


def _sign_v1(claim: ResultClaim, account) -> bytes:
    """A Result signed under the v1 domain (version "1"): valid once, never for a v2 market."""
    domain = {**result_domain(CHAIN_ID, MARKET), "version": "1"}
    msg = encode_typed_data(domain, RESULT_TYPES, claim._message())
    return bytes(Account.sign_message(msg, account.key).signature)


def hostile(behaviour: str, received: list):
    async def handler(session) -> None:
        req = InferRequest.parse(await session.recv())
        received.append(req)
        streamed, hashed_text, tokens, sent_tokens = TEXT, TEXT, TOKENS, TOKENS
        count, job_id, signer = len(TOKENS), req.job_id, PROVIDER
        if behaviour == "wrong_signer":
            signer = IMPOSTOR
        elif behaviour == "text_mismatch":
            hashed_text = TEXT + " and more"
        elif behaviour == "tokens_mismatch":
            sent_tokens = [1, 3]  # the frame's tokens are not those hashed and signed
        elif behaviour == "count_mismatch":
            count = 3  # signs three tokens, lists two
        elif behaviour == "too_many_tokens":
            tokens = sent_tokens = list(range(1, 10))  # nine tokens, consistently hashed and signed
            count = 9
        elif behaviour == "other_job":
            job_id = keccak(b"another job")  # a real signature, for another job
        out_hash = output_hash(hashed_text, tokens)
        claim = ResultClaim(job_id, out_hash, count).sign(signer, CHAIN_ID, MARKET)
        signature = _sign_v1(claim, PROVIDER) if behaviour == "v1_domain" else claim.signature
        if behaviour == "stall":
            await session.send(TokenFrame(text="fo").to_wire())
            await trio.sleep(5)
            return
        if behaviour == "die":
            await session.send(TokenFrame(text="fo").to_wire())
            raise RuntimeError("killed")  # the node answers with an internal error frame, then closes
        if behaviour == "refuse":
            await session.send({"type": "error", "code": "not_listed", "message": "seat #0 is someone else"})
            return
        if behaviour == "odd_frame":
            await session.send({"type": "advert", "text": "buy now"})
            return
        for piece in ("fo", "ur") if streamed == "four" else (streamed,):
            await session.send(TokenFrame(text=piece).to_wire())
        frame = ResultFrame(output_hash=out_hash, token_count=count, tokens=pack_tokens(sent_tokens),
                            signature=signature).to_wire()
        if behaviour == "bad_tokens_hex":
            frame["tokens"] = "0x0000000"  # not whole uint32s
        await session.send(frame)

    return handler


def attempt(behaviour: str, key=PROVIDER, seat: int = 0, deferred: bool = False, on_token=None):
    """Run one job against a hostile provider; (the answer or the ProviderFailed, the requests it received)."""
    received: list[InferRequest] = []

    async def main():
        async with Node.start(bytes(key.key)) as server, Node.start(bytes(CONSUMER.key)) as client:
            server.serve(INFER_PROTOCOL, hostile(behaviour, received), timeout=5)
            job = job_for(PROVIDER.address)
            req = InferRequest(job.job_id, job, seat, SAMPLING)

            async def later() -> InferRequest:
                return req

            try:
                return await run_job(client, server.peer_id, server.listen_addrs, later if deferred else req,
                                     chain_id=CHAIN_ID, market=MARKET, first_token_timeout=2, token_timeout=0.5,
                                     expected=PROVIDER.address if deferred else None, on_token=on_token)
            except ProviderFailed as exc:
                return exc

    return trio.run(main), received


def failed(behaviour: str, **kw) -> ProviderFailed:
    answer, _ = attempt(behaviour, **kw)
    assert isinstance(answer, ProviderFailed), f"{behaviour}: expected a failure, got {answer}"
    return answer


def test_an_honest_answer_is_accepted():
    pieces: list[str] = []
    a, received = attempt("honest", on_token=pieces.append)
    assert not isinstance(a, ProviderFailed), a
    assert a.text == TEXT and pieces == ["fo", "ur"] and a.tokens == TOKENS and not a.lie
    assert a.result.output_hash == output_hash(TEXT, TOKENS) == a.claim.output_hash
    assert a.claim.job_id == job_for(PROVIDER.address).job_id and a.claim.token_count == len(TOKENS)
    assert a.claim.signer(CHAIN_ID, MARKET) == a.provider == PROVIDER.address
    assert [r.seat for r in received] == [0] and received[0].job == job_for(PROVIDER.address)


def test_text_that_does_not_hash_to_the_signed_result_is_refused():
    assert failed("text_mismatch").code == "bad_result"


def test_tokens_that_do_not_hash_to_the_signed_result_are_refused():
    f = failed("tokens_mismatch")
    assert f.code == "bad_result" and "do not hash" in str(f)


def test_a_token_list_that_does_not_match_the_signed_count_is_refused():
    f = failed("count_mismatch")
    assert f.code == "bad_result" and "lists 2 tokens but signs 3" in str(f)


def test_a_result_signed_by_someone_else_is_refused():
    assert failed("wrong_signer").code == "bad_result"


def test_a_signature_for_another_job_is_refused():
    assert failed("other_job").code == "bad_result"


def test_a_signature_under_the_v1_domain_is_refused():
    assert failed("v1_domain").code == "bad_result"


def test_a_token_count_above_the_job_is_refused():
    """Refused as an answer: never a vote, never shown. A validly signed claim of more tokens than
    the job allows is a provable lie, so the client keeps it (`lie`) for settlement to slash."""
    a, _ = attempt("too_many_tokens")
    assert not isinstance(a, ProviderFailed), a
    assert a.lie and a.result.token_count == 9 > job_for(PROVIDER.address).max_tokens
    assert a.claim.signer(CHAIN_ID, MARKET) == PROVIDER.address  # submittable: the market slashes it
    outcome = compare({0: a})
    assert outcome.kind == "refunded" and outcome.text == "" and outcome.seats == ()


def test_a_malformed_result_frame_is_a_failure():
    assert failed("bad_tokens_hex").code == "bad_frame"


def test_an_unexpected_frame_is_a_failure():
    f = failed("odd_frame")
    assert f.code == "bad_frame" and "advert" in str(f)


def test_a_refusal_carries_the_providers_code():
    f = failed("refuse")
    assert f.code == "not_listed" and f.provider == PROVIDER.address and "seat #0" in str(f)


def test_a_stalling_provider_times_out():
    assert failed("stall").code == "timeout"


def test_a_provider_dying_mid_stream_is_a_failure_not_an_answer():
    assert failed("die").code == "internal"


def test_a_peer_that_is_not_the_listed_provider_is_refused_before_sending():
    # The impostor's node answers at the address, but its peer id is not seat #0's provider's.
    f = failed("honest", key=IMPOSTOR)
    assert f.code in ("wrong_peer", "connect_failed")


def test_a_request_for_another_seat_is_not_sent_to_this_provider():
    # Seat #1 is the impostor's: the provider at seat #0 is never asked to serve it.
    f, received = attempt("honest", seat=1)
    assert isinstance(f, ProviderFailed) and f.code == "wrong_peer" and received == []
    # The same with a request built after the stream opened (run_job's deferred form).
    f, received = attempt("honest", seat=1, deferred=True)
    assert isinstance(f, ProviderFailed) and f.code == "wrong_peer" and received == []
    a, received = attempt("honest", deferred=True)
    assert not isinstance(a, ProviderFailed) and a.text == TEXT and [r.seat for r in received] == [0]
