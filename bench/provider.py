"""Direct llama-cpp-python vs the same model behind one provider over libp2p on loopback.

    python bench/provider.py [--runs N] [--max-tokens N]
    python bench/provider.py --concurrent 1,2,4,8,16 [--max-tokens N]

With --concurrent: one provider registered with --slots (the largest level) serves C paid jobs at
once, one consumer each (so the per-consumer fair share does not limit them), every job opened and
drawn first and every connection open; the clock starts when the C requests are sent together.
Aggregate tokens/s = signed tokens of all C jobs / (last result - requests sent); first token =
request sent -> first token, p50/p95 over the C jobs. Beside each level, the same batched engine
(provider/batch.py) decoding C sequences in this process (bench/batching.py's
`inprocess_aggregate`), measured in the same run.

Both sides run the same GGUF with one thread; the provider is a separate process started through
the CLI. Direct runs and mesh runs alternate, so machine noise hits both alike. The consumer's
connection is already open. As `mesh ask` does, the stream is opened while the job is being
opened on-chain, and the mesh clock starts when the request is written: it includes the
provider's on-chain job check, its thread hand-offs and the framing of every token. A second line
shows the first token when a new stream is opened only after the job is open (py-libp2p's stream
set-up costs several ms). Opening the job is not timed here (bench/query.py times the whole query).

First-token latency: request sent -> first token received. Tokens/s: (completion tokens - 1) /
time from the first token's arrival to the last's (a provider may send several tokens in one
frame when they queue up; the count is the signed token count). Medians over the runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

from meshmarket.consumer.client import fetch_manifest, run_job  # noqa: E402
from meshmarket.mesh.p2p import Node  # noqa: E402
from meshmarket.mesh.protocol import InferRequest, Sampling  # noqa: E402
from meshmarket.provider.engine import default_model_path  # noqa: E402
from tests.devnet import FixtureNet as MeshNet, temp_root  # noqa: E402

PROMPT = "Explain in a few sentences why the sky is blue."


def direct_run(llama, max_tokens: int) -> tuple[float, float, int]:
    """(first token ms, tokens/s, tokens) for llama-cpp-python's own streaming chat completion."""
    llama.reset()  # fresh state, as the provider does per job
    t0 = time.perf_counter()
    first = None
    n = 0
    for chunk in llama.create_chat_completion(messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens,
                                              temperature=0.0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            n += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return (first - t0) * 1000, (n - 1) / (end - first), n


TOPICS = ["the sea", "a dragon", "bread", "the moon", "rivers", "chess", "autumn", "a robot"]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def concurrent(levels: list[int], max_tokens: int, repeats: int) -> int:
    """Aggregate tokens/s and first-token latency with C jobs at once on one batched provider."""
    from bench.batching import inprocess_aggregate
    from meshmarket.provider.batch import BatchedEngine
    from meshmarket.provider.modelfile import file_sha256

    slots = max(levels)
    net = MeshNet(temp_root())
    rows = []
    try:
        net.register(1, 10, 100 * 10**6, True, "--slots", str(slots), "--ctx", "512")
        net.start(1)
        for i in (2, 3):
            net.register(i, 10)  # in the pool (not started): a job draws three seats
        net.model_hash = bytes.fromhex(file_sha256(default_model_path())[2:])
        p = net.providers[1]

        def sampling(k: int) -> Sampling:
            return Sampling(messages=(("user", f"Write about {TOPICS[k % len(TOPICS)]}."),), max_tokens=max_tokens,
                            seed=k)

        def open_job(consumer, k: int) -> InferRequest:
            s = sampling(k)
            job_id, job, _ = net.mc.open_job(consumer, net.model_hash, s.prompt_hash(net.model_hash), max_tokens, 10,
                                             approve=False)
            job, _ = net.mc.draw_seats(consumer, job)
            return InferRequest(job_id, job, job.seat_of(p.address), s)

        async def level(consumers, reqs) -> tuple[float, list[float]]:
            from contextlib import AsyncExitStack

            async with AsyncExitStack() as stack:
                nodes = [await stack.enter_async_context(Node.start(bytes(c.key))) for c in consumers]
                for node in nodes:
                    await fetch_manifest(node, p.peer_id, p.addrs)  # opens the connection
                answers: list = [None] * len(nodes)
                t0 = time.perf_counter()

                async def one(i: int) -> None:
                    answers[i] = await run_job(nodes[i], p.peer_id, p.addrs, reqs[i], expected=p.address,
                                               chain_id=net.chain.chain_id, market=net.chain.market.address)

                async with trio.open_nursery() as n:
                    for i in range(len(nodes)):
                        n.start_soon(one, i)
                wall = time.perf_counter() - t0
            return sum(a.result.token_count for a in answers) / wall, [a.first_token_ms for a in answers]

        engine = None
        for c in [1] + levels:  # the first round warms both paths up and is not counted
            for r in range(repeats):
                consumers = [net.new_consumer() for _ in range(c)]
                reqs = [open_job(consumers[i], 1000 * r + i) for i in range(c)]
                tps, firsts = trio.run(level, consumers, reqs)
                if engine is None:
                    # The provider process is idle from here; load the in-process engine now.
                    engine = BatchedEngine(default_model_path(), n_ctx=512, n_threads=1, slots=slots)
                base = inprocess_aggregate(engine, c, max_tokens)
                rows.append((c, tps, base, firsts))
        engine.close()
    finally:
        net.close()
    rows = rows[repeats:]  # the warm-up
    print(f"{'concurrent':>10} {'provider tok/s':>15} {'in-process tok/s':>17} {'ratio':>6} "
          f"{'first token p50 ms':>19} {'p95 ms':>8}")
    print("-" * 80)
    agg: dict[int, tuple[float, float]] = {}
    for c in levels:
        mine = [r for r in rows if r[0] == c]
        tps = statistics.median(r[1] for r in mine)
        base = statistics.median(r[2] for r in mine)
        firsts = [f for r in mine for f in r[3]]
        agg[c] = (tps, base)
        print(f"{c:>10} {tps:>15.1f} {base:>17.1f} {tps / base:>6.2f} {_pct(firsts, 0.5):>19.0f} "
              f"{_pct(firsts, 0.95):>8.0f}")
    print(f"(medians of {repeats} rounds per level; {max_tokens} tokens per job; provider --slots {slots} --ctx 512, "
          f"one thread on each side, run one after the other)")
    if 8 in agg:
        print(f"RESULT provider_batched_over_inprocess={agg[8][0] / agg[8][1]:.3f}")
        if 1 in agg:
            print(f"RESULT provider_concurrent_speedup_8={agg[8][0] / agg[1][0]:.3f}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrent", default=None, metavar="C,C,...",
                    help="concurrency levels: aggregate tokens/s on one batched provider (see the docstring)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds per concurrency level (--concurrent)")
    args = ap.parse_args()
    if args.concurrent:
        return concurrent([int(c) for c in args.concurrent.split(",")], args.max_tokens, args.repeats)

    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=1, n_threads_batch=1,
                            verbose=False)
    net = MeshNet(temp_root())
    try:
        net.register(1, 10)
        net.start(1)
        from meshmarket.provider.modelfile import file_sha256

        net.model_hash = bytes.fromhex(file_sha256(default_model_path())[2:])
        for i in (2, 3):
            net.register(i, 10)  # in the pool (not started): a job draws three seats
        p = net.providers[1]
        direct, mesh, cold_stream = [], [], []
        # Each run opens two jobs that stay open (one seat of three answers), and a consumer may
        # hold 16 open jobs: a fresh funded consumer (and node) for every 7 runs.
        per_consumer = 7

        async def run(consumer, ks: range) -> None:
            async with Node.start(bytes(consumer.key)) as node:
                await fetch_manifest(node, p.peer_id, p.addrs)  # opens the connection
                for k in ks:  # run 0 warms every path up
                    d = direct_run(llama, args.max_tokens)

                    def open_job(seed: int):
                        s = Sampling(messages=(("user", PROMPT),), max_tokens=args.max_tokens, seed=seed)
                        job_id, job, _ = net.mc.open_job(consumer, net.model_hash, s.prompt_hash(net.model_hash),
                                                         args.max_tokens, 10, approve=False)
                        job, _ = net.mc.draw_seats(consumer, job)  # the pool is these three: all seated
                        return InferRequest(job_id, job, job.seat_of(p.address), s)

                    # As `mesh ask` does: the stream opens while openJob is mined; the clock starts
                    # when the request is sent (the provider's on-chain check is inside).
                    stamps: list[float] = []
                    a = await run_job(node, p.peer_id, p.addrs, lambda: trio.to_thread.run_sync(open_job, k),
                                      expected=p.address, chain_id=net.chain.chain_id, market=net.chain.market.address,
                                      on_token=lambda _t: stamps.append(time.perf_counter()))
                    n = a.result.token_count  # frames may carry several tokens each
                    m = (a.first_token_ms, (n - 1) / (stamps[-1] - stamps[0]), n)
                    # A new stream opened after the job is open, for comparison.
                    req = open_job(1000 + k)
                    t0 = time.perf_counter()
                    first: list[float] = []
                    await run_job(node, p.peer_id, p.addrs, req, chain_id=net.chain.chain_id,
                                  market=net.chain.market.address,
                                  on_token=lambda _t: first.append(time.perf_counter()) if not first else None)
                    cold = (first[0] - t0) * 1000
                    if k:
                        direct.append(d)
                        mesh.append(m)
                        cold_stream.append(cold)

        for start in range(0, args.runs + 1, per_consumer):
            trio.run(run, net.new_consumer(), range(start, min(start + per_consumer, args.runs + 1)))
        import os
        if os.environ.get("MESH_BENCH_DEBUG"):
            print("\n".join(net.providers[1].lines))
    finally:
        net.close()

    def med(rows, i):
        return statistics.median(r[i] for r in rows)

    d_ft, d_tps, m_ft, m_tps = med(direct, 0), med(direct, 1), med(mesh, 0), med(mesh, 1)
    print(f"{'path':<34} {'first token ms':>15} {'tokens/s':>9} {'tokens':>7}")
    print("-" * 68)
    print(f"{'direct llama-cpp-python':<34} {d_ft:>15.1f} {d_tps:>9.1f} {direct[0][2]:>7}")
    print(f"{'one provider over libp2p':<34} {m_ft:>15.1f} {m_tps:>9.1f} {mesh[0][2]:>7}")
    print(f"{'mesh / direct':<34} {m_ft / d_ft:>15.2f} {m_tps / d_tps:>9.3f}")
    c_ft = statistics.median(cold_stream)
    print(f"{'  (stream opened after openJob)':<34} {c_ft:>15.1f} {'':>9} {'':>7}  +{c_ft - d_ft:.1f} ms over direct")
    print(f"(medians of {args.runs} runs each, alternating; one thread per side)")
    print(f"RESULT mesh_over_direct_tps={m_tps / d_tps:.3f}")
    print(f"RESULT first_token_overhead_ms={m_ft - d_ft:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
