"""Does continuous batching change a sequence's tokens? And what does it give in-process?

    python bench/batching.py [--sizes 1,2,4,8,16] [--max-tokens 64] [--threads 1]

For each batch size N: N requests (greedy and sampled alternately, temperatures 0.6-1.2, top-p
0.8-1.0, their own seeds, prompts of 5 to ~200 tokens) started 50 ms apart on a BatchedEngine of N
slots, so later prompts are prefilled between decode steps of the earlier ones; each output is
compared with the single-job engine's (LlamaCppEngine) for the same request. Then N greedy
sequences started together: aggregate tokens/s in-process (`inprocess_aggregate`, the baseline
bench/provider.py measures beside the provider).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshmarket.mesh.protocol import Sampling  # noqa: E402
from meshmarket.provider.batch import BatchedEngine  # noqa: E402
from meshmarket.provider.engine import LlamaCppEngine, default_model_path  # noqa: E402

TOPICS = ["the sea", "a dragon", "bread", "the moon", "rivers", "chess", "autumn", "a robot"]


def request(i: int, max_tokens: int) -> Sampling:
    words = "Explain it again in other words. " * (i % 5) * 6  # prompts of different lengths
    text = f"Write about {TOPICS[i % len(TOPICS)]}. {words}"
    if i % 2 == 0:
        return Sampling(messages=(("user", text),), max_tokens=max_tokens)
    return Sampling(messages=(("user", text),), max_tokens=max_tokens, temperature_milli=600 + 100 * (i % 7),
                    top_p_milli=800 + 50 * (i % 5), seed=1000 + i)


def run_together(engine, requests: list[Sampling], stagger: float) -> tuple[list, float, list[float]]:
    """Results, wall time, and each request's first-piece latency (s), starting `stagger` apart."""
    results: list = [None] * len(requests)
    first: list[float] = [0.0] * len(requests)

    def run(i: int) -> None:
        time.sleep(stagger * i)
        t = time.perf_counter()
        gen = engine.generate(requests[i])
        for k, _ in enumerate(gen):
            if k == 0:
                first[i] = time.perf_counter() - t
        results[i] = gen.result

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0, first


def inprocess_aggregate(engine: BatchedEngine, n: int, max_tokens: int) -> float:
    """Aggregate tokens/s of n greedy sequences decoded together in-process."""
    reqs = [Sampling(messages=(("user", f"Write about {TOPICS[i % len(TOPICS)]}."),), max_tokens=max_tokens)
            for i in range(n)]
    results, wall, _ = run_together(engine, reqs, 0.0)
    return sum(r.completion_tokens for r in results) / wall


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,2,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    model = default_model_path()
    single = LlamaCppEngine(model, n_ctx=1024, n_threads=args.threads)
    alone = {i: single.generate(request(i, args.max_tokens)).run() for i in range(max(sizes))}
    single.close()
    print(f"{'N':>3} {'greedy same':>12} {'sampled same':>13} {'first diff at':>14} {'agg tok/s':>10}")
    total = differ = 0
    for n in sizes:
        eng = BatchedEngine(model, n_ctx=1024, n_threads=args.threads, slots=n)
        reqs = [request(i, args.max_tokens) for i in range(n)]
        results, _, _ = run_together(eng, reqs, 0.05)
        same = [r.tokens == alone[i].tokens and r.text == alone[i].text for i, r in enumerate(results)]
        diffs = [next((k for k, (a, b) in enumerate(zip(r.tokens, alone[i].tokens)) if a != b), -1)
                 for i, r in enumerate(results) if not same[i]]
        agg = inprocess_aggregate(eng, n, args.max_tokens)
        eng.close()
        g, s = same[0::2], same[1::2]
        print(f"{n:>3} {sum(g):>5} of {len(g):<5} {sum(s):>6} of {len(s):<5} {str(diffs or '-'):>14} {agg:>10.1f}")
        total += n
        differ += n - sum(same)
    print(f"RESULT batching_changed_sequences={differ}/{total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
