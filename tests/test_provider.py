"""The provider node, for real (protocol v2: the contract draws each job's seats; a request names its
seat; a result carries its tokens; every served job is kept as a claim).

Middle tier (in this process, tests/harness.py): the real provider service on real libp2p hosts,
the real llama.cpp engine and the session's Anvil (reverted around each test). Every refusal is
exercised and none of them costs a compute; what a served job leaves behind (the result frame's
tokens, the claim kept for a jury, served-once across a restart) is checked against the engine.

End-to-end tier (`meshnet`: provider processes started through the CLI): a paid job served
identically by the three seats the contract drew and settled, a restart that remembers what was
served, the manifest against the chain, and the provider commands.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import trio
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings, strategies as st

from meshmarket.consumer.client import fetch_manifest, run_job
from meshmarket.mesh.errors import ProviderFailed
from meshmarket.mesh.keys import dev_account
from meshmarket.mesh.market import OUTCOME_AGREED
from meshmarket.mesh.p2p import Node
from meshmarket.mesh.protocol import (
    INFER_PROTOCOL,
    PROTOCOL_VERSION,
    ZERO_ADDRESS,
    InferRequest,
    Sampling,
    StopScanner,
    canonical_json,
    output_hash,
    unpack_tokens,
)
from meshmarket.mesh.types import format_amount
from meshmarket.provider.claims import Claim, ClaimKeeper
from meshmarket.provider.engine import build_of
from meshmarket.provider.node import ServedJobs
from tests.harness import PRICE, ask, first_frame, providers

CONSUMER = dev_account(5)
OTHER_CONSUMER = dev_account(6)
QUESTION = (("user", "Name three colours."),)


def sampling(max_tokens=16, seed=0, question=QUESTION, temperature_milli=0, stop=()) -> Sampling:
    return Sampling(messages=question, max_tokens=max_tokens, seed=seed, temperature_milli=temperature_milli,
                    stop=stop)


def _refused(answer, code):
    if isinstance(answer, dict):  # a raw frame
        assert answer.get("type") == "error", f"expected refusal {code}, got {answer}"
        assert answer["code"] == code, f"expected {code}, got {answer}"
        return answer["message"]
    assert isinstance(answer, ProviderFailed), f"expected refusal {code}, got an answer"
    assert answer.code == code, f"expected {code}, got {answer.code}: {answer}"
    return str(answer)


def _answered(answer):
    assert not isinstance(answer, Exception), f"expected an answer, got {answer!r}"
    assert answer.result.token_count > 0 and answer.text
    return answer


def refusals(served, engine, tmp_path, reqs: list[InferRequest], provider: int = 1, consumer=CONSUMER) -> list[dict]:
    """The first frame provider dev:`provider` answers to each request, and proof that it computed
    nothing and kept no claim."""
    with providers(served, engine, tmp_path, (provider,), consumer=consumer) as run:
        async def body(node, ps):
            frames = [await first_frame(node, ps[provider], req.to_wire()) for req in reqs]
            assert ps[provider].log == [], "a refused request must not be computed"
            assert ps[provider].claims.pending() == [], "a refused request leaves no claim"
            return frames

        return run(body)


def refusal(served, engine, tmp_path, req: InferRequest, provider: int = 1, consumer=CONSUMER) -> dict:
    return refusals(served, engine, tmp_path, [req], provider, consumer)[0]


# ------------------------------------------------------------------------------ middle tier: refusals


def test_unpaid_job_refused_without_compute(served, engine, tmp_path):
    s = sampling()
    _, job = served.open(s)
    never = job.model_copy(update={"open_block": job.open_block + 1})  # no such job was ever opened
    frame = refusal(served, engine, tmp_path, served.request(never, 1, s))
    assert "open and draw it" in _refused(frame, "unpaid")


def test_a_request_whose_job_id_is_not_its_jobs_refused(served, engine, tmp_path):
    """A seat signs Result(job_id, ...): a request carrying one open job but another job's id (so that
    the answer would be signed as the other job's) is malformed, refused before any check or compute."""
    s = sampling()
    _, job = served.open(s)
    _, other = served.open(s)
    assert other.job_id != job.job_id and other.seat_of(dev_account(1).address) is not None
    wire = {**served.request(job, 1, s).to_wire(), "job_id": "0x" + other.job_id.hex()}
    with providers(served, engine, tmp_path, (1,)) as run:
        async def body(node, ps):
            frame = await first_frame(node, ps[1], wire)
            return frame, ps[1].log, ps[1].claims.pending()

        frame, computed, kept = run(body)
    assert "job_id is not the job's id" in _refused(frame, "bad_request")
    assert computed == [] and kept == []


def test_settled_job_refused(served, engine, tmp_path):
    """Three in-process seats answer identically, the job settles as agreed and pays each of them;
    then the settled job is refused."""
    s = sampling(max_tokens=8)
    job_id, job = served.open(s)
    assert job_id == job.job_id  # the id the market emitted is the one the protocol computes
    owed0 = {i: served.mc.account(dev_account(i).address)["owed"] for i in (1, 2, 3)}
    with providers(served, engine, tmp_path, (1, 2, 3)) as run:
        async def body(node, ps):
            answers = {i: _answered(await ask(node, served, ps[i], served.request(job, i, s))) for i in (1, 2, 3)}
            claims = [answers[i].claim for i in sorted(answers, key=lambda i: job.seat_of(dev_account(i).address))]
            receipt = await trio.to_thread.run_sync(lambda: served.mc.settle(CONSUMER, job, claims))
            return answers, receipt, await first_frame(node, ps[1], served.request(job, 1, s).to_wire())

        answers, receipt, frame = run(body)
    assert len({(a.text, a.result.tokens, a.result.output_hash) for a in answers.values()}) == 1
    n = answers[1].result.token_count
    ev = served.mc.settled_event(receipt)
    assert ev["outcome"] == OUTCOME_AGREED and list(ev["paid"])[:3] == [n * PRICE] * 3
    assert ev["refund"] == job.held - 3 * n * PRICE
    assert {i: served.mc.account(dev_account(i).address)["owed"] - owed0[i] for i in (1, 2, 3)} == \
        {i: n * PRICE for i in (1, 2, 3)}
    assert "settled" in _refused(frame, "unpaid")


def test_foreign_job_refused(served, engine, tmp_path):
    """A job whose seats are other providers is refused by a provider it does not seat."""
    s = sampling()
    job_id, job = served.open(s, pool=(1, 2, 3))
    assert job.seat_of(dev_account(4).address) is None
    frames = refusals(served, engine, tmp_path, [InferRequest(job_id, job, seat, s) for seat in range(5)], provider=4)
    for frame in frames:
        _refused(frame, "not_listed")


def test_a_request_for_another_providers_seat_refused(served, engine, tmp_path):
    """dev:1 holds one seat of the job: asked for any other seat (another provider's, or an empty
    one) it refuses, so one provider can never be paid for two seats."""
    s = sampling()
    job_id, job = served.open(s)
    mine = job.seat_of(dev_account(1).address)
    others = [seat for seat in range(5) if seat != mine]
    assert [job.seats[seat] == ZERO_ADDRESS for seat in others].count(True) == 2
    frames = refusals(served, engine, tmp_path, [InferRequest(job_id, job, seat, s) for seat in others])
    for seat, frame in zip(others, frames):
        assert f"seat #{seat}" in _refused(frame, "not_listed")


def test_request_by_someone_else_than_the_consumer_refused(served, engine, tmp_path):
    s = sampling()
    _, job = served.open(s)
    frame = refusal(served, engine, tmp_path, served.request(job, 1, s), consumer=OTHER_CONSUMER)
    _refused(frame, "wrong_consumer")


def test_prompt_not_matching_the_job_refused(served, engine, tmp_path):
    s = sampling(stop=("\n\n",))
    _, job = served.open(s)
    other = sampling(question=(("user", "Something else entirely"),), stop=("\n\n",))
    no_stop = sampling()  # the same messages without the stop string the job hashed
    other_stop = sampling(stop=("\n",))
    longer = sampling(max_tokens=17, stop=("\n\n",))  # more tokens than the job pays for
    reqs = [served.request(job, 1, x) for x in (other, no_stop, other_stop, longer)]
    frames = refusals(served, engine, tmp_path, reqs)
    for frame in frames[:3]:
        assert "promptHash" in _refused(frame, "mismatch")
    assert "max_tokens 17 differs from the job's 16" in _refused(frames[3], "mismatch")


def test_tampered_job_refused(served, engine, tmp_path):
    """A job edited on the wire (its hash is not the one stored on-chain) is refused, whichever field
    changed: prices, the seats' order, the draw's time (a longer delivery window) or its seed."""
    s = sampling()
    _, job = served.open(s)
    seat = job.seat_of(dev_account(1).address)
    other = (seat + 1) % 3
    swapped = list(job.seats)
    swapped[seat], swapped[other] = swapped[other], swapped[seat]  # dev:1 moved to another seat
    tampered = [
        job.model_copy(update={"prices": (99, 99, 99, 0, 0)}),
        job.model_copy(update={"seats": tuple(swapped)}),
        job.model_copy(update={"drawn_at": job.drawn_at + 3600}),
        job.model_copy(update={"seed": keccak(b"another seed")}),
        job.model_copy(update={"price_cap": job.price_cap + 1}),
    ]
    reqs = [served.request(t, 1, s) for t in tampered]
    assert reqs[1].seat == other and all(r.job.hash() != job.hash() for r in reqs)
    for frame in refusals(served, engine, tmp_path, reqs):
        _refused(frame, "unpaid")


def test_a_job_not_drawn_yet_refused_then_served_once_drawn(served, engine, tmp_path):
    """Before the draw a job has no seats: the provider holds none of them, and seats the consumer
    writes in itself are not the job on-chain. Once drawn, the same request is served."""
    s = sampling(max_tokens=4)
    job_id, undrawn = served.open_undrawn(s)
    assert undrawn.drawn_at == 0 and undrawn.seat_count == 0
    me = dev_account(1).address
    forged = undrawn.model_copy(update={"seats": (me, dev_account(2).address, dev_account(3).address, ZERO_ADDRESS,
                                                  ZERO_ADDRESS), "prices": (10, 10, 10, 0, 0)})
    forged_drawn = forged.model_copy(update={"drawn_at": served.chain.w3.eth.get_block("latest")["timestamp"]})
    with providers(served, engine, tmp_path, (1,)) as run:
        async def body(node, ps):
            p = ps[1]
            frames = [await first_frame(node, p, InferRequest(job_id, j, 0, s).to_wire())
                      for j in (undrawn, forged, forged_drawn)]
            assert p.log == []
            drawn, _ = await trio.to_thread.run_sync(lambda: served.mc.draw_seats(CONSUMER, undrawn))
            return frames, drawn, await ask(node, served, p, served.request(drawn, 1, s))

        frames, drawn, answer = run(body)
    _refused(frames[0], "not_listed")
    for frame in frames[1:]:
        _refused(frame, "unpaid")
    assert drawn.job_id == job_id and drawn.drawn_at > 0
    assert _answered(answer).claim.job_id == job_id


def test_an_added_seat_is_served_and_the_old_job_refused(served, engine, tmp_path):
    """A seat added after the draw changes the job on-chain: the new seat is served with the current
    job; a request carrying the job as it was before is refused; the current job is served by the
    first seats too, with the same answer."""
    s = sampling(max_tokens=6)
    _, job = served.open(s, pool=(1, 2, 3))
    served.only((1, 2, 3, 4))  # dev:4 stakes again: the only one the added seat can draw
    grown, new, _ = served.mc.add_seat(CONSUMER, job)
    assert new == 3 and grown.seats[3] == dev_account(4).address and grown.seats[:3] == job.seats[:3]
    with providers(served, engine, tmp_path, (1, 4)) as run:
        async def body(node, ps):
            stale = await first_frame(node, ps[1], served.request(job, 1, s).to_wire())
            added = await ask(node, served, ps[4], served.request(grown, 4, s))
            first = await ask(node, served, ps[1], served.request(grown, 1, s))
            return stale, added, first, ps[4].claims.pending()

        stale, added, first, kept = run(body)
    assert "other seats" in _refused(stale, "unpaid")
    assert _answered(added).text == _answered(first).text and added.result.tokens == first.result.tokens
    assert added.claim.signer(served.chain.chain_id, served.chain.market.address) == dev_account(4).address
    assert [(c.seat, c.job) for c in kept] == [(3, grown)]


def test_expired_job_refused(served, engine, tmp_path):
    """Served until the delivery window (counted from the draw) ends; refused from then on."""
    s = sampling(max_tokens=4)
    _, job = served.open(s)
    window = served.chain.deployment.params.delivery_window
    with providers(served, engine, tmp_path, (1, 2)) as run:
        async def body(node, ps):
            now = await trio.to_thread.run_sync(lambda: served.chain.w3.eth.get_block("latest")["timestamp"])
            served.advance(job.drawn_at + window - 30 - now)
            inside = await ask(node, served, ps[1], served.request(job, 1, s))
            served.advance(30)
            late = await first_frame(node, ps[2], served.request(job, 2, s).to_wire())
            return inside, late, ps[2].log

        inside, late, computed = run(body)
    _answered(inside)
    assert "delivery window" in _refused(late, "expired") and computed == []


def test_prompt_over_the_context_refused_before_compute(served, engine, tmp_path):
    long_q = (("user", "word " * 1500),)
    s = sampling(max_tokens=1000, question=long_q)  # ~1,500 prompt tokens + 1,000 > 2,048
    _, job = served.open(s)
    frame = refusal(served, engine, tmp_path, served.request(job, 1, s))
    assert "context window" in _refused(frame, "context_overflow")


# ------------------------------------------------------------------------------ middle tier: serving


def test_replayed_request_refused(served, engine, tmp_path):
    """Each (job, seat) is computed once, and a restarted provider (the same state directory)
    still refuses it and still holds the claim it is owed."""
    s = sampling(max_tokens=8)
    _, job = served.open(s)
    req = served.request(job, 1, s)
    with providers(served, engine, tmp_path, (1,)) as run:
        async def body(node, ps):
            first = await ask(node, served, ps[1], req)
            again = await first_frame(node, ps[1], req.to_wire())
            return first, again, len(ps[1].log)

        first, again, computed = run(body)
    _answered(first)
    _refused(again, "replayed")
    assert computed == 1  # the replay cost nothing

    with providers(served, engine, tmp_path, (1,)) as run:  # the same provider, restarted
        async def body(node, ps):
            return await first_frame(node, ps[1], req.to_wire()), ps[1].log, ps[1].claims.pending()

        after_restart, computed, kept = run(body)
    _refused(after_restart, "replayed")
    assert computed == []
    assert [(c.job_id, c.seat, c.output_hash) for c in kept] == [(job.job_id, req.seat, first.result.output_hash)]


def test_served_once_per_job_and_seat(tmp_path):
    """ServedJobs: the key is (job, seat), written to disk before the compute."""
    path = tmp_path / "served.log"
    served = ServedJobs(path)
    job, other = keccak(b"job"), keccak(b"other job")
    assert served.claim(job, 0) and not served.claim(job, 0)
    assert served.claim(job, 3) and served.claim(other, 0)
    assert path.read_text().splitlines() == [f"0x{job.hex()} 0", f"0x{job.hex()} 3", f"0x{other.hex()} 0"]
    again = ServedJobs(path)
    assert not again.claim(job, 0) and not again.claim(job, 3) and not again.claim(other, 0)
    assert again.claim(other, 1)


def test_the_result_carries_the_engines_tokens(served, engine, tmp_path):
    """The result frame's tokens are the engine's, they number the signed count, and with the
    streamed text they hash to the signed output hash; a jury rebuilds the text from them."""
    s = sampling(max_tokens=12)
    _, job = served.open(s)
    streamed: list[str] = []
    with providers(served, engine, tmp_path, (2,)) as run:
        async def body(node, ps):
            return await ask(node, served, ps[2], served.request(job, 2, s), on_token=streamed.append)

        answer = _answered(run(body))
    local = engine.generate(s).run()
    tokens = unpack_tokens(answer.result.tokens)
    assert tokens == list(local.tokens) and answer.result.token_count == len(tokens) == local.completion_tokens
    assert answer.text == "".join(streamed) == local.text == engine.text_of(tokens)
    assert answer.result.output_hash == output_hash(answer.text, tokens) == local.output_hash
    assert answer.result.finish_reason == ("stop" if local.finish_reason == "stop" else "length")
    assert answer.result.prompt_tokens == engine.count_prompt_tokens(s) == local.prompt_tokens > 0
    assert answer.claim.signer(served.chain.chain_id, served.chain.market.address) == dev_account(2).address


def test_a_stop_string_ends_the_answer_before_it(served, engine, tmp_path):
    """A request's stop strings end the job at the first one: the streamed text stops before it
    (no frame ever carries any of it), the result says "stop", its tokens include the stop
    string's, and `text_of(tokens, stop)` gives back exactly the signed text."""
    reference = engine.generate(sampling(max_tokens=40)).run()
    assert reference.completion_tokens >= 16
    stop = (engine.text_of(reference.tokens[12:15]),)  # three tokens of the answer, from its middle
    s = sampling(max_tokens=40, stop=stop)
    _, job = served.open(s)
    frames: list[dict] = []
    with providers(served, engine, tmp_path, (3,)) as run:
        async def body(node, ps):
            p = ps[3]
            async with node.open_session(p.peer_id, p.addrs, INFER_PROTOCOL) as session:
                await session.send(served.request(job, 3, s).to_wire())
                while not frames or frames[-1]["type"] == "token":
                    frames.append(await session.recv(timeout=30))
            return p.claims.pending()

        (claim,) = run(body)
    result = frames[-1]
    assert [f["type"] for f in frames[:-1]] == ["token"] * (len(frames) - 1) and result["type"] == "result"
    text = "".join(f["text"] for f in frames[:-1])
    tokens = unpack_tokens(bytes.fromhex(result["tokens"][2:]))
    # The frames join to exactly the text before the stop string: none carried any of it.
    assert text == StopScanner.cut(reference.text, stop) == reference.text[:reference.text.find(stop[0])]
    assert all(f["text"] for f in frames[:-1])
    assert result["finish_reason"] == "stop" and result["token_count"] == len(tokens) < 40
    assert tokens == list(reference.tokens[:len(tokens)]) and stop[0] in engine.text_of(tokens)
    assert engine.text_of(tokens, stop) == text
    assert bytes.fromhex(result["output_hash"][2:]) == output_hash(text, tokens) == claim.output_hash
    assert claim.text_hash == keccak(text.encode()) and claim.tokens == bytes.fromhex(result["tokens"][2:])


def test_the_claim_kept_after_serving_is_what_a_jury_needs(served, engine, tmp_path):
    """provider.claims: every served job is kept, durably, with what the provider signed (output hash,
    token count) and what it may have to show a jury (the text's hash, the tokens, the canonical
    request whose keccak256 is the job's promptHash)."""
    s = sampling(max_tokens=8, seed=5, temperature_milli=700)
    _, job = served.open(s)
    req = served.request(job, 2, s)
    with providers(served, engine, tmp_path, (2,)) as run:
        async def body(node, ps):
            return await ask(node, served, ps[2], req), ps[2].claims.pending()

        answer, kept = run(body)
    _answered(answer)
    (claim,) = kept
    assert (claim.job_id, claim.job, claim.seat) == (job.job_id, job, req.seat)
    assert (claim.output_hash, claim.token_count) == (answer.result.output_hash, answer.result.token_count)
    assert claim.tokens == answer.result.tokens and claim.text_hash == keccak(answer.text.encode())
    assert keccak(claim.text_hash + keccak(claim.tokens)) == claim.output_hash  # what postEvidence checks
    assert claim.request == canonical_json(s.request(served.model_hash)) and keccak(claim.request) == job.prompt_hash
    assert json.loads(claim.request)["sampling"] == s.to_wire()
    assert not (claim.committed or claim.revealed or claim.disputed) and len(claim.salt) == 32
    # On disk (money owed survives a crash), and read back whole by a new keeper.
    stored = json.loads((tmp_path / "p2" / "claims.json").read_text())
    assert [Claim.from_dict(d) for d in stored] == [claim]
    reread = ClaimKeeper(served.chain, dev_account(2), path=tmp_path / "p2" / "claims.json").pending()
    assert reread == [claim]


def test_busy_provider_answers_at_once(served, engine, tmp_path):
    long_s = sampling(max_tokens=200, question=(("user", "Tell a long story about a dragon."),))
    _, job1 = served.open(long_s, pool=(1, 2, 3))
    short = sampling(max_tokens=4, seed=7)
    _, job2 = served.open(short, pool=(2, 3, 4))

    with providers(served, engine, tmp_path, (2,)) as run:
        async def body(node, ps):
            p, seen, results = ps[2], [], {}
            started = trio.Event()

            def on_token(t):
                seen.append(t)
                started.set()

            async def long_job():
                results["long"] = await ask(node, served, p, served.request(job1, 2, long_s), on_token=on_token)

            async with trio.open_nursery() as n:
                n.start_soon(long_job)
                await started.wait()
                results["busy"] = await ask(node, served, p, served.request(job2, 2, short))
                results["tokens_when_refused"] = len(seen)
            return results

        results = run(body)
    _refused(results["busy"], "busy")
    long = _answered(results["long"])  # the running job was not disturbed
    # "At once": the refusal came while the long job was still streaming, not after it.
    assert results["tokens_when_refused"] < long.result.token_count


class _Abandon(Exception):
    pass


def test_cancelled_stream_stops_generation_and_node_keeps_serving(served, engine, tmp_path):
    s = sampling(max_tokens=300, question=(("user", "Count from one to one hundred in words."),))
    _, job = served.open(s, pool=(3, 1, 2))
    s2 = sampling(max_tokens=4, seed=3)
    _, job2 = served.open(s2, pool=(3, 1, 2))

    with providers(served, engine, tmp_path, (3,)) as run:
        async def body(node, ps):
            p, seen = ps[3], []
            try:
                async with node.open_session(p.peer_id, p.addrs, INFER_PROTOCOL) as session:
                    await session.send(served.request(job, 3, s).to_wire())
                    while len(seen) < 3:
                        seen.append(await session.recv())
                    raise _Abandon()  # leave abruptly: the stream is reset under the provider
            except _Abandon:
                pass
            assert [f["type"] for f in seen] == ["token"] * 3
            with trio.fail_after(30):  # the provider notices, stops generating and logs it
                while not p.log:
                    await trio.sleep(0.01)
            return p.log[0], await ask(node, served, p, served.request(job2, 3, s2)), p.claims.pending()

        entry, after, kept = run(body)
    assert entry.outcome == "cancelled: consumer went away" and entry.tokens == 0
    _answered(after)
    assert [c.job_id for c in kept] == [job2.job_id]  # nothing signed, nothing claimed for the abandoned job


GARBAGE = st.one_of(
    st.binary(max_size=64),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20), st.none(), st.booleans()),
                    max_size=6).map(lambda d: json.dumps(d).encode()),
    st.just(b'{"type":"infer","version":2}'),
    st.just(b'{"type":"infer","version":1,"job_id":"0x12","job":{},"index":0,"sampling":[]}'),
    st.just(b'{"type":"infer","version":2,"job_id":"0x12","job":{},"seat":7,"sampling":[]}'),
    st.just(json.dumps([1, 2, 3]).encode()),
    st.just(b"[" * 5000),
    st.just(b'{"type":"infer","version":2,"sampling":{"prompt":"\\ud800","max_tokens":1}}'),
    st.just(b'{"type":"infer","version":' + b"9" * 5000 + b"}"),
)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads=st.lists(GARBAGE, min_size=1, max_size=3))
def test_garbage_frames_get_an_error_and_the_node_keeps_serving(served, engine, tmp_path, payloads):
    with providers(served, engine, tmp_path, (4,)) as run:
        async def body(node, ps):
            p = ps[4]
            for payload in payloads:
                async with node.open_session(p.peer_id, p.addrs, INFER_PROTOCOL) as session:
                    # Raw length-prefixed bytes, some of them not JSON at all.
                    await session._stream.write(len(payload).to_bytes(4, "big") + payload)
                    reply = await session.recv()
                    assert reply["type"] == "error" and reply["code"] in {
                        "bad_request", "frame_malformed", "frame_too_large", "too_large"}, reply
                    assert "internal" not in reply["message"]
            assert p.log == []

        run(body)


def test_oversized_frame_refused_and_node_keeps_serving(served, engine, tmp_path):
    s = sampling(max_tokens=4, seed=random.randrange(1000))
    _, job = served.open(s, pool=(4, 1, 2))
    with providers(served, engine, tmp_path, (4,)) as run:
        async def body(node, ps):
            p = ps[4]
            async with node.open_session(p.peer_id, p.addrs, INFER_PROTOCOL) as session:
                await session._stream.write((10 * 2**20).to_bytes(4, "big") + b"{")
                reply = await session.recv()
            return reply, await ask(node, served, p, served.request(job, 4, s))

        reply, after = run(body)
    assert reply["type"] == "error" and reply["code"] == "frame_too_large"
    _answered(after)


# ------------------------------------------------------------------------------ end to end: real processes


def ask_processes(net, job, s: Sampling, seats, consumer):
    """Send the job's requests for `seats` concurrently to the meshnet providers seated there."""

    async def main():
        out = [None] * len(seats)
        async with Node.start(bytes(consumer.key)) as node:
            async def one(k, seat):
                p = seated(net, job, seat)
                try:
                    out[k] = await run_job(node, p.peer_id, p.addrs, InferRequest(job.job_id, job, seat, s),
                                           chain_id=net.chain.chain_id, market=net.chain.market.address)
                except ProviderFailed as exc:
                    out[k] = exc

            async with trio.open_nursery() as n:
                for k, seat in enumerate(seats):
                    n.start_soon(one, k, seat)
        return out

    return trio.run(main)


def seated(net, job, seat):
    """The meshnet provider process the contract drew into `seat`."""
    return next(p for p in net.providers.values() if p.address == job.seats[seat])


def open_job(net, s: Sampling, consumer):
    """Open and draw a job in the open market (whose pool, tests/conftest.py, is OPEN_POOL)."""
    from tests.conftest import OPEN_POOL

    _, job, _ = net.mc.open_job(consumer, net.model_hash, s.prompt_hash(net.model_hash), s.max_tokens, 20,
                                approve=False)
    job, _ = net.mc.draw_seats(consumer, job)
    assert {seated(net, job, seat).index for seat in range(3)} == set(OPEN_POOL) and job.seat_count == 3
    return job


def test_paid_job_served_identically_by_three_processes_and_settled(meshnet):
    net = meshnet
    consumer = net.new_consumer()
    s = sampling(max_tokens=24)
    job = open_job(net, s, consumer)
    owed = [net.mc.account(job.seats[i])["owed"] for i in range(3)]
    answers = ask_processes(net, job, s, range(3), consumer)
    assert all(not isinstance(a, Exception) for a in answers), answers
    assert len({(a.text, a.result.tokens) for a in answers}) == 1 and answers[0].text  # byte-identical
    assert {a.result.output_hash for a in answers} == {output_hash(answers[0].text, answers[0].tokens)}
    assert all(0 < a.result.token_count <= 24 and not a.lie for a in answers)
    assert [a.provider for a in answers] == list(job.seats[:3])
    ev = net.mc.settled_event(net.mc.settle(consumer, job, [a.claim for a in answers]))
    n = answers[0].result.token_count
    assert ev["outcome"] == OUTCOME_AGREED and list(ev["paid"])[:3] == [n * 10] * 3
    assert ev["refund"] == job.held - 3 * n * 10
    assert [net.mc.account(job.seats[i])["owed"] for i in range(3)] == [o + n * 10 for o in owed]


def test_manifest_matches_the_chain(meshnet):
    from tests.conftest import OPEN_POOL

    net = meshnet
    p = net.providers[OPEN_POOL[0]]

    async def main():
        async with Node.start(bytes(CONSUMER.key)) as node:
            return await fetch_manifest(node, p.peer_id, p.addrs)

    m, digest = trio.run(main)
    listing = net.mc.account(p.address)
    assert m.verify() == p.address and m.peer_id == p.peer_id
    assert bytes(listing["manifest_hash"]) == digest == bytes.fromhex(m.manifest_hash()[2:])
    assert bytes(listing["model_hash"]) == net.model_hash == bytes.fromhex(m.model_sha256[2:])
    assert m.quantization == "Q4_1" and m.price_per_token == 10 and m.hardware.cpu_threads == 1
    assert m.protocol_version == str(PROTOCOL_VERSION)
    # The build the process declares (and signed) is this machine's, with a stable fingerprint.
    assert m.build == build_of() and m.build.fingerprint == build_of().fingerprint


def test_a_restarted_provider_remembers_what_it_served(meshnet):
    net = meshnet
    consumer = net.new_consumer()
    s = sampling(max_tokens=4, seed=11)
    job = open_job(net, s, consumer)
    p = seated(net, job, 0)
    (first,) = ask_processes(net, job, s, [0], consumer)
    assert not isinstance(first, Exception), first
    net.stop(p.index)
    net.start(p.index, "--claim-poll", "0.5")
    (again,) = ask_processes(net, job, s, [0], consumer)
    _refused(again, "replayed")
    claims = json.loads((p.home / f"provider-{p.address}" / "claims.json").read_text())
    kept = {(c["job_id"], c["seat"]): c for c in claims}
    # Still owed (kept for the claim path), with what a jury would need.
    c = kept["0x" + job.job_id.hex(), 0]
    assert c["output_hash"] == "0x" + first.result.output_hash.hex() and c["token_count"] == first.result.token_count
    assert c["tokens"] == "0x" + first.result.tokens.hex()
    assert keccak(c["request"].encode()) == job.prompt_hash


def test_provider_cli_status_earnings_unstake_withdraw(meshnet):
    net = meshnet
    consumer = net.new_consumer()
    # Something to withdraw, whatever ran before: a settled job that paid this provider.
    s = sampling(max_tokens=4, seed=23)
    job = open_job(net, s, consumer)
    p = seated(net, job, 1)
    answers = ask_processes(net, job, s, range(3), consumer)
    assert all(not isinstance(a, Exception) for a in answers), answers
    net.mc.settle(consumer, job, [a.claim for a in answers])

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "meshmarket.cli", "provider", *args, "--account", f"dev:{p.index}"],
                              env=net.env(p.home), capture_output=True, text=True, timeout=120)

    st = json.loads(cli("status", "--json").stdout)
    assert st["address"] == p.address and st["price"] == 10 and st["stake"] >= st["locked"]
    thawing0 = net.mc.account(p.address)["thawing"]
    r = cli("unstake", "1")
    assert r.returncode == 0 and "thawing" in r.stdout, r.stderr
    assert net.mc.account(p.address)["thawing"] == thawing0 + 1_000_000
    owed = net.mc.account(p.address)["owed"]
    assert owed >= answers[1].result.token_count * 10 > 0
    balance = net.chain.balance(p.address)
    r = cli("withdraw")
    assert r.returncode == 0, r.stderr
    assert "earnings" in r.stdout and net.mc.account(p.address)["owed"] == 0
    assert net.chain.balance(p.address) == balance + owed
    # The thawing part is not ready for a week (the thaw period), and the command says so.
    # (6 d 23 h … once a second has passed on the chain since the unstake, 7 d 0 h in the same second)
    assert re.search(re.escape(f"{format_amount(thawing0 + 1_000_000)} thawing, withdrawable in ") + "(6 d|7 d 0 h)",
                     r.stdout), r.stdout
    assert net.mc.account(p.address)["thawing"] == thawing0 + 1_000_000
    e = json.loads(cli("earnings", "--json").stdout)
    assert e["owed"] == 0 and e["balance"] == net.chain.balance(p.address)
