"""Gas per market operation, on a fresh Anvil, with the split between contracts.

    python bench/gas.py

Gas is deterministic: the same contracts and calls give the same numbers on any machine. Each
row is one transaction; "steady" rows are what a consumer pays after its first job, drawing from
prepaid credit that refunds keep topped up (what `mesh ask` does); "first" rows include the
one-time cost of a transferFrom and of storage slots going from zero to non-zero.
The last line, RESULT open_settle_gas=N, is open + a 3-of-3 settle in the steady state.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eth_utils import keccak  # noqa: E402

from mesh.anvil import start_anvil  # noqa: E402
from contracts.deploy import deploy  # noqa: E402
from mesh.chain import Chain, connect  # noqa: E402
from mesh.config import MarketParams  # noqa: E402
from mesh.keys import dev_account  # noqa: E402
from mesh.market import MarketClient, ResultClaim, commitment  # noqa: E402

TARGET = 200_000
MODEL = keccak(b"bench-model")
PRICE = 10
MAX_TOKENS = 128


def main() -> int:
    rows: list[tuple[str, int, str]] = []
    with start_anvil() as node:
        w3 = connect(node.url)
        deployer = dev_account(0)
        dep = deploy(w3, deployer, node.url, MarketParams())
        chain = Chain(w3, dep)
        mc = MarketClient(chain)
        names = {dep.market.lower(): "market", dep.registry.lower(): "registry", dep.token.lower(): "token",
                 "0x0000000000000000000000000000000000000001": "ecrecover"}
        provs = [dev_account(i) for i in (1, 2, 3, 4)]
        consumer = dev_account(5)
        for a in provs + [consumer]:
            chain.transact(deployer, chain.token.functions.mint(a.address, 10**12))

        def advance(seconds: int) -> None:
            w3.provider.make_request("evm_increaseTime", [seconds])
            w3.provider.make_request("evm_mine", [])

        def record(label: str, receipt: dict) -> int:
            trace = w3.provider.make_request(
                "debug_traceTransaction", [receipt["transactionHash"].to_0x_hex(), {"tracer": "callTracer"}])["result"]
            split: dict[str, int] = {}
            for call in trace.get("calls", []):
                who = names.get(call["to"].lower(), call["to"][:10])
                split[who] = split.get(who, 0) + int(call["gasUsed"], 16)
            detail = ", ".join(f"{k} {v:,}" for k, v in split.items())
            rows.append((label, receipt["gasUsed"], detail))
            return receipt["gasUsed"]

        for i, p in enumerate(provs):
            r1 = mc.register(p, MODEL, keccak(b"manifest%d" % i), PRICE)
            chain.ensure_allowance(p, dep.registry, 10**12)
            r2 = chain.transact(p, chain.registry.functions.stake(10**9))
            if i == 0:
                record("register (first)", r1)
                record("stake (first)", r2)
        three = [p.address for p in provs[:3]]

        def sign_all(job_id, outs, count=64):
            return [ResultClaim(job_id, o, count).sign(p, chain.chain_id, dep.market) for o, p in zip(outs, provs)]

        chain.ensure_allowance(consumer, dep.registry, 10**12)
        a, b, c = keccak(b"A"), keccak(b"B"), keccak(b"C")
        # First job of a consumer with no credit: pulls with transferFrom, refund creates the credit slot.
        jid, job, r = mc.open_job(consumer, MODEL, keccak(b"q"), MAX_TOKENS, PRICE, three, approve=False)
        first_open = record("open job (first: transferFrom)", r)
        first_settle = record("settle 3-of-3 (first: credit slot created)", mc.settle(consumer, jid, job, sign_all(jid, [a, a, a])))
        record("deposit (prepay credit)", mc.deposit(consumer, 10**8))
        # Steady state.
        jid, job, r = mc.open_job(consumer, MODEL, keccak(b"q"), MAX_TOKENS, PRICE, three, approve=False)
        steady_open = record("open job (steady: from credit)", r)
        steady_settle = record("settle 3-of-3 (steady)", mc.settle(consumer, jid, job, sign_all(jid, [a, a, a])))
        jid, job, _ = mc.open_job(consumer, MODEL, keccak(b"q"), MAX_TOKENS, PRICE, three, approve=False)
        record("settle 2-of-3 + slash (burn)", mc.settle(consumer, jid, job, sign_all(jid, [a, b, a])))
        jid, job, _ = mc.open_job(consumer, MODEL, keccak(b"q"), MAX_TOKENS, PRICE, three, approve=False)
        record("settle no majority (refund)", mc.settle(consumer, jid, job, sign_all(jid, [a, b, c])))
        jid, job, _ = mc.open_job(consumer, MODEL, keccak(b"q"), MAX_TOKENS, PRICE, three, approve=False)
        job, r = mc.replace_provider(consumer, jid, job, 2, provs[3].address)
        record("replace provider", r)
        params = dep.params
        advance(params.delivery_window)
        res = [ResultClaim(jid, a, 64).sign(provs[0], chain.chain_id, dep.market),
               ResultClaim(jid, a, 64).sign(provs[1], chain.chain_id, dep.market), None]
        record("settle 2 results after delivery deadline", mc.settle(consumer, jid, job, res))
        # The consumer walks away: providers commit, reveal, anyone finalizes.
        jid, job, _ = mc.open_job(consumer, MODEL, keccak(b"q"), MAX_TOKENS, PRICE, three, approve=False)
        advance(params.settle_window)
        salts = [keccak(b"s%d" % i) for i in range(3)]
        for i, p in enumerate(provs[:3]):
            r = mc.commit(p, jid, job, i, commitment(jid, p.address, a, 64, salts[i]))
            if i == 0:
                record("commit result (timeout path)", r)
        advance(params.commit_window)
        for i, p in enumerate(provs[:3]):
            r = mc.reveal(p, jid, job, i, a, 64, salts[i])
            if i == 0:
                record("reveal result (timeout path)", r)
        advance(params.reveal_window)
        record("finalize 3 reveals (timeout path)", mc.finalize(consumer, jid, job))
        jid, job, _ = mc.open_job(consumer, MODEL, keccak(b"q"), MAX_TOKENS, PRICE, three, approve=False)
        advance(params.settle_window + params.commit_window + params.reveal_window)
        record("finalize, nothing revealed (refund)", mc.finalize(consumer, jid, job))
        record("withdraw earnings", mc.withdraw_earnings(provs[0]))
        record("withdraw credit", mc.withdraw_credit(consumer))
        record("request unstake", mc.request_unstake(provs[3], 1000))
        advance(params.thaw_period)
        record("withdraw stake", mc.withdraw_stake(provs[3]))

    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  {'gas':>9}  {'vs target':>9}  split (sub-calls; the rest is the market or registry itself)")
    print("-" * (width + 60))
    for label, gas, detail in rows:
        print(f"{label:<{width}}  {gas:>9,}  {gas / TARGET:>9.2f}  {detail}")
    total_steady = steady_open + steady_settle
    total_first = first_open + first_settle
    print()
    print(f"open + settle 3-of-3, first job of a consumer: {total_first:,} gas ({total_first / TARGET:.2f} x target)")
    print(f"open + settle 3-of-3, steady state:            {total_steady:,} gas ({total_steady / TARGET:.2f} x target {TARGET:,})")
    print(f"RESULT open_settle_gas={total_steady}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
