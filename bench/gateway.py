"""The OpenAI-compatible gateway against direct llama-cpp-python, on one devnet.

    python bench/gateway.py [--runs N] [--max-tokens N] [--concurrent N] [--slow-runs N]

All on this machine: three provider processes (one llama.cpp thread each) on a devnet; the gateway
in this process (consumer.gateway.thread) on a warm node, chain connection and catalog, with the
consumer paying from prepaid credit (the steady state); the official `openai` client, streamed.
Against it: llama-cpp-python's own `create_chat_completion(stream=True)` in this process, one
thread, on the same model and prompt. Runs alternate between the paths; medians are printed.

    direct               llama-cpp-python, first content delta and the whole answer
    gateway (agreed)     the default stream: text is shown once two seats produced it
    gateway (first)      the first seat's text at once
    ... 2 s blocks       the same devnet switched to a block every 2 s (Anvil interval mining)

Each gateway row is split by the receipt: the chain (openJob + drawSeats, each a block), the seat's
first token as the consumer measured it from its request (for the agreed stream: the second seat's),
and the rest; and the gateway's own share is timed inside it (same process, same clock): from the
client sending to the market query starting, plus from the market releasing the first text to the
client holding it (HTTP, JSON, SSE, the openai client's parsing). Then N concurrent streamed
requests, which must all succeed.

Prints a table and `RESULT gateway_ttft_overhead_ms=X` (target <= 60 ms over direct),
`RESULT gateway_concurrent_ok=N`, and the 2-second-block first token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

from tests.devnet import start_meshnet, temp_root  # noqa: E402
from meshmarket.consumer.gateway.config import GatewayConfig  # noqa: E402
from meshmarket.consumer.gateway import runner  # noqa: E402
from meshmarket.consumer.gateway.dispatch import Dispatcher, DispatchSettings  # noqa: E402
from meshmarket.consumer.gateway.thread import GatewayThread  # noqa: E402
from meshmarket.consumer.journal import Journal  # noqa: E402
from meshmarket.provider.engine import default_model_path  # noqa: E402

PROMPT = "Explain in a few sentences why the sky is blue."
MESSAGES = [{"role": "user", "content": PROMPT}]


class TimedMarket(Dispatcher):
    """The real backend, stamping when a query starts and when it releases its first text."""

    stamps: list[dict] = []

    async def complete(self, req, on_token):
        stamp = {"in": time.perf_counter(), "first": None}
        TimedMarket.stamps.append(stamp)

        def timed(piece: str) -> None:
            stamp["first"] = stamp["first"] or time.perf_counter()
            on_token(piece)

        return await super().complete(req, timed)


runner.Dispatcher = TimedMarket  # the gateways this benchmark starts use it


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def direct(llama, max_tokens: int) -> dict:
    llama.reset()
    t0 = time.perf_counter()
    first, n = None, 0
    for ch in llama.create_chat_completion(messages=MESSAGES, max_tokens=max_tokens, temperature=0.0, stream=True):
        if ch["choices"][0]["delta"].get("content"):
            first = first or time.perf_counter()
            n += 1
    return {"ttft": (first - t0) * 1000, "total": (time.perf_counter() - t0) * 1000}


def through(url: str, max_tokens: int, content: str = PROMPT) -> dict:
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    n_stamps = len(TimedMarket.stamps)
    t0 = time.perf_counter()
    first, last = None, None
    for ch in c.chat.completions.create(model="default", messages=[{"role": "user", "content": content}],
                                        max_tokens=max_tokens, stream=True, stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].delta.content:
            first = first or time.perf_counter()
        last = ch
    total = (time.perf_counter() - t0) * 1000
    m = last.model_extra["meshmarket"]
    seats = sorted(p["first_token_ms"] for p in m["providers"] if p["first_token_ms"] is not None)
    t = m["timings_ms"]
    stamp = TimedMarket.stamps[n_stamps] if len(TimedMarket.stamps) > n_stamps else {"in": t0, "first": first}
    own = ((stamp["in"] - t0) + (first - stamp["first"])) * 1000
    return {"ttft": (first - t0) * 1000, "total": total, "tokens": last.usage.completion_tokens, "own": own,
            "chain": t.get("open", 0) + t.get("draw", 0), "seat1": seats[0] if seats else float("nan"),
            "seat2": seats[1] if len(seats) > 1 else float("nan"), "outcome": m["outcome"]}


def concurrent(url: str, n: int, max_tokens: int) -> tuple[int, float, list[float], list[str]]:
    results: list[dict | None] = [None] * n
    errors: list[str] = []
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        try:
            barrier.wait()
            results[i] = through(url, max_tokens, f"{PROMPT} ({i})")
        except Exception as exc:  # noqa: BLE001 - counted
            errors.append(repr(exc))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(900)
    ok = [r for r in results if r is not None]
    return len(ok), time.perf_counter() - t0, sorted(r["ttft"] for r in ok), errors


def row(name: str, runs: list[dict], ref_ttft: float) -> str:
    ttft, total = median([r["ttft"] for r in runs]), median([r["total"] for r in runs])
    if "chain" not in runs[0]:
        return f"{name:<30} {ttft:>9.0f} {total:>9.0f} {'1.00':>6} {'':>8} {'':>10} {'':>8} {'':>9}"
    chain = median([r["chain"] for r in runs])
    seat = median([r["seat2" if "agreed" in name else "seat1"] for r in runs])
    rest = ttft - chain - seat
    own = median([r["own"] for r in runs])
    return (f"{name:<30} {ttft:>9.0f} {total:>9.0f} {ttft / ref_ttft:>6.2f} {chain:>8.0f} {seat:>10.0f} {rest:>8.0f}"
            f" {own:>9.1f}")


def gateways(net, root: Path) -> tuple[GatewayThread, GatewayThread]:
    out = []
    for mode in ("agreed", "first"):
        acct = net.new_consumer()
        net.mc.deposit(acct, 10**9)  # prepaid credit: each job then needs no token transfer
        settings = DispatchSettings(stream_mode=mode, min_pool=0)  # a three-provider devnet, knowingly
        out.append(GatewayThread(net.chain, acct, GatewayConfig(max_price=20), settings,
                                 journal=Journal(root / f"jobs-{mode}"), spending_path=root / f"spend-{mode}.json").start())
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--slow-runs", type=int, default=3)
    args = ap.parse_args()

    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=1, n_threads_batch=1,
                            verbose=False)
    root = temp_root()
    t0 = time.perf_counter()
    net = start_meshnet(root, {1: 10, 2: 10, 3: 10}, extra=("--claim-poll", "0.5"))
    print(f"devnet with 3 providers up in {time.perf_counter() - t0:.0f} s", flush=True)
    paths: dict[str, list[dict]] = {"direct llama-cpp-python": [], "gateway (agreed)": [], "gateway (first)": []}
    try:
        agreed, first = gateways(net, root)
        for k in range(args.runs + 1):  # run 0 warms every path up
            for name, fn in (("direct llama-cpp-python", lambda: direct(llama, args.max_tokens)),
                             ("gateway (agreed)", lambda: through(agreed.url, args.max_tokens)),
                             ("gateway (first)", lambda: through(first.url, args.max_tokens))):
                r = fn()
                if k:
                    paths[name].append(r)
        ok, wall, ttfts, errors = concurrent(agreed.url, args.concurrent, args.max_tokens)
        net.chain.w3.provider.make_request("evm_setIntervalMining", [2])
        slow = [through(agreed.url, args.max_tokens) for _ in range(args.slow_runs)]
        paths["gateway (agreed), 2 s blocks"] = slow
        agreed.close()
        first.close()
    finally:
        net.close()
    report(paths, args, ok, wall, ttfts, errors)
    return 0 if ok == args.concurrent else 1


def report(paths, args, ok, wall, ttfts, errors) -> None:
    ref = median([r["ttft"] for r in paths["direct llama-cpp-python"]])
    print(f"\n{args.max_tokens}-token chat, streamed; medians of {args.runs} runs (ms). "
          "Gateway first token = chain (open + draw) + seat's first token + rest (HTTP, streams, gateway)")
    print(f"{'path':<30} {'1st token':>9} {'total':>9} {'ratio':>6} {'chain':>8} {'seat 1st':>10} {'rest':>8} "
          f"{'gateway':>9}")
    for name, runs in paths.items():
        print(row(name, runs, ref))
    print(f"\n{args.concurrent} concurrent streamed requests: {ok} succeeded in {wall:.1f} s; first tokens "
          f"{', '.join(f'{t:.0f}' for t in ttfts)} ms (the pool serves one job at a time: queued)")
    for e in errors:
        print("  error:", e)
    overhead = median([r["ttft"] for r in paths["gateway (agreed)"]]) - ref
    print(f"RESULT gateway_ttft_overhead_ms={overhead:.0f}")
    print(f"RESULT gateway_own_ttft_ms={median([r['own'] for r in paths['gateway (agreed)']]):.1f}")
    print(f"RESULT gateway_first_mode_ttft_overhead_ms={median([r['ttft'] for r in paths['gateway (first)']]) - ref:.0f}")
    print(f"RESULT direct_ttft_ms={ref:.0f}")
    print(f"RESULT gateway_concurrent_ok={ok}")
    print(f"RESULT gateway_ttft_2s_blocks_ms={median([r['ttft'] for r in paths['gateway (agreed), 2 s blocks']]):.0f}")


if __name__ == "__main__":
    sys.exit(main())
