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
