"""Ledger at scale: index 10,000 real jobs from a fresh Anvil, then rank 1,000 providers.

    python bench/ledger.py [--jobs 10000] [--providers 1000] [--url DB_URL]

Everything is real: 1,000 providers register and stake on a fresh Anvil, consumers open 10,000
jobs and settle them with EIP-712 results signed by the providers (some providers lie and are
slashed, a few jobs end without a majority, some have a provider replaced), so the indexer reads
genuine logs through eth_getLogs, decodes them and stores them (SQLite file by default, or --url).
To generate that many transactions quickly, the bench turns Anvil's automine off, sends each
block's transactions in one JSON-RPC batch and pins block timestamps, which lets a job be opened
and settled in the same block. This node then records local observations (first-token latencies,
timeouts of a few flaky providers) and the consumer's choice of 3 among 1,000 is timed.

Prints a table and ends with:
    RESULT select_1000_ms=M      median time of Reputation.rank_providers over 1,000 candidates
    RESULT index_10k_jobs_s=S    Indexer.sync over all events of the 10,000 jobs, from an empty ledger
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402
import rlp  # noqa: E402
from coincurve import PrivateKey  # noqa: E402
from eth_abi import encode as abi_encode  # noqa: E402
from eth_account import Account  # noqa: E402
from eth_utils import keccak  # noqa: E402

from ledger import Reputation, open_ledger  # noqa: E402
from ledger.indexer import Indexer  # noqa: E402
from mesh.anvil import start_anvil  # noqa: E402
from contracts.deploy import deploy  # noqa: E402
from mesh.chain import Chain, connect  # noqa: E402
from mesh.config import MarketParams  # noqa: E402
from mesh.keys import dev_account  # noqa: E402
from mesh.market import JOB_ABI, Job, job_id_for  # noqa: E402

TARGET_SELECT_MS = 200
MODEL = keccak(b"bench-model.gguf")
MAX_TOKENS = 100
PRICE_CAP = 20
STAKE = 10**10
GAS = 600_000
GAS_PRICE = 2 * 10**9
JOBS_PER_BLOCK = 25  # 400 blocks for 10,000 jobs
RESULT_TYPEHASH = keccak(text="Result(bytes32 jobId,bytes32 outputHash,uint64 tokenCount)")
SEL_OPEN = keccak(text="openJob(bytes32,bytes32,bytes32,uint64,uint64,address[3])")[:4]
SEL_SETTLE = keccak(text=f"settle(bytes32,{JOB_ABI},(bytes32,uint64,bytes32,bytes32)[3])")[:4]
SEL_REPLACE = keccak(text=f"replaceProvider(bytes32,{JOB_ABI},uint8,address)")[:4]


class Key:
    """One account's key, signing with libsecp256k1 directly. eth-account re-derives and
    re-validates on every call (~2 ms); 50,000 signatures need ~50 us each to keep the bench short.
    The contracts check every signature, so a mistake here would revert, not go unnoticed."""

    def __init__(self, acct) -> None:
        self.acct = acct
        self.address = acct.address
        self.pk = PrivateKey(bytes(acct.key))

    def sign_hash(self, digest: bytes) -> tuple[int, int, int]:
        sig = self.pk.sign_recoverable(digest, hasher=None)  # r || s || recovery id; s is low
        return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]

    def result(self, domain_separator: bytes, job_id: bytes, output_hash: bytes, tokens: int) -> tuple:
        """settle()'s SignedResult for the EIP-712 Result(jobId, outputHash, tokenCount)."""
        struct = keccak(abi_encode(["bytes32", "bytes32", "bytes32", "uint64"], [RESULT_TYPEHASH, job_id, output_hash, tokens]))
        r, s, rec = self.sign_hash(keccak(b"\x19\x01" + domain_separator + struct))
        return (output_hash, tokens, r.to_bytes(32, "big"), (rec << 255 | s).to_bytes(32, "big"))

    def legacy_tx(self, nonce: int, to: bytes, data: bytes, chain_id: int) -> bytes:
        """An EIP-155 signed legacy transaction."""
        fields = [nonce, GAS_PRICE, GAS, to, 0, data]
        r, s, rec = self.sign_hash(keccak(rlp.encode(fields + [chain_id, 0, 0])))
        return rlp.encode(fields + [rec + 35 + 2 * chain_id, r, s])


class Sender:
    """Sends one block's transactions in a JSON-RPC batch, then mines the block."""

    def __init__(self, url: str, chain_id: int) -> None:
        self.url = url
        self.chain_id = chain_id
        self.http = requests.Session()
        self.nonces: dict[str, int] = {}
        self.pending: list[str] = []
        self.sent = 0

    def rpc(self, method: str, params: list | None = None):
        reply = self.http.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).json()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def batch(self, calls: list[tuple[str, list]]) -> list:
        body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        replies = sorted(self.http.post(self.url, json=body).json(), key=lambda r: r["id"])
        errors = [r["error"] for r in replies if "error" in r]
        if errors:
            raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]}")
        return [r["result"] for r in replies]

    def tx(self, key: Key, to: str, data: bytes) -> None:
        nonce = self.nonces.setdefault(key.address, 0)
        self.nonces[key.address] = nonce + 1
        self.pending.append("0x" + key.legacy_tx(nonce, bytes.fromhex(to[2:]), data, self.chain_id).hex())

    def mine(self, timestamp: int | None = None) -> None:
        if self.pending:
            self.batch([("eth_sendRawTransaction", [raw]) for raw in self.pending])
            self.sent += len(self.pending)
            self.pending = []
        if timestamp is not None:
            self.rpc("evm_setNextBlockTimestamp", [timestamp])
        self.rpc("evm_mine")


def encode_call(selector: bytes, types: list[str], values: list) -> bytes:
    return selector + abi_encode(types, values)


def register_data(chain: Chain, manifest_hash: bytes, price: int, endpoint: str) -> bytes:
    """Calldata of register(), with the endpoint argument when the registry has one."""
    inputs = next(f["inputs"] for f in chain.registry.abi if f.get("type") == "function" and f["name"] == "register")
    args = [MODEL, manifest_hash, price] + ([endpoint] if len(inputs) == 4 else [])
    return bytes.fromhex(chain.registry.encode_abi("register", args=args)[2:])


def generate(url: str, n_jobs: int, n_providers: int, seed: int) -> dict:
    rng = random.Random(seed)
    w3 = connect(url)
    deployer = Key(dev_account(0))
    dep = deploy(w3, deployer.acct, url, MarketParams())
    chain = Chain(w3, dep)
    s = Sender(url, chain.chain_id)
    s.rpc("evm_setBlockGasLimit", [hex(2_000_000_000)])
    s.rpc("evm_setAutomine", [False])
    for a in (deployer.address,):
        s.nonces[a] = w3.eth.get_transaction_count(a)

    providers = [Key(Account.create()) for _ in range(n_providers)]
    consumers = [Key(Account.create()) for _ in range(20)]
    domain = chain.market.functions.domainSeparator().call()
    everyone = providers + consumers
    s.batch([("anvil_setBalance", [a.address, hex(10**22)]) for a in everyone])
    token, registry, market = dep.token, dep.registry, dep.market
    mint = keccak(text="mint(address,uint256)")[:4]
    approve = keccak(text="approve(address,uint256)")[:4]
    for a in everyone:
        s.tx(deployer, token, encode_call(mint, ["address", "uint256"], [a.address, 10**13]))
    ts = w3.eth.get_block("latest")["timestamp"] + 1
    s.mine(ts)
    prices = {}
    for i, p in enumerate(providers):
        prices[p.address] = rng.randint(5, PRICE_CAP)
        s.tx(p, token, encode_call(approve, ["address", "uint256"], [registry, 10**13]))
        s.tx(p, registry, encode_call(keccak(text="stake(uint256)")[:4], ["uint256"], [STAKE]))
        s.tx(p, registry, register_data(chain, keccak(b"manifest-%d" % i), prices[p.address], f"/ip4/127.0.0.1/tcp/{4000 + i}"))
    for c in consumers:
        s.tx(c, token, encode_call(approve, ["address", "uint256"], [registry, 10**13]))
    ts += 12
    s.mine(ts)

    # Behaviours: 5% liars (answer wrongly half the time: slashed when outvoted), the rest honest.
    liars = set(rng.sample(range(n_providers), max(1, n_providers // 20)))
    # 2% never serve a job (new providers): ranking must still give them a chance.
    idle = set(rng.sample(sorted(set(range(n_providers)) - liars), max(1, n_providers // 50)))
    active = [i for i in range(n_providers) if i not in idle]
    honest_output = keccak(b"the honest answer")
    stats = {"slash_jobs": 0, "no_majority": 0, "replaced": 0}
    served: list[tuple[str, str]] = []  # (job id, provider) for latency observations
    t0 = time.perf_counter()
    for start in range(0, n_jobs, JOBS_PER_BLOCK):
        ts += 12
        for j in range(start, min(n_jobs, start + JOBS_PER_BLOCK)):
            c = consumers[j % len(consumers)]
            picks = rng.sample(active, 3)
            three = [providers[i] for i in picks]
            salt = j.to_bytes(32, "big")
            job_id = job_id_for(c.address, salt)
            s.tx(c, market, encode_call(SEL_OPEN, ["bytes32", "bytes32", "bytes32", "uint64", "uint64", "address[3]"],
                                        [salt, MODEL, keccak(salt), MAX_TOKENS, PRICE_CAP, [p.address for p in three]]))
            job = Job(c.address, MODEL, keccak(salt), MAX_TOKENS, PRICE_CAP, ts, tuple(p.address for p in three),
                      tuple(prices[p.address] for p in three))
            if rng.random() < 0.02:
                spare = providers[rng.choice([i for i in active if i not in picks])]
                s.tx(c, market, encode_call(SEL_REPLACE, ["bytes32", JOB_ABI, "uint8", "address"],
                                            [job_id, job.as_abi(), 0, spare.address]))
                job = job.with_provider(0, spare.address, prices[spare.address])
                three[0] = spare
                picks[0] = providers.index(spare)
                stats["replaced"] += 1
            tokens = rng.randint(10, MAX_TOKENS)
            outs = [keccak(b"lie %d %d" % (j, k)) if i in liars and rng.random() < 0.5 else honest_output
                    for k, i in enumerate(picks)]
            honest = sum(o == honest_output for o in outs)
            stats["slash_jobs"] += honest == 2
            stats["no_majority"] += honest < 2
            results = [p.result(domain, job_id, o, tokens) for o, p in zip(outs, three)]
            s.tx(c, market, encode_call(SEL_SETTLE, ["bytes32", JOB_ABI, "(bytes32,uint64,bytes32,bytes32)[3]"],
                                        [job_id, job.as_abi(), results]))
            served.append(("0x" + job_id.hex(), three[0].address))
        s.mine(ts)
    gen_s = time.perf_counter() - t0
    s.rpc("evm_setAutomine", [True])
    head = w3.eth.get_block("latest")
    last = w3.eth.get_transaction_receipt(head["transactions"][-1])
    assert last["status"] == 1, "the last settle reverted: the generated history is not what the bench expects"
    return dict(chain=chain, providers=providers, prices=prices, liars=liars, idle=idle, served=served, gen_s=gen_s,
                txs=s.sent, blocks=head["number"], stats=stats, now=head["timestamp"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--providers", type=int, default=1_000)
    ap.add_argument("--url", default=None, help="ledger database URL (default: a fresh SQLite file)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []
    with start_anvil() as node, tempfile.TemporaryDirectory() as tmp:
        print(f"generating {args.jobs:,} jobs over {args.providers:,} providers on Anvil ...", file=sys.stderr)
        g = generate(node.url, args.jobs, args.providers, args.seed)
        rows.append(("generate on Anvil", f"{g['txs']:,} txs, {g['blocks']:,} blocks", f"{g['gen_s']:.1f} s"))

        url = args.url or f"sqlite:///{tmp}/ledger.sqlite"
        ledger = open_ledger(url)
        try:
            indexer = Indexer(ledger, g["chain"])
            t0 = time.perf_counter()
            report = indexer.sync()
            index_s = time.perf_counter() - t0
            counts = ledger.counts()
            batches = f"{report.batches} batch{'es' if report.batches != 1 else ''} of <= {indexer.batch_blocks:,} blocks"
            rows.append(("index (eth_getLogs + decode + store)", f"{report.events:,} events, {batches}",
                         f"{index_s:.1f} s"))
            rows.append(("  rows", f"{counts['jobs']:,} jobs, {counts['results']:,} results, "
                         f"{counts['payments']:,} payments, {counts['slashes']:,} slashes, "
                         f"{counts['replacements']:,} replacements", ""))
            assert counts["jobs"] == args.jobs, f"indexed {counts['jobs']} jobs, expected {args.jobs}"
            t0 = time.perf_counter()
            again = indexer.sync()
            rows.append(("sync again (nothing new)", f"{again.events} events", f"{(time.perf_counter() - t0) * 1000:.0f} ms"))

            # What this node saw off-chain: latencies of the jobs it ran, timeouts of flaky providers.
            rng = random.Random(args.seed + 1)
            now = float(g["now"])
            t0 = time.perf_counter()
            n_obs = 0
            for job_id, prov in g["served"][: args.providers]:
                ledger.record_observation(prov, "first_token", rng.uniform(80, 900), job_id=job_id, at=now)
                n_obs += 1
            flaky = [g["providers"][i].address for i in rng.sample(range(args.providers), max(1, args.providers // 50))]
            for p in flaky:
                for _ in range(5):
                    ledger.record_observation(p, "timeout", at=now)
                    n_obs += 1
            obs_s = time.perf_counter() - t0
            rows.append(("record_observation", f"{n_obs:,} observations", f"{obs_s / n_obs * 1000:.2f} ms each"))

            rep = Reputation(ledger)
            candidates = [p.address for p in g["providers"]]
            prices = g["prices"]
            times = []
            for k in range(21):
                t0 = time.perf_counter()
                ranked = rep.rank_providers(candidates, prices, now, seed=k)
                times.append((time.perf_counter() - t0) * 1000)
            select_ms = statistics.median(times)
            rows.append((f"rank_providers over {len(candidates):,}", "median of 21", f"{select_ms:.1f} ms"))

            # Who gets chosen over many jobs: liars and flaky providers should all but vanish.
            picks: dict[str, int] = {}
            for k in range(300):
                for p in rep.choose(candidates, prices, now, seed=1000 + k):
                    picks[p] = picks.get(p, 0) + 1
            liars = {g["providers"][i].address for i in g["liars"]}
            idle = {g["providers"][i].address for i in g["idle"]}
            share = lambda group: sum(picks.get(p, 0) for p in group) / (3 * 300)  # noqa: E731
            rows.append(("300 selections: share of picks", f"liars {share(liars):.1%} ({len(liars)} providers), "
                         f"flaky {share(set(flaky)):.1%}, never-served {share(idle):.1%}", ""))
            rep_s = time.perf_counter()
            rep.refresh(now)
            rows.append(("Reputation.refresh (cache all scores)", f"{len(candidates):,} providers",
                         f"{(time.perf_counter() - rep_s) * 1000:.0f} ms"))
            top = ranked[:3]
        finally:
            ledger.close()

    st = g["stats"]
    print(f"\nLedger benchmark: {args.jobs:,} real jobs ({st['slash_jobs']:,} with a slashed dissenter, "
          f"{st['no_majority']:,} without majority, {st['replaced']:,} with a replacement), "
          f"{args.providers:,} providers, ledger {url.split(':')[0]}\n")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'step':<{w0}}  {'size':<{w1}}  time")
    print(f"{'-' * w0}  {'-' * w1}  {'-' * 12}")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {c}")
    print(f"\nchosen for the last ranking: {', '.join(f'{r.provider[:10]} (u={r.utility:.3f})' for r in top)}")
    verdict = "OK" if select_ms <= TARGET_SELECT_MS else f"ABOVE the {TARGET_SELECT_MS} ms target"
    print(f"select over 1,000: {select_ms:.1f} ms ({verdict})")
    print(f"RESULT select_1000_ms={select_ms:.1f}")
    print(f"RESULT index_10k_jobs_s={index_s:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
