"""Gas per market operation, on a fresh Anvil, with the split between contracts.

    python bench/gas.py [--jobs N] [--pool N]

Gas is deterministic for a given chain state; the one thing that varies is the seat draw, whose
rejection sampling takes as many attempts as the open block's hash makes it: the agreed fast path
is measured over N jobs (default 20) on a pool of providers (default 8) and reported as median and
maximum. "steady" is what a consumer pays once it has prepaid credit and its job slots have been
used (what `mesh ask` does after its first job); "first" includes the one-time cost of a
transferFrom and of storage slots going from zero to non-zero.

    RESULT open_settle_gas=N       open + draw + settle of an agreeing job, steady state (median)
    RESULT open_settle_gas_max=N   the same, the most of the N jobs
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eth_utils import keccak  # noqa: E402

from meshmarket.contracts.deploy import deploy  # noqa: E402
from meshmarket.mesh.anvil import start_anvil  # noqa: E402
from meshmarket.mesh.chain import Chain, connect  # noqa: E402
from meshmarket.mesh.config import MarketParams  # noqa: E402
from meshmarket.mesh.keys import dev_account  # noqa: E402
from meshmarket.mesh.market import HARD, PASS, MarketClient, ResultClaim, commitment, pack_verdicts, vote_commitment  # noqa: E402
from meshmarket.mesh.protocol import output_hash, pack_tokens  # noqa: E402

TARGET = 200_000
MODEL = keccak(b"bench-model")
PRICE = 10
MAX_TOKENS = 128
STAKE = 100 * 10**6
GOOD, BAD = [1, 2, 3], [7, 8, 9]


class Bench:
    def __init__(self, url: str, pool: int) -> None:
        self.w3 = connect(url)
        self.deployer = dev_account(0)
        self.dep = deploy(self.w3, self.deployer, url, MarketParams())
        self.chain = Chain(self.w3, self.dep)
        self.mc = MarketClient(self.chain)
        self.params = self.dep.params
        self.names = {self.dep.market.lower(): "market", self.dep.registry.lower(): "registry",
                      self.dep.token.lower(): "token", "0x0000000000000000000000000000000000000001": "ecrecover"}
        self.providers = [dev_account(i) for i in range(1, pool + 1)]
        self.by_address = {p.address: p for p in self.providers}
        self.consumer = dev_account(pool + 1)
        self.rows: list[tuple[str, int, str]] = []

    def record(self, label: str, receipt: dict) -> int:
        trace = self.w3.provider.make_request(
            "debug_traceTransaction", [receipt["transactionHash"].to_0x_hex(), {"tracer": "callTracer"}])["result"]
        split: dict[str, int] = {}
        for call in trace.get("calls", []):
            who = self.names.get(call["to"].lower(), call["to"][:10])
            split[who] = split.get(who, 0) + int(call["gasUsed"], 16)
        self.rows.append((label, receipt["gasUsed"], ", ".join(f"{k} {v:,}" for k, v in split.items())))
        return receipt["gasUsed"]

    def advance(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])

    def signed(self, job, outputs):
        """Each seat's signed result for `outputs[i]` (token lists)."""
        return [ResultClaim(job.job_id, output_hash("x", out), len(out)).sign(
            self.by_address[job.seats[i]], self.chain.chain_id, self.dep.market) for i, out in enumerate(outputs)]

    def job(self, max_tokens: int = MAX_TOKENS):
        _, job, r1 = self.mc.open_job(self.consumer, MODEL, keccak(b"q"), max_tokens, PRICE, approve=False)
        job, r2 = self.mc.draw_seats(self.consumer, job)
        return job, r1, r2


def setup(b: Bench) -> None:
    for a in b.providers + [b.consumer]:
        b.chain.transact(b.deployer, b.chain.token.functions.mint(a.address, 10**12))
    for i, p in enumerate(b.providers):
        r1 = b.mc.register(p, MODEL, keccak(b"manifest%d" % i), PRICE)
        b.chain.ensure_allowance(p, b.dep.registry, 10**12)
        r2 = b.chain.transact(p, b.chain.registry.functions.stake(STAKE))
        if i == 0:
            b.record("register (first)", r1)
            b.record("stake (first)", r2)
    b.chain.ensure_allowance(b.consumer, b.dep.registry, 10**12)


def fast_path(b: Bench, jobs: int) -> list[int]:
    job, r1, r2 = b.job()
    first = b.record("open job (first: slot from zero)", r1) + b.record("draw seats (first: transferFrom)", r2)
    first += b.record("settle agreed 3/3 (first: credit slot created)", b.mc.settle(b.consumer, job, b.signed(job, [GOOD] * 3)))
    b.record("deposit (prepay credit)", b.mc.deposit(b.consumer, 10**9))
    for slot in range(1, 16):  # every ring slot used once: the steady state reuses them
        job, _, _ = b.job()
        b.mc.settle(b.consumer, job, b.signed(job, [GOOD] * 3))
    totals, opens, draws, settles = [], [], [], []
    for _ in range(jobs):
        job, r1, r2 = b.job()
        r3 = b.mc.settle(b.consumer, job, b.signed(job, [GOOD] * 3))
        opens.append(r1["gasUsed"]), draws.append(r2["gasUsed"]), settles.append(r3["gasUsed"])
        totals.append(r1["gasUsed"] + r2["gasUsed"] + r3["gasUsed"])
    b.record("open job (steady: slot reused)", r1)
    b.record("draw seats (steady: from credit)", r2)
    b.record("settle agreed 3/3 (steady)", r3)
    print(f"first job of a consumer: open + draw + settle = {first:,} gas")
    print(f"steady, over {jobs} jobs: open {statistics.median(opens):,.0f}, draw median {statistics.median(draws):,.0f} "
          f"(min {min(draws):,}, max {max(draws):,}), settle {statistics.median(settles):,.0f}")
    return totals


def slow_paths(b: Bench) -> None:
    p = b.params
    job, _, _ = b.job()
    job, _, r = b.mc.add_seat(b.consumer, job)
    b.record("add a seat (a seat failed)", r)
    b.advance(p.delivery_window + p.claim_window)
    b.record("settle, one seat left out after its claim window",
             b.mc.settle(b.consumer, job, b.signed(job, [GOOD] * 3) + [None]))
    # The consumer walks away: seats commit, reveal, anyone finalizes.
    job, _, _ = b.job()
    b.advance(p.delivery_window)
    salts = [keccak(b"s%d" % i) for i in range(3)]
    oh = output_hash("x", GOOD)
    for i in range(3):
        seat = b.by_address[job.seats[i]]
        r = b.mc.commit(seat, job, i, commitment(job.job_id, i, seat.address, oh, 3, salts[i]))
        if i == 0:
            b.record("commit a claim (consumer gone)", r)
    b.advance(p.claim_window)
    for i in range(3):
        r = b.mc.reveal(b.by_address[job.seats[i]], job, i, oh, 3, salts[i])
        if i == 0:
            b.record("reveal a claim", r)
    b.advance(p.reveal_window)
    b.record("finalize, three revealed (agreed)", b.mc.finalize(b.consumer, job))
    job, _, _ = b.job()
    b.advance(p.delivery_window + p.claim_window)
    b.record("finalize, nothing claimed (refund)", b.mc.finalize(b.consumer, job))
    _, job, _ = b.mc.open_job(b.consumer, MODEL, keccak(b"q"), MAX_TOKENS, PRICE, approve=False)
    b.w3.provider.make_request("anvil_mine", [hex(257)])
    b.record("expire a job never drawn", b.mc.expire(b.consumer, job))
    court(b)
    b.record("withdraw earnings", b.mc.withdraw_earnings(b.providers[0]))
    b.record("withdraw credit", b.mc.withdraw_credit(b.consumer))
    b.record("request unstake", b.mc.request_unstake(b.providers[-1], 1000))
    b.advance(p.thaw_period)
    b.record("withdraw stake", b.mc.withdraw_stake(b.providers[-1]))


def court(b: Bench) -> None:
    """A contest with no dispute (provisional), then one judged by a jury."""
    p = b.params
    job, _, _ = b.job()
    r = b.mc.settle(b.consumer, job, b.signed(job, [GOOD, GOOD, BAD]))
    b.record("settle 2/3: contested (three locks taken)", r)
    contest = b.mc.contest_of(r)
    b.advance(p.dispute_window)
    b.record("resolve, nobody disputed (provisional)", b.mc.resolve(b.consumer, job, contest))
    job, _, _ = b.job()
    outputs = [GOOD, GOOD, BAD]
    contest = b.mc.contest_of(b.mc.settle(b.consumer, job, b.signed(job, outputs)))
    r = b.mc.dispute(b.consumer, job, contest, b"q")  # the request whose keccak256 is the job's promptHash
    b.record("dispute (bond, request published)", r)
    jurors, r = b.mc.draw_jury(b.consumer, job, contest)
    b.record(f"draw the jury ({len(jurors)} jurors)", r)
    for i in range(3):
        r = b.mc.post_evidence(b.by_address[job.seats[i]], job, contest, i, keccak(b"x"), pack_tokens(outputs[i]))
        if i == 0:
            b.record("post evidence (3 tokens)", r)
    b.advance(p.court_phase)
    verdicts = pack_verdicts({0: PASS, 1: PASS, 2: HARD})
    for k, j in enumerate(jurors):
        r = b.mc.commit_vote(b.by_address[j], job.job_id, vote_commitment(job.job_id, j, verdicts, b"s" * 32))
        if k == 0:
            b.record("commit a vote", r)
    b.advance(p.court_phase)
    for k, j in enumerate(jurors):
        r = b.mc.reveal_vote(b.by_address[j], job.job_id, verdicts, b"s" * 32)
        if k == 0:
            b.record("reveal a vote", r)
    b.advance(p.court_phase)
    b.record("resolve judged (one slashed, burned)", b.mc.resolve(b.consumer, job, contest))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20, help="agreeing jobs measured in the steady state")
    ap.add_argument("--pool", type=int, default=8, help="providers in the model's pool (3 to 18)")
    args = ap.parse_args(argv)
    if not 6 <= args.pool <= 18:
        ap.error("--pool must be 6 to 18 (three seats and three jurors at least; 20 dev accounts)")
    with start_anvil() as node:
        b = Bench(node.url, args.pool)
        setup(b)
        totals = fast_path(b, args.jobs)
        slow_paths(b)
    width = max(len(r[0]) for r in b.rows)
    print()
    print(f"{'operation':<{width}}  {'gas':>9}  {'vs target':>9}  split (sub-calls; the rest is the contract itself)")
    print("-" * (width + 70))
    for label, gas, detail in b.rows:
        print(f"{label:<{width}}  {gas:>9,}  {gas / TARGET:>9.2f}  {detail}")
    median, worst = int(statistics.median(totals)), max(totals)
    print()
    print(f"open + draw + settle agreed, steady state, pool of {args.pool}: median {median:,} gas "
          f"({median / TARGET:.3f} x target {TARGET:,}), max {worst:,} ({worst / TARGET:.3f} x)")
    print(f"RESULT open_settle_gas={median}")
    print(f"RESULT open_settle_gas_max={worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
