"""Soak: one provider of a local market under connection churn and paid queries.

    python bench/soak.py [--connections N] [--queries M] [--workers W] [--concurrency C]
                         [--sample SECONDS] [--max-tokens T]

A market on a fresh Anvil (cli/devnet.py: three provider processes started through the CLI, an
open pool of exactly three, so every job seats all three). Provider dev:1 is the one hammered:
1. N connection cycles from fresh peers (default 10,000): each a new key and libp2p node that
   fetches and verifies the provider's signed manifest, then stops (W worker processes, C cycles
   at a time in each);
2. M paid, verified queries (default 1,000) through the consumer library (consumer.ask.Asker, as
   `mesh ask` runs them), one after another: open, draw, three generations, compare, settle.
Every SECONDS the provider's RSS and open descriptors are sampled (psutil) and a row printed. The
baseline is taken after a warm-up that is not counted (20 connections and one query: the first of
each allocates caches for good), the final sample once the provider's connections are gone. A
provider process that dies is started again and counted.

    RESULT connections_ok_rate=X   manifests fetched and verified / N          (target 1.0)
    RESULT queries_ok_rate=X       queries agreed and settled / M              (target 1.0)
    RESULT rss_growth_mb=X         final RSS - baseline RSS of the provider    (target <= 30)
    RESULT fd_growth=N             final descriptors - baseline                (target 0)
    RESULT provider_restarts=N     times the provider died and was restarted   (target 0)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from meshmarket.cli.devnet import MeshNet  # noqa: E402
from tests.devnet import start_meshnet, temp_root  # noqa: E402
from meshmarket.consumer.ask import AskOptions, Asker, discover  # noqa: E402
from meshmarket.consumer.journal import Journal  # noqa: E402
from meshmarket.mesh.keys import dev_account  # noqa: E402

TARGET = 1  # the hammered provider: dev:1
QUESTION = [("user", "Name three colours.")]
WARMUP_CONNECTIONS = 20


# ------------------------------------------------------------------------------ fresh peers (worker processes)

def worker(peer_id: str, addrs: list[str], n: int, concurrency: int) -> None:
    """`n` fresh consumers (a new key and node each) fetch and verify the provider's manifest; a
    progress line every 25 cycles, then `done` with the error tally."""
    import trio

    from meshmarket.consumer.client import fetch_manifest
    from meshmarket.mesh.p2p import Node

    tally = {"ok": 0, "err": 0}
    errors: Counter[str] = Counter()

    async def one() -> None:
        try:
            with trio.fail_after(60):
                async with Node.start(os.urandom(32)) as node:
                    manifest, _ = await fetch_manifest(node, peer_id, addrs)
            if manifest.peer_id != peer_id:
                raise RuntimeError("a manifest of another peer")
            tally["ok"] += 1
        except Exception as exc:  # counted and reported by the soak, never hidden
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            tally["err"] += 1
            errors[f"{type(exc).__name__}: {exc}"[:100]] += 1
        if (tally["ok"] + tally["err"]) % 25 == 0:
            print(f"progress {tally['ok']} {tally['err']}", flush=True)

    async def main() -> None:
        limiter = trio.CapacityLimiter(concurrency)

        async def limited() -> None:
            async with limiter:
                await one()

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(limited)

    trio.run(main)
    print("done " + json.dumps({**tally, "errors": dict(errors)}), flush=True)


class Hammer:
    """Worker processes making fresh-peer connection cycles; live counts from their progress lines."""

    def __init__(self, peer_id: str, addrs: list[str], n: int, workers: int, concurrency: int) -> None:
        self.ok = self.err = 0
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads = []
        for k in range(workers):
            count = n // workers + (1 if k < n % workers else 0)
            cmd = [sys.executable, __file__, "--worker", peer_id, ",".join(addrs), str(count), str(concurrency)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
            thread.start()
            self._threads.append((proc, thread))

    def _read(self, proc: subprocess.Popen) -> None:
        seen = [0, 0]
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, _, rest = line.partition(" ")
            if kind == "progress":
                ok, err = map(int, rest.split())
                with self._lock:
                    self.ok += ok - seen[0]
                    self.err += err - seen[1]
                seen = [ok, err]
            elif kind == "done":
                final = json.loads(rest)
                with self._lock:
                    self.ok += final["ok"] - seen[0]
                    self.err += final["err"] - seen[1]
                    self.errors.update(final["errors"])
                seen = [final["ok"], final["err"]]

    def wait(self) -> None:
        for proc, thread in self._threads:
            proc.wait()
            thread.join()


# ------------------------------------------------------------------------------ the provider, watched

class Watch:
    """Samples the hammered provider's RSS and descriptors every `period` seconds and prints a row;
    starts the provider again if its process died (counted in `restarts`)."""

    def __init__(self, net: MeshNet, period: float, progress) -> None:
        self.net, self.period, self.progress = net, period, progress
        self.restarts = 0
        self.samples: list[tuple[float, float, int]] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        print(f"{'t s':>7} {'phase':<12} {'conn ok':>8} {'conn err':>8} {'query ok':>8} {'query err':>9} "
              f"{'RSS MB':>7} {'fds':>5}")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self, show: bool = True) -> tuple[float, int]:
        p = self.net.providers[TARGET]
        if not p.alive():
            self.restarts += 1
            print(f"provider dev:{TARGET} died (exit {p.proc.returncode if p.proc else None}); starting it again")
            self.net.start(TARGET)
        proc = psutil.Process(p.proc.pid)
        rss, fds = proc.memory_info().rss / 2**20, proc.num_fds()
        self.samples.append((time.monotonic() - self.t0, rss, fds))
        if show:
            phase, conn_ok, conn_err, q_ok, q_err = self.progress()
            print(f"{time.monotonic() - self.t0:>7.0f} {phase:<12} {conn_ok:>8} {conn_err:>8} {q_ok:>8} {q_err:>9} "
                  f"{rss:>7.1f} {fds:>5}", flush=True)
        return rss, fds

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def settled(self, baseline_fds: int | None = None, timeout: float = 30.0) -> tuple[float, int]:
        """A sample once the descriptors stop falling (or are back at `baseline_fds`)."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            rss, fds = self.sample(show=False)
            if (baseline_fds is not None and fds <= baseline_fds) or fds == last:
                break
            last = fds
            time.sleep(1.0)
        return self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------ the soak

class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.phase = "start"
        self.hammer: Hammer | None = None
        self.q_ok = self.q_err = 0
        self.q_errors: Counter[str] = Counter()
        self.fds_at_end = ""

    def progress(self):
        h = self.hammer
        return self.phase, h.ok if h else 0, h.err if h else 0, self.q_ok, self.q_err

    def connections(self, net: MeshNet, n: int) -> Hammer:
        p = net.providers[TARGET]
        hammer = Hammer(p.peer_id, p.addrs, n, self.args.workers, self.args.concurrency)
        return hammer

    def query(self, asker: Asker, net: MeshNet, seed: int) -> bool:
        opts = AskOptions(max_tokens=self.args.max_tokens, max_price=20, seed=seed, min_pool=0)  # one provider's soak
        try:
            r = asker.ask(QUESTION, net.model_hash, discover(net.chain, net.model_hash), opts)
            if r.outcome == "agreed" and r.settled and len(r.slots) == 3 and r.text:
                return True
            self.q_errors[f"outcome {r.outcome} {r.agreement} settled={r.settled}"] += 1
        except Exception as exc:  # counted and reported, never hidden
            self.q_errors[f"{type(exc).__name__}: {exc}"[:100]] += 1
        return False

    def run(self, net: MeshNet, asker: Asker) -> dict[str, float]:
        args = self.args
        self.phase = "warm-up"
        Hammer(net.providers[TARGET].peer_id, net.providers[TARGET].addrs, WARMUP_CONNECTIONS, 1, 4).wait()
        self.query(asker, net, seed=10**6)
        watch = Watch(net, args.sample, self.progress)
        base_rss, base_fds = watch.settled()
        self.phase = "connections"
        self.hammer = self.connections(net, args.connections)
        self.hammer.wait()
        self.phase = "queries"
        for k in range(args.queries):
            if self.query(asker, net, seed=k):
                self.q_ok += 1
            else:
                self.q_err += 1
        self.phase = "idle"
        watch.stop()
        end_rss, end_fds = watch.settled(base_fds)
        self.fds_at_end = describe_fds(net.providers[TARGET].proc.pid)
        return {"base_rss": base_rss, "base_fds": base_fds, "end_rss": end_rss, "end_fds": end_fds,
                "restarts": watch.restarts, "peak_rss": max(s[1] for s in watch.samples),
                "peak_fds": max(s[2] for s in watch.samples), "seconds": time.monotonic() - watch.t0}


def describe_fds(pid: int) -> str:
    """What the provider holds open: its sockets by peer port and state, and its files."""
    proc = psutil.Process(pid)
    sockets = Counter(f"{c.type.name.lower()} {c.status.lower()} {'to :' + str(c.raddr.port) if c.raddr else 'listening'}"
                      for c in proc.net_connections(kind="inet"))
    files = [Path(f.path).name for f in proc.open_files()]
    return ", ".join(f"{n} x {what}" for what, n in sorted(sockets.items())) + f"; files: {', '.join(files) or 'none'}"


def report(soak: Soak, m: dict[str, float]) -> None:
    args, h = soak.args, soak.hammer
    assert h is not None
    print(f"\nprovider dev:{TARGET}: RSS {m['base_rss']:.1f} -> {m['end_rss']:.1f} MB (peak {m['peak_rss']:.1f}), "
          f"descriptors {m['base_fds']} -> {m['end_fds']} (peak {m['peak_fds']}), {m['seconds']:.0f} s")
    print(f"open at the end: {soak.fds_at_end}")
    for what, errors in (("connection", h.errors), ("query", soak.q_errors)):
        for message, count in errors.most_common(5):
            print(f"{what} failures: {count} x {message}")
    print(f"RESULT connections_ok_rate={h.ok / args.connections if args.connections else 1.0:.4f}")
    print(f"RESULT queries_ok_rate={soak.q_ok / args.queries if args.queries else 1.0:.4f}")
    print(f"RESULT rss_growth_mb={m['end_rss'] - m['base_rss']:.1f}")
    print(f"RESULT fd_growth={m['end_fds'] - m['base_fds']}")
    print(f"RESULT provider_restarts={m['restarts']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--workers", type=int, default=2, help="processes making connections (default 2)")
    ap.add_argument("--concurrency", type=int, default=8, help="connection cycles at once per worker (default 8)")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--worker", nargs=4, metavar=("PEER", "ADDRS", "N", "C"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        peer, addrs, n, c = args.worker
        worker(peer, addrs.split(","), int(n), int(c))
        return 0

    root = temp_root()
    net = start_meshnet(root, {TARGET: 10, 2: 10, 3: 10})
    try:
        consumer = dev_account(5)
        net.fund(5, 10**12)
        net.mc.deposit(consumer, 10**11)  # prepaid credit, as a steady consumer has
        soak = Soak(args)
        measured = soak.run(net, Asker(net.chain, consumer, journal=Journal(root / "jobs")))
    finally:
        net.close()
    report(soak, measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
