"""The continuously batched engine (provider/batch.py) on the real model: a job's tokens are the
single-job engine's whatever runs beside it (greedy and sampled, prompts of different lengths
joining mid-batch, more jobs than slots), cancel and close free a sequence without touching the
others, and a reader that stops reading holds up nobody.
"""

from __future__ import annotations

import threading
import time

import pytest

from meshmarket.mesh.errors import ContextOverflowError
from meshmarket.mesh.protocol import Sampling
from meshmarket.provider.batch import BatchedEngine
from meshmarket.provider.engine import default_model_path

REQUESTS = [
    Sampling(messages=(("user", "Write a short poem about the sea."),), max_tokens=40),
    Sampling(messages=(("user", "Name three colours."),), max_tokens=40, temperature_milli=800, seed=7),
    Sampling(prompt="Once upon a time", max_tokens=40, temperature_milli=1000, top_p_milli=900, seed=3),
    Sampling(messages=(("system", "You are terse."), ("user", "Why is the sky blue? " * 12)), max_tokens=40,
             temperature_milli=700, seed=11),
    Sampling(messages=(("user", "Count from one to twenty."),), max_tokens=40, stop=("assist",)),
    Sampling(prompt="The capital of France is", max_tokens=40, temperature_milli=1500, top_p_milli=500, seed=99),
]


@pytest.fixture(scope="module")
def batched():
    eng = BatchedEngine(default_model_path(), n_ctx=512, n_threads=1, slots=4)
    yield eng
    eng.close()


def _together(eng, requests, delays):
    results = [None] * len(requests)

    def run(i):
        time.sleep(delays[i])
        results[i] = eng.generate(requests[i]).run()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_jobs_joining_mid_batch_give_the_single_engines_tokens(engine, batched):
    alone = [engine.generate(r).run() for r in REQUESTS]
    # Six jobs on four slots, started 0.1 s apart: later prompts are prefilled between decode steps
    # of the earlier ones, and two wait for a free sequence.
    together = _together(batched, REQUESTS, [0.1 * i for i in range(len(REQUESTS))])
    for a, b in zip(alone, together):
        assert (b.tokens, b.text, b.finish_reason) == (a.tokens, a.text, a.finish_reason)
    assert together[4].finish_reason == "stop" and together[4].text.endswith("here to ")
    assert batched.active == 0


def test_cancel_and_close_free_a_sequence_and_leave_the_others_untouched(engine, batched):
    long = Sampling(messages=(("user", "Tell a long story about a dragon."),), max_tokens=200)
    alone = engine.generate(REQUESTS[1]).run()
    cancel = threading.Event()
    cancelled = batched.generate(long, cancel)
    closed = batched.generate(long)
    next(cancelled), next(closed)
    other = batched.generate(REQUESTS[1])
    next(other)
    cancel.set()
    closed.close()
    assert cancelled.run().finish_reason == "cancelled"
    result = other.run()
    assert (result.tokens, result.text) == (alone.tokens, alone.text)
    assert batched.active == 0


def test_a_reader_that_stops_reading_holds_up_nobody(batched):
    stalled = batched.generate(Sampling(messages=(("user", "Tell a long story about a dragon."),), max_tokens=120))
    next(stalled)  # joined the batch, then never read while the other runs
    t0 = time.perf_counter()
    batched.generate(REQUESTS[0]).run()
    took = time.perf_counter() - t0
    # The stalled job kept generating into its own buffer: all of it is there without waiting.
    deadline = time.perf_counter() + 60
    while batched.active and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert batched.active == 0
    t1 = time.perf_counter()
    assert stalled.run().completion_tokens >= 1
    assert time.perf_counter() - t1 < 0.5 < took


def test_a_request_over_one_sequences_context_is_refused(batched):
    assert batched.n_ctx == 512
    with pytest.raises(ContextOverflowError):
        batched.generate(Sampling(prompt="hello", max_tokens=512))


# --------------------------------------------------------------------------- the provider, batched
# dev:1 serves with the batched engine (four slots, fair share two per consumer) on a real libp2p
# host; dev:5 and dev:6 are the consumers (tests/conftest.py's served deployment).

LONG = Sampling(messages=(("user", "Tell a long story about a dragon."),), max_tokens=300)


def _paid(served, sampling, consumer):
    """dev:1's request for a paid, drawn job of `consumer`."""
    _, job = served.open(sampling, pool=(1, 2, 3), consumer=consumer)
    return served.request(job, 1, sampling)


def test_concurrent_paid_jobs_each_give_the_tokens_they_would_alone(served, engine, batched, tmp_path):
    import trio

    from meshmarket.mesh.keys import dev_account
    from meshmarket.mesh.p2p import Node
    from tests.harness import ask, providers

    consumers = [dev_account(5), dev_account(5), dev_account(6), dev_account(6)]
    samplings = REQUESTS[:4]
    reqs = [_paid(served, s, c) for s, c in zip(samplings, consumers)]
    alone = [engine.generate(s).run() for s in samplings]

    with providers(served, batched, tmp_path, (1,), own_slots=False) as run:
        async def body(node, ps):
            answers = [None] * 4
            async with Node.start(bytes(dev_account(6).key)) as node6:
                async def one(i):
                    answers[i] = await ask(node if i < 2 else node6, served, ps[1], reqs[i])

                async with trio.open_nursery() as n:
                    for i in range(4):
                        n.start_soon(one, i)
            return answers

        answers = run(body)
    for a, g in zip(answers, alone):
        assert not isinstance(a, Exception), a
        assert (a.text, a.result.token_count, a.result.output_hash) == (g.text, g.completion_tokens, g.output_hash)


def _busy_when(served, batched, tmp_path, running: list, extra):
    """Start `running` (requests of dev:5/dev:6), wait until each streams, then send `extra`; the
    refusal (or answer) of `extra`, how long it took, and whether every running job was still
    streaming then."""
    import trio

    from meshmarket.mesh.keys import dev_account
    from meshmarket.mesh.p2p import Node
    from tests.harness import ask, providers

    with providers(served, batched, tmp_path, (1,), own_slots=False) as run:
        async def body(node, ps):
            async with Node.start(bytes(dev_account(6).key)) as node6:
                nodes = {dev_account(5).address: node, dev_account(6).address: node6}
                started = [trio.Event() for _ in running]
                done: list = []
                async with trio.open_nursery() as n:
                    for k, (req, who) in enumerate(running):
                        async def go(req=req, who=who, ev=started[k]):
                            done.append(await ask(nodes[who], served, ps[1], req, on_token=lambda _t: ev.set()))
                        n.start_soon(go)
                    for ev in started:
                        await ev.wait()
                    t0 = trio.current_time()
                    req, who = extra
                    answer = await ask(nodes[who], served, ps[1], req)
                    took = trio.current_time() - t0
                    still = not done
                    n.cancel_scope.cancel()  # abandon the long jobs: the provider cancels them
            return answer, took, still

        return run(body)


def test_a_full_provider_answers_busy_at_once(served, batched, tmp_path):
    from meshmarket.mesh.keys import dev_account

    c5, c6 = dev_account(5), dev_account(6)
    running = [(_paid(served, LONG, c), c.address) for c in (c5, c5, c6, c6)]
    extra = (_paid(served, REQUESTS[1], c6), c6.address)
    answer, took, still = _busy_when(served, batched, tmp_path, running, extra)
    assert getattr(answer, "code", None) == "busy", answer
    assert still and took < 5.0


def test_one_consumer_cannot_hold_every_slot(served, batched, tmp_path):
    from meshmarket.mesh.keys import dev_account

    c5 = dev_account(5)
    running = [(_paid(served, LONG, c5), c5.address) for _ in range(2)]
    extra = (_paid(served, REQUESTS[1], c5), c5.address)
    answer, took, still = _busy_when(served, batched, tmp_path, running, extra)
    assert getattr(answer, "code", None) == "busy", answer  # two of four slots free, but not for dev:5
    assert "already runs 2" in str(answer) and still


def test_a_reader_that_stops_reading_does_not_slow_the_others(served, engine, batched, tmp_path):
    import trio

    from meshmarket.mesh.keys import dev_account
    from meshmarket.mesh.p2p import Node
    from meshmarket.mesh.protocol import INFER_PROTOCOL
    from tests.harness import ask, providers

    stalled = _paid(served, LONG, dev_account(5))
    other = _paid(served, REQUESTS[1], dev_account(6))
    alone = engine.generate(REQUESTS[1]).run()

    with providers(served, batched, tmp_path, (1,), own_slots=False) as run:
        async def body(node, ps):
            async with node.open_session(ps[1].peer_id, ps[1].addrs, INFER_PROTOCOL) as session:
                await session.send(stalled.to_wire())
                assert (await session.recv())["type"] == "token"  # then it never reads again
                async with Node.start(bytes(dev_account(6).key)) as node6:
                    t0 = trio.current_time()
                    answer = await ask(node6, served, ps[1], other)
                    return answer, trio.current_time() - t0

        answer, took = run(body)
    assert not isinstance(answer, Exception), answer
    assert (answer.text, answer.result.output_hash) == (alone.text, alone.output_hash)
    assert took < 15.0  # 40 tokens beside one other sequence; SEND_TIMEOUT (30 s) would show here
