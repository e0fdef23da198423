"""The provider node, for real.

Middle tier (in this process, tests/harness.py): the real provider service on real libp2p hosts,
the real llama.cpp engine and the session's Anvil (reverted around each test). Every refusal is
exercised and none of them costs a compute.

End-to-end tier (`meshnet`: provider processes started through the CLI): a paid job served
identically by three processes and settled, a restart that remembers what was served, and the
provider commands.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import trio
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings, strategies as st

from consumer.client import fetch_manifest, run_job
from mesh.errors import ProviderFailed
from mesh.keys import dev_account
from mesh.p2p import Node
from mesh.protocol import INFER_PROTOCOL, InferRequest, Sampling
from tests.harness import ask, first_frame, providers

CONSUMER = dev_account(5)
OTHER_CONSUMER = dev_account(6)
QUESTION = (("user", "Name three colours."),)


def sampling(max_tokens=16, seed=0, question=QUESTION, temperature_milli=0) -> Sampling:
    return Sampling(messages=question, max_tokens=max_tokens, seed=seed, temperature_milli=temperature_milli)


def _refused(answer, code):
    if isinstance(answer, dict):  # a raw frame
        assert answer.get("type") == "error", f"expected refusal {code}, got {answer}"
        assert answer["code"] == code, f"expected {code}, got {answer}"
        return answer["message"]
    assert isinstance(answer, ProviderFailed), f"expected refusal {code}, got an answer"
    assert answer.code == code, f"expected {code}, got {answer.code}: {answer}"
    return str(answer)


def refusal(served, engine, tmp_path, req: InferRequest, provider: int = 1, consumer=CONSUMER) -> dict:
    """The first frame provider dev:`provider` answers to `req`, and proof that it computed nothing."""
    with providers(served, engine, tmp_path, (provider,), consumer=consumer) as run:
        async def body(node, ps):
            frame = await first_frame(node, ps[provider], req.to_wire())
            assert ps[provider].log == [], "a refused request must not be computed"
            return frame

        return run(body)


# ------------------------------------------------------------------------------ middle tier: refusals


def test_unpaid_job_refused_without_compute(served, engine, tmp_path):
    s = sampling()
    _, job = served.open(s)
    frame = refusal(served, engine, tmp_path, InferRequest(keccak(b"never opened"), job, 0, s))
    assert "open it" in _refused(frame, "unpaid")


def test_settled_job_refused(served, engine, tmp_path):
    s = sampling(max_tokens=8)
    job_id, job = served.open(s)
    with providers(served, engine, tmp_path, (1, 2, 3)) as run:
        async def body(node, ps):
            answers = [await ask(node, served, ps[i], InferRequest(job_id, job, k, s)) for k, i in enumerate((1, 2, 3))]
            await trio.to_thread.run_sync(lambda: served.mc.settle(CONSUMER, job_id, job, [a.claim for a in answers]))
            return await first_frame(node, ps[1], InferRequest(job_id, job, 0, s).to_wire())

        frame = run(body)
    assert "settled" in _refused(frame, "unpaid")


def test_foreign_job_refused(served, engine, tmp_path):
    """A job that lists other providers is refused by a provider it does not name."""
    s = sampling()
    job_id, job = served.open(s, idx=(1, 2, 3))
    _refused(refusal(served, engine, tmp_path, InferRequest(job_id, job, 0, s), provider=4), "not_listed")


def test_request_by_someone_else_than_the_consumer_refused(served, engine, tmp_path):
    s = sampling()
    job_id, job = served.open(s)
    frame = refusal(served, engine, tmp_path, InferRequest(job_id, job, 0, s), consumer=OTHER_CONSUMER)
    _refused(frame, "wrong_consumer")


def test_prompt_not_matching_the_job_refused(served, engine, tmp_path):
    s = sampling()
    job_id, job = served.open(s)
    other = sampling(question=(("user", "Something else entirely"),))
    _refused(refusal(served, engine, tmp_path, InferRequest(job_id, job, 0, other)), "mismatch")


def test_tampered_job_refused(served, engine, tmp_path):
    s = sampling()
    job_id, job = served.open(s)
    richer = job.model_copy(update={"prices": (99, 99, 99)})
    _refused(refusal(served, engine, tmp_path, InferRequest(job_id, richer, 0, s)), "unpaid")


def test_expired_job_refused(served, engine, tmp_path):
    s = sampling()
    job_id, job = served.open(s)
    served.advance(served.chain.deployment.params.delivery_window)
    _refused(refusal(served, engine, tmp_path, InferRequest(job_id, job, 0, s)), "expired")


def test_prompt_over_the_context_refused_before_compute(served, engine, tmp_path):
    long_q = (("user", "word " * 1500),)
    s = sampling(max_tokens=1000, question=long_q)  # ~1,500 prompt tokens + 1,000 > 2,048
    job_id, job = served.open(s)
    frame = refusal(served, engine, tmp_path, InferRequest(job_id, job, 0, s))
    assert "context window" in _refused(frame, "context_overflow")


def test_replayed_request_refused(served, engine, tmp_path):
    s = sampling(max_tokens=8)
    job_id, job = served.open(s)
    with providers(served, engine, tmp_path, (1,)) as run:
        async def body(node, ps):
            first = await ask(node, served, ps[1], InferRequest(job_id, job, 0, s))
            again = await first_frame(node, ps[1], InferRequest(job_id, job, 0, s).to_wire())
            return first, again, len(ps[1].log)

        first, again, computed = run(body)
    assert not isinstance(first, Exception) and first.result.token_count > 0
    _refused(again, "replayed")
    assert computed == 1  # the replay cost nothing


def test_busy_provider_answers_at_once(served, engine, tmp_path):
    long_s = sampling(max_tokens=200, question=(("user", "Tell a long story about a dragon."),))
    j1, job1 = served.open(long_s, idx=(2, 1, 3))
    short = sampling(max_tokens=4, seed=7)
    j2, job2 = served.open(short, idx=(2, 3, 4))

    with providers(served, engine, tmp_path, (2,)) as run:
        async def body(node, ps):
            p, seen, results = ps[2], [], {}
            started = trio.Event()

            def on_token(t):
                seen.append(t)
                started.set()

            async def long_job():
                results["long"] = await ask(node, served, p, InferRequest(j1, job1, 0, long_s), on_token=on_token)

            async with trio.open_nursery() as n:
                n.start_soon(long_job)
                await started.wait()
                results["busy"] = await ask(node, served, p, InferRequest(j2, job2, 0, short))
                results["tokens_when_refused"] = len(seen)
            return results

        results = run(body)
    _refused(results["busy"], "busy")
    long = results["long"]
    assert not isinstance(long, Exception) and long.result.token_count > 0  # the running job was not disturbed
    # "At once": the refusal came while the long job was still streaming, not after it.
    assert results["tokens_when_refused"] < long.result.token_count


class _Abandon(Exception):
    pass


def test_cancelled_stream_stops_generation_and_node_keeps_serving(served, engine, tmp_path):
    s = sampling(max_tokens=300, question=(("user", "Count from one to one hundred in words."),))
    job_id, job = served.open(s, idx=(3, 1, 2))
    s2 = sampling(max_tokens=4, seed=3)
    j2, job2 = served.open(s2, idx=(3, 1, 2))

    with providers(served, engine, tmp_path, (3,)) as run:
        async def body(node, ps):
            p, seen = ps[3], []
            try:
                async with node.open_session(p.peer_id, p.addrs, INFER_PROTOCOL) as session:
                    await session.send(InferRequest(job_id, job, 0, s).to_wire())
                    while len(seen) < 3:
                        seen.append(await session.recv())
                    raise _Abandon()  # leave abruptly: the stream is reset under the provider
            except _Abandon:
                pass
            assert [f["type"] for f in seen] == ["token"] * 3
            with trio.fail_after(30):  # the provider notices, stops generating and logs it
                while not p.log:
                    await trio.sleep(0.01)
            return p.log[0], await ask(node, served, p, InferRequest(j2, job2, 0, s2))

        entry, after = run(body)
    assert entry.outcome == "cancelled: consumer went away" and entry.tokens == 0
    assert not isinstance(after, Exception) and after.result.token_count > 0


GARBAGE = st.one_of(
    st.binary(max_size=64),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20), st.none(), st.booleans()),
                    max_size=6).map(lambda d: json.dumps(d).encode()),
    st.just(b'{"type":"infer","version":1}'),
    st.just(b'{"type":"infer","version":1,"job_id":"0x12","job":{},"index":7,"sampling":[]}'),
    st.just(json.dumps([1, 2, 3]).encode()),
    st.just(b"[" * 5000),
    st.just(b'{"type":"infer","version":1,"sampling":{"prompt":"\\ud800","max_tokens":1}}'),
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
    job_id, job = served.open(s, idx=(4, 1, 2))
    with providers(served, engine, tmp_path, (4,)) as run:
        async def body(node, ps):
            p = ps[4]
            async with node.open_session(p.peer_id, p.addrs, INFER_PROTOCOL) as session:
                await session._stream.write((10 * 2**20).to_bytes(4, "big") + b"{")
                reply = await session.recv()
            return reply, await ask(node, served, p, InferRequest(job_id, job, 0, s))

        reply, after = run(body)
    assert reply["type"] == "error" and reply["code"] == "frame_too_large"
    assert not isinstance(after, Exception)


# ------------------------------------------------------------------------------ end to end: real processes


def ask_processes(net, requests, consumer=CONSUMER):
    """Send (provider index, InferRequest) pairs concurrently to meshnet providers."""

    async def main():
        out = [None] * len(requests)
        async with Node.start(bytes(consumer.key)) as node:
            async def one(k, i, req):
                p = net.providers[i]
                try:
                    out[k] = await run_job(node, p.peer_id, p.addrs, req, chain_id=net.chain.chain_id,
                                           market=net.chain.market.address)
                except ProviderFailed as exc:
                    out[k] = exc

            async with trio.open_nursery() as n:
                for k, (i, req) in enumerate(requests):
                    n.start_soon(one, k, i, req)
        return out

    return trio.run(main)


def open_job(net, s: Sampling, idx=(1, 2, 3), consumer=CONSUMER):
    job_id, job, _ = net.mc.open_job(consumer, net.model_hash, s.prompt_hash(net.model_hash), s.max_tokens, 20,
                                     [net.providers[i].address for i in idx], approve=False)
    return job_id, job


def test_paid_job_served_identically_by_three_processes_and_settled(meshnet):
    net = meshnet
    s = sampling(max_tokens=24)
    job_id, job = open_job(net, s)
    answers = ask_processes(net, [(i, InferRequest(job_id, job, k, s)) for k, i in enumerate((1, 2, 3))])
    assert all(not isinstance(a, Exception) for a in answers), answers
    assert len({a.text for a in answers}) == 1 and answers[0].text  # byte-identical across processes
    assert {a.result.output_hash for a in answers} == {keccak(answers[0].text.encode())}
    assert all(0 < a.result.token_count <= 24 for a in answers)
    owed = [net.mc.account(net.providers[i].address)["owed"] for i in (1, 2, 3)]
    ev = net.mc.settled_event(net.mc.settle(CONSUMER, job_id, job, [a.claim for a in answers]))
    n = answers[0].result.token_count
    assert ev["outcome"] == 0 and list(ev["paid"]) == [n * 10] * 3 and ev["refund"] == job.escrow - 3 * n * 10
    assert [net.mc.account(net.providers[i].address)["owed"] for i in (1, 2, 3)] == [o + n * 10 for o in owed]


def test_manifest_matches_the_chain(meshnet):
    net = meshnet
    p = net.providers[1]

    async def main():
        async with Node.start(bytes(CONSUMER.key)) as node:
            return await fetch_manifest(node, p.peer_id, p.addrs)

    m, digest = trio.run(main)
    listing = net.mc.account(p.address)
    assert m.verify() == p.address and m.peer_id == p.peer_id
    assert bytes(listing["manifest_hash"]) == digest == bytes.fromhex(m.manifest_hash()[2:])
    assert bytes(listing["model_hash"]) == net.model_hash == bytes.fromhex(m.model_sha256[2:])
    assert m.quantization == "Q4_1" and m.price_per_token == 10 and m.hardware.cpu_threads == 1


def test_a_restarted_provider_remembers_what_it_served(meshnet):
    net = meshnet
    s = sampling(max_tokens=4, seed=11)
    job_id, job = open_job(net, s, idx=(3, 1, 2))
    (first,) = ask_processes(net, [(3, InferRequest(job_id, job, 0, s))])
    assert not isinstance(first, Exception)
    net.stop(3)
    net.start(3, "--claim-poll", "0.5")
    (again,) = ask_processes(net, [(3, InferRequest(job_id, job, 0, s))])
    _refused(again, "replayed")
    claims = json.loads((net.providers[3].home / f"provider-{net.providers[3].address}" / "claims.json").read_text())
    assert "0x" + job_id.hex() in {c["job_id"] for c in claims}  # still owed: kept for the commit/reveal path


def test_provider_cli_status_earnings_unstake_withdraw(meshnet):
    net = meshnet
    p = net.providers[2]
    # Something to withdraw, whatever ran before: a settled job that paid this provider.
    s = sampling(max_tokens=4, seed=23)
    job_id, job = open_job(net, s, idx=(2, 1, 3))
    answers = ask_processes(net, [(i, InferRequest(job_id, job, k, s)) for k, i in enumerate((2, 1, 3))])
    net.mc.settle(CONSUMER, job_id, job, [a.claim for a in answers])

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cli", "provider", *args, "--account", f"dev:{p.index}"],
                              env=net.env(p.home), capture_output=True, text=True, timeout=120)

    st = json.loads(cli("status", "--json").stdout)
    assert st["address"] == p.address and st["price"] == 10 and st["stake"] >= st["locked"]
    thawing0 = net.mc.account(p.address)["thawing"]
    r = cli("unstake", "1")
    assert r.returncode == 0 and "thawing" in r.stdout, r.stderr
    assert net.mc.account(p.address)["thawing"] == thawing0 + 1_000_000
    owed = net.mc.account(p.address)["owed"]
    assert owed > 0
    balance = net.chain.balance(p.address)
    r = cli("withdraw")
    assert r.returncode == 0, r.stderr
    assert "earnings" in r.stdout and net.mc.account(p.address)["owed"] == 0
    assert net.chain.balance(p.address) == balance + owed
    assert "still thawing until" in r.stdout  # the thawed part is not ready for a week
    e = json.loads(cli("earnings", "--json").stdout)
    assert e["owed"] == 0 and e["balance"] == net.chain.balance(p.address)

