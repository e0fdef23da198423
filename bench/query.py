"""A verified three-provider query against the same prompt run directly and through one provider.

    python bench/query.py [--runs N] [--max-tokens N]

All on this machine, one llama.cpp thread per side: direct llama-cpp-python in this process; one
provider over libp2p (job already open); and the whole verified query as `mesh ask` runs it
(discover + verify manifests, open the job, generate on three providers at once, compare, settle).
Runs alternate between the three paths; medians are printed. The consumer pays from prepaid
credit (as after its first query), so the gas is the steady-state figure.

Targets: verified/direct latency <= 1.1 x max(1, 3 / cores); gas per query <= 200,000.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

from consumer.ask import AskOptions, Asker, discover, eligible  # noqa: E402
from consumer.client import fetch_manifest, run_job  # noqa: E402
from consumer.journal import Journal  # noqa: E402
from mesh.keys import dev_account  # noqa: E402
from cli.devnet import start_meshnet, temp_root  # noqa: E402
from mesh.p2p import Node  # noqa: E402
from mesh.protocol import InferRequest, Sampling  # noqa: E402
from provider.engine import default_model_path  # noqa: E402

PROMPT = "Explain in a few sentences why the sky is blue."


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    cores = os.cpu_count() or 1

    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False)
    root = temp_root()
    net = start_meshnet(root, {1: 10, 2: 10, 3: 10})
    rows: dict[str, list[tuple[float, float, int]]] = {"direct": [], "one provider": [], "verified (3 providers)": []}
    gas: list[int] = []
    try:
        consumer = dev_account(5)
        net.fund(5)
        net.mc.deposit(consumer, 10**9)  # prepaid credit: the steady state of a consumer
        three = [net.providers[i].address for i in (1, 2, 3)]
        p = net.providers[1]
        journal = Journal(root / "jobs")

        for k in range(args.runs + 1):  # run 0 warms every path up
            # direct
            llama.reset()
            t0 = time.perf_counter()
            out = llama.create_chat_completion(messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=args.max_tokens, temperature=0.0)
            d_ms = (time.perf_counter() - t0) * 1000
            d_tokens = out["usage"]["completion_tokens"]

            # one provider, job already open
            s = Sampling(messages=(("user", PROMPT),), max_tokens=args.max_tokens, seed=k)
            job_id, job, _ = net.mc.open_job(consumer, net.model_hash, s.prompt_hash(net.model_hash), args.max_tokens, 10,
                                             three, approve=False)

            async def one():
                async with Node.start(bytes(consumer.key)) as node:
                    await fetch_manifest(node, p.peer_id, p.addrs)
                    t = time.perf_counter()
                    a = await run_job(node, p.peer_id, p.addrs, InferRequest(job_id, job, 0, s),
                                      chain_id=net.chain.chain_id, market=net.chain.market.address)
                    return (time.perf_counter() - t) * 1000, a.result.token_count

            o_ms, o_tokens = trio.run(one)

            # the whole verified query
            t0 = time.perf_counter()
            offers = eligible(net.chain, discover(net.chain, net.model_hash), consumer.address, args.max_tokens, 20,
                              three)
            r = Asker(net.chain, consumer, journal=journal).ask(
                [("user", PROMPT)], net.model_hash, offers, AskOptions(max_tokens=args.max_tokens, max_price=20, seed=k))
            v_ms = (time.perf_counter() - t0) * 1000
            assert r.agreement == "3/3", r.agreement
            if k:
                rows["direct"].append((d_ms, d_tokens / d_ms * 1000, d_tokens))
                rows["one provider"].append((o_ms, o_tokens / o_ms * 1000, o_tokens))
                rows["verified (3 providers)"].append((v_ms, r.slots[0].tokens / v_ms * 1000, r.slots[0].tokens))
                gas.append(r.gas["open"] + r.gas["settle"])
                last = r
    finally:
        net.close()

    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v), v[0][2]) for k, v in rows.items()}
    base = med["direct"][0]
    print(f"{'path':<24} {'latency ms':>11} {'tokens/s':>9} {'tokens':>7} {'x direct':>9}")
    print("-" * 64)
    for k, (ms, tps, n) in med.items():
        print(f"{k:<24} {ms:>11.0f} {tps:>9.1f} {n:>7} {ms / base:>9.2f}")
    print(f"\nverified query breakdown (last run): " + ", ".join(f"{k} {v:.0f} ms" for k, v in last.timings_ms.items()))
    print(f"gas per verified query: open {last.gas['open']:,} + settle {last.gas['settle']:,} = {gas[-1]:,}")
    target = 1.1 * max(1, 3 / cores)
    ratio = med["verified (3 providers)"][0] / base
    print(f"cores {cores}: latency target <= {target:.2f} x direct; gas target <= 200,000")
    print(f"RESULT verified_over_direct_latency={ratio:.2f}")
    print(f"RESULT query_gas={max(gas)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
