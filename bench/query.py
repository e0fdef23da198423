"""A verified query (three seats drawn by the contract) against the hardware floor, in one run.

    python bench/query.py [--runs N] [--max-tokens N] [--block-time SECONDS]

All on this machine, one llama.cpp thread per generation:
- direct: one llama-cpp-python generation in this process;
- floor: three bare generations at once in this process (what three seats on one machine cost
  before any network, chain or verification: the hardware floor of a verified query here);
- verified: the whole query as `mesh ask` runs it (open the job, draw the seats, three provider
  processes generate at once over libp2p, compare, settle), on a pool of exactly three.
Runs alternate between the paths; medians are printed. The consumer pays from prepaid credit.

    RESULT verified_over_floor=X        verified latency / floor latency (target <= 1.10)
    RESULT verified_first_token_ms=X    Enter to the first streamed token
With --block-time 2 (Anvil mines every 2 s, as a real chain has block times), the same query's
first token is printed as RESULT first_token_block2s_ms=X.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.devnet import start_meshnet, temp_root  # noqa: E402
from meshmarket.consumer.ask import AskOptions, Asker, discover  # noqa: E402
from meshmarket.consumer.journal import Journal  # noqa: E402
from meshmarket.mesh.keys import dev_account  # noqa: E402
from meshmarket.provider.engine import N_BATCH, N_UBATCH, default_model_path  # noqa: E402

PROMPT = "Explain in a few sentences why the sky is blue."
MESSAGES = [{"role": "user", "content": PROMPT}]


def generate(llama, max_tokens: int) -> int:
    llama.reset()
    out = llama.create_chat_completion(messages=MESSAGES, max_tokens=max_tokens, temperature=0.0)
    return out["usage"]["completion_tokens"]


def floor_run(llamas, max_tokens: int) -> float:
    """Three generations at once, each in its own thread and model (llama.cpp frees the GIL)."""
    threads = [threading.Thread(target=generate, args=(m, max_tokens)) for m in llamas]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - t0) * 1000


def verified_run(net, consumer, journal, max_tokens: int, seed: int):
    t0 = time.perf_counter()
    r = Asker(net.chain, consumer, journal=journal).ask(
        [("user", PROMPT)], net.model_hash, discover(net.chain, net.model_hash),
        AskOptions(max_tokens=max_tokens, max_price=20, seed=seed, min_pool=0))  # a pool of three, knowingly
    ms = (time.perf_counter() - t0) * 1000
    if r.outcome != "agreed":
        raise RuntimeError(f"the honest seats did not agree ({r.outcome} {r.agreement})")
    return ms, r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--block-time", type=float, default=None, help="seconds between Anvil's blocks (default: instant)")
    args = ap.parse_args(argv)

    import llama_cpp

    def load():
        return llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=1, n_threads_batch=1,
                               n_batch=N_BATCH, n_ubatch=N_UBATCH, verbose=False)

    llamas = [load() for _ in range(3)]
    root = temp_root()
    net = start_meshnet(root, {1: 10, 2: 10, 3: 10}, block_time=args.block_time)
    direct, floor, verified, first = [], [], [], []
    try:
        consumer = dev_account(5)
        net.fund(5)
        net.mc.deposit(consumer, 10**9)  # prepaid credit: the steady state of a consumer
        journal = Journal(root / "jobs")
        for k in range(args.runs + 1):  # run 0 warms every path up
            t0 = time.perf_counter()
            generate(llamas[0], args.max_tokens)
            d_ms = (time.perf_counter() - t0) * 1000
            f_ms = floor_run(llamas, args.max_tokens)
            v_ms, r = verified_run(net, consumer, journal, args.max_tokens, k)
            if k:
                direct.append(d_ms), floor.append(f_ms), verified.append(v_ms)
                first.append(r.timings_ms["first_token"])
                last = r
    finally:
        net.close()

    med = {"direct (1 generation)": statistics.median(direct), "floor (3 bare generations at once)": statistics.median(floor),
           "verified query (3 seats, chain, p2p)": statistics.median(verified)}
    base = med["floor (3 bare generations at once)"]
    print(f"{'path':<38} {'latency ms':>11} {'x floor':>8}")
    print("-" * 60)
    for k, ms in med.items():
        print(f"{k:<38} {ms:>11.0f} {ms / base:>8.2f}")
    chain = f"Anvil mining every {args.block_time} s" if args.block_time else "Anvil mining per transaction"
    print(f"\n{chain}; {last.slots[0].tokens} tokens per seat; medians of {args.runs} runs")
    print("verified query breakdown (last run): " + ", ".join(f"{k} {v:.0f} ms" for k, v in last.timings_ms.items()))
    print("gas (last run): " + ", ".join(f"{k} {v:,}" for k, v in last.gas.items()))
    ft = statistics.median(first)
    if args.block_time:
        print(f"RESULT first_token_block{args.block_time:g}s_ms={ft:.0f}")
    else:
        print(f"RESULT verified_over_floor={med['verified query (3 seats, chain, p2p)'] / base:.2f}")
        print(f"RESULT verified_first_token_ms={ft:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
