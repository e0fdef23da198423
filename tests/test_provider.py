"""The provider node, for real: provider processes started through the CLI, real libp2p on
127.0.0.1, real llama.cpp with the small model, real Anvil. A paid job is served and its signed
result settles on-chain; every refusal is exercised and none of them costs a compute.
"""

from __future__ import annotations

import json
import random

import trio
from hypothesis import HealthCheck, given, settings, strategies as st
from eth_utils import keccak

from consumer.client import fetch_manifest, run_job
from mesh.errors import ProviderFailed
from mesh.keys import dev_account
from mesh.p2p import Node
from mesh.protocol import INFER_PROTOCOL, InferRequest, Sampling

CONSUMER = dev_account(5)
OTHER_CONSUMER = dev_account(6)
QUESTION = (("user", "Name three colours."),)


def sampling(max_tokens=16, seed=0, question=QUESTION, temperature_milli=0) -> Sampling:
    return Sampling(messages=question, max_tokens=max_tokens, seed=seed, temperature_milli=temperature_milli)


def open_job(net, s: Sampling, idx=(1, 2, 3), consumer=CONSUMER):
    job_id, job, _ = net.mc.open_job(consumer, net.model_hash, s.prompt_hash(net.model_hash), s.max_tokens, 20,
                                     [net.providers[i].address for i in idx], approve=False)
    return job_id, job


def ask(net, requests, consumer=CONSUMER):
    """Send (provider index, InferRequest) pairs concurrently; return answers or ProviderFailed."""

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


def first_frame(net, i, req: InferRequest, consumer=CONSUMER) -> dict:
    """Send a request as is (no client-side checks) and return the provider's first frame."""
    p = net.providers[i]

    async def main():
        async with Node.start(bytes(consumer.key)) as node:
            async with node.open_session(p.peer_id, p.addrs, INFER_PROTOCOL) as session:
                await session.send(req.to_wire())
                return await session.recv(timeout=30)

    return trio.run(main)


def served_lines(net, i):
    return [line for line in net.providers[i].lines if line.startswith("job ")]


def test_paid_job_served_identically_by_three_processes_and_settled(meshnet):
    net = meshnet
    s = sampling(max_tokens=24)
    job_id, job = open_job(net, s)
    answers = ask(net, [(i, InferRequest(job_id, job, k, s)) for k, i in enumerate((1, 2, 3))])
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


def _refused(answer, code):
    if isinstance(answer, dict):  # a raw frame
        assert answer.get("type") == "error", f"expected refusal {code}, got {answer}"
        assert answer["code"] == code, f"expected {code}, got {answer}"
        return answer["message"]
    assert isinstance(answer, ProviderFailed), f"expected refusal {code}, got an answer"
    assert answer.code == code, f"expected {code}, got {answer.code}: {answer}"
    return str(answer)


def test_unpaid_job_refused_without_compute(meshnet):
    net = meshnet
    s = sampling()
    _, job = open_job(net, s)
    before = served_lines(net, 1)
    a = first_frame(net, 1, InferRequest(keccak(b"never opened"), job, 0, s))
    assert "open it" in _refused(a, "unpaid")
    assert served_lines(net, 1) == before


def test_settled_job_refused(meshnet):
    net = meshnet
    s = sampling(max_tokens=8)
    job_id, job = open_job(net, s)
    answers = ask(net, [(i, InferRequest(job_id, job, k, s)) for k, i in enumerate((1, 2, 3))])
    net.mc.settle(CONSUMER, job_id, job, [a.claim for a in answers])
    net.chain.w3.provider.make_request("evm_mine", [])
    assert "settled" in _refused(first_frame(net, 1, InferRequest(job_id, job, 0, s)), "unpaid")


def test_foreign_job_refused(meshnet):
    """A job that lists other providers is refused by a provider it does not name."""
    net = meshnet
    s = sampling()
    job_id, job = open_job(net, s, idx=(1, 2, 3))
    _refused(first_frame(net, 4, InferRequest(job_id, job, 0, s)), "not_listed")


def test_request_by_someone_else_than_the_consumer_refused(meshnet):
    net = meshnet
    s = sampling()
    job_id, job = open_job(net, s)
    _refused(first_frame(net, 1, InferRequest(job_id, job, 0, s), consumer=OTHER_CONSUMER), "wrong_consumer")


def test_prompt_not_matching_the_job_refused(meshnet):
    net = meshnet
    s = sampling()
    job_id, job = open_job(net, s)
    other = sampling(question=(("user", "Something else entirely"),))
    _refused(first_frame(net, 1, InferRequest(job_id, job, 0, other)), "mismatch")


def test_tampered_job_refused(meshnet):
    net = meshnet
    s = sampling()
    job_id, job = open_job(net, s)
    richer = job.model_copy(update={"prices": (99, 99, 99)})
    _refused(first_frame(net, 1, InferRequest(job_id, richer, 0, s)), "unpaid")


def test_replayed_request_refused(meshnet):
    net = meshnet
    s = sampling(max_tokens=8)
    job_id, job = open_job(net, s)
    (first,) = ask(net, [(1, InferRequest(job_id, job, 0, s))])
    assert not isinstance(first, Exception)
    _refused(first_frame(net, 1, InferRequest(job_id, job, 0, s)), "replayed")


def test_prompt_over_the_context_refused_before_compute(meshnet):
    net = meshnet
    long_q = (("user", "word " * 1500),)
    s = sampling(max_tokens=1000, question=long_q)  # ~1,500 prompt tokens + 1,000 > 2,048
    job_id, job = open_job(net, s)
    assert "context window" in _refused(first_frame(net, 1, InferRequest(job_id, job, 0, s)), "context_overflow")


def test_busy_provider_answers_at_once(meshnet):
    net = meshnet
    long_s = sampling(max_tokens=200, question=(("user", "Tell a long story about a dragon."),))
    j1, job1 = open_job(net, long_s, idx=(2, 1, 3))
    short = sampling(max_tokens=4, seed=7)
    j2, job2 = open_job(net, short, idx=(2, 3, 4))

    async def main():
        async with Node.start(bytes(CONSUMER.key)) as node:
            p = net.providers[2]
            started = trio.Event()
            results = {}

            async def long_job():
                results["long"] = await run_job(node, p.peer_id, p.addrs, InferRequest(j1, job1, 0, long_s),
                                                chain_id=net.chain.chain_id, market=net.chain.market.address,
                                                on_token=lambda t: started.set())

            async with trio.open_nursery() as n:
                n.start_soon(long_job)
                await started.wait()
                t0 = trio.current_time()
                try:
                    await run_job(node, p.peer_id, p.addrs, InferRequest(j2, job2, 0, short),
                                  chain_id=net.chain.chain_id, market=net.chain.market.address)
                except ProviderFailed as exc:
                    results["busy"] = (exc.code, trio.current_time() - t0)
            return results

    results = trio.run(main)
    assert results["busy"][0] == "busy"
    assert results["long"].result.token_count > 0  # the running job was not disturbed


def test_expired_job_refused(meshnet):
    net = meshnet
    s = sampling()
    job_id, job = open_job(net, s)
    net.advance(net.deployment.params.delivery_window)
    _refused(first_frame(net, 1, InferRequest(job_id, job, 0, s)), "expired")


def test_cancelled_stream_stops_generation_and_node_keeps_serving(meshnet):
    net = meshnet
    s = sampling(max_tokens=300, question=(("user", "Count from one to one hundred in words."),))
    job_id, job = open_job(net, s, idx=(3, 1, 2))
    p = net.providers[3]

    async def main():
        async with Node.start(bytes(CONSUMER.key)) as node:
            seen = []
            with trio.CancelScope() as scope:
                async with node.open_session(p.peer_id, p.addrs, INFER_PROTOCOL) as session:
                    await session.send(InferRequest(job_id, job, 0, s).to_wire())
                    while len(seen) < 3:
                        seen.append(await session.recv())
                    scope.cancel()  # leave abruptly: the stream is reset under the provider
                    await trio.sleep(1)
            assert [f["type"] for f in seen] == ["token"] * 3

    trio.run(main)
    for _ in range(100):  # bounded wait for the provider's log line
        if any("cancelled" in line for line in served_lines(net, 3)):
            break
        trio.run(trio.sleep, 0.05)
    assert any("cancelled: consumer went away" in line for line in served_lines(net, 3))
    s2 = sampling(max_tokens=4, seed=3)
    j2, job2 = open_job(net, s2, idx=(3, 1, 2))
    (a,) = ask(net, [(3, InferRequest(j2, job2, 0, s2))])
    assert not isinstance(a, Exception) and a.result.token_count > 0


GARBAGE = st.one_of(
    st.binary(max_size=64),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20), st.none(), st.booleans()),
                    max_size=6).map(lambda d: json.dumps(d).encode()),
    st.just(b'{"type":"infer","version":1}'),
    st.just(b'{"type":"infer","version":1,"job_id":"0x12","job":{},"index":7,"sampling":[]}'),
    st.just(json.dumps([1, 2, 3]).encode()),
    st.just(b"[" * 5000),
)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads=st.lists(GARBAGE, min_size=1, max_size=3))
def test_garbage_frames_get_an_error_and_the_node_keeps_serving(meshnet, payloads):
    net = meshnet
    p = net.providers[4]

    async def main():
        async with Node.start(bytes(CONSUMER.key)) as node:
            for body in payloads:
                with trio.fail_after(10):
                    async with node.open_session(p.peer_id, p.addrs, INFER_PROTOCOL) as session:
                        # Raw length-prefixed bytes, some of them not JSON at all.
                        await session._stream.write(len(body).to_bytes(4, "big") + body)
                        reply = await session.recv()
                        assert reply["type"] == "error" and reply["code"] in {
                            "bad_request", "frame_malformed", "frame_too_large", "too_large"}, reply

    trio.run(main)
    assert p.alive()


def test_oversized_frame_refused_and_node_keeps_serving(meshnet):
    net = meshnet
    p = net.providers[4]

    async def main():
        async with Node.start(bytes(CONSUMER.key)) as node:
            async with node.open_session(p.peer_id, p.addrs, INFER_PROTOCOL) as session:
                await session._stream.write((10 * 2**20).to_bytes(4, "big") + b"{")
                return await session.recv()

    reply = trio.run(main)
    assert reply["type"] == "error" and reply["code"] == "frame_too_large"
    s = sampling(max_tokens=4, seed=random.randrange(1000))
    job_id, job = open_job(net, s, idx=(4, 1, 2))
    (a,) = ask(net, [(4, InferRequest(job_id, job, 0, s))])
    assert not isinstance(a, Exception)


def test_a_restarted_provider_remembers_what_it_served(meshnet):
    net = meshnet
    s = sampling(max_tokens=4, seed=11)
    job_id, job = open_job(net, s, idx=(3, 1, 2))
    (first,) = ask(net, [(3, InferRequest(job_id, job, 0, s))])
    assert not isinstance(first, Exception)
    net.stop(3)
    net.start(3, "--claim-poll", "0.5")
    _refused(first_frame(net, 3, InferRequest(job_id, job, 0, s)), "replayed")
    claims = json.loads((net.providers[3].home / f"provider-{net.providers[3].address}" / "claims.json").read_text())
    assert "0x" + job_id.hex() in {c["job_id"] for c in claims}  # still owed: kept for the commit/reveal path


def test_provider_cli_status_earnings_unstake_withdraw(meshnet):
    import subprocess
    import sys

    net = meshnet
    p = net.providers[2]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cli", "provider", *args, "--account", f"dev:{p.index}"],
                              env=net.env(p.home), capture_output=True, text=True, timeout=120)

    st = json.loads(cli("status", "--json").stdout)
    assert st["address"] == p.address and st["price"] == 10 and st["stake"] >= st["locked"]
    r = cli("unstake", "1")
    assert r.returncode == 0 and "thawing" in r.stdout, r.stderr
    assert net.mc.account(p.address)["thawing"] >= 1_000_000
    owed = net.mc.account(p.address)["owed"]
    r = cli("withdraw")
    assert r.returncode == 0, r.stderr
    if owed:
        assert "earnings" in r.stdout and net.mc.account(p.address)["owed"] == 0
    assert "thawing until" in r.stdout or "stake" in r.stdout  # the thawed part is not ready yet
    e = json.loads(cli("earnings", "--json").stdout)
    assert e["owed"] == 0 and e["balance"] == net.chain.balance(p.address)
