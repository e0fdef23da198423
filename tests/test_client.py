"""The consumer believes nothing it cannot check: hostile providers (real libp2p hosts speaking
the protocol with lies) are caught by `consumer.client` before their answers are used."""

from __future__ import annotations

import trio
from eth_utils import keccak

from consumer.client import run_job
from mesh.errors import ProviderFailed
from mesh.keys import dev_account
from mesh.market import ResultClaim
from mesh.p2p import Node
from mesh.protocol import INFER_PROTOCOL, InferRequest, Job, ResultFrame, Sampling, TokenFrame

PROVIDER, IMPOSTOR, CONSUMER = dev_account(1), dev_account(2), dev_account(5)
CHAIN_ID, MARKET = 31337, "0x" + "11" * 20
SAMPLING = Sampling(messages=(("user", "hi"),), max_tokens=8)


def job_for(provider: str) -> tuple[bytes, Job]:
    job = Job(consumer=CONSUMER.address, model_hash=keccak(b"m"), prompt_hash=SAMPLING.prompt_hash(keccak(b"m")),
              max_tokens=8, price_cap=10, opened_at=1, providers=(provider, IMPOSTOR.address, dev_account(3).address),
              prices=(10, 10, 10))
    return keccak(b"job"), job


def hostile(behaviour: str):
    async def handler(session) -> None:
        req = InferRequest.parse(await session.recv())
        text = "four"
        signer = IMPOSTOR if behaviour == "wrong_signer" else PROVIDER
        claimed = text + " and more" if behaviour == "text_mismatch" else text
        count = 9 if behaviour == "too_many_tokens" else 2
        claim = ResultClaim(req.job_id, keccak(claimed.encode()), count).sign(signer, CHAIN_ID, MARKET)
        if behaviour == "stall":
            await session.send(TokenFrame(text="fo").to_wire())
            await trio.sleep(5)
            return
        if behaviour == "die":
            await session.send(TokenFrame(text="fo").to_wire())
            raise RuntimeError("killed")  # the node answers with an internal error frame, then closes
        await session.send(TokenFrame(text=text).to_wire())
        await session.send(ResultFrame(output_hash=keccak(claimed.encode()), token_count=count,
                                       signature=claim.signature).to_wire())

    return handler


def attempt(behaviour: str, key=PROVIDER) -> ProviderFailed | object:
    async def main():
        async with Node.start(bytes(key.key)) as server, Node.start(bytes(CONSUMER.key)) as client:
            server.serve(INFER_PROTOCOL, hostile(behaviour), timeout=5)
            job_id, job = job_for(PROVIDER.address)
            try:
                return await run_job(client, server.peer_id, server.listen_addrs, InferRequest(job_id, job, 0, SAMPLING),
                                     chain_id=CHAIN_ID, market=MARKET, first_token_timeout=2, token_timeout=0.5)
            except ProviderFailed as exc:
                return exc

    return trio.run(main)


def test_an_honest_answer_is_accepted():
    a = attempt("honest")
    assert not isinstance(a, ProviderFailed) and a.text == "four" and a.claim.signer(CHAIN_ID, MARKET) == PROVIDER.address


def test_text_that_does_not_hash_to_the_signed_result_is_refused():
    assert attempt("text_mismatch").code == "bad_result"


def test_a_result_signed_by_someone_else_is_refused():
    assert attempt("wrong_signer").code == "bad_result"


def test_a_token_count_above_the_job_is_refused():
    assert attempt("too_many_tokens").code == "bad_result"


def test_a_stalling_provider_times_out():
    assert attempt("stall").code == "timeout"


def test_a_provider_dying_mid_stream_is_a_failure_not_an_answer():
    assert attempt("die").code == "internal"


def test_a_peer_that_is_not_the_listed_provider_is_refused_before_sending():
    # The impostor's node answers at the address, but its peer id is not provider #0's.
    a = attempt("honest", key=IMPOSTOR)
    assert isinstance(a, ProviderFailed) and a.code in ("wrong_peer", "connect_failed")
