"""Provider set-up and life cycle, as a library (the CLI in cli/provider.py is thin over it).

- `register_provider`: build and sign the manifest from the GGUF file, register model hash,
  manifest hash, price and endpoint on-chain, stake, and save the provider's settings
  (`$MESH_HOME/provider.json`: no key in it, only the account's address).
- `run_provider`: load the engine, check the on-chain listing still matches the saved manifest,
  start the libp2p node and serve until stopped (SIGINT/SIGTERM).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import trio
from eth_account.signers.local import LocalAccount

from meshmarket.mesh import config
from meshmarket.mesh.chain import Chain
from meshmarket.mesh.errors import ConfigError
from meshmarket.mesh.files import write_atomic
from meshmarket.mesh.limits import MAX_PRICE
from meshmarket.mesh.market import MarketClient, group_id
from meshmarket.mesh.p2p import Node, peer_id_for_key
from meshmarket.mesh.protocol import PROTOCOL_VERSION
from meshmarket.provider.batch import BatchedEngine
from meshmarket.provider.engine import InferenceEngine, LlamaCppEngine, build_of, default_model_path
from meshmarket.mesh.protocol import MAX_SLOTS, Hardware, Manifest
from meshmarket.provider.modelfile import file_sha256, manifest_for, model_info
from meshmarket.provider.claims import ClaimKeeper
from meshmarket.provider.court import CourtKeeper
from meshmarket.provider.judge import LazyJudge
from meshmarket.provider.node import JobGate, JobLog, ProviderService, ServedJobs

log = logging.getLogger("meshmarket.provider")

DEFAULT_PORT = 4001  # the libp2p convention
#: The engine's context unless --ctx says otherwise (capped by what the model was trained for).
DEFAULT_CTX = 2048
#: Room for a consumer's new connection while its previous one is still registered.
SERVER_CONNECTIONS_PER_PEER = 4


@dataclass(frozen=True)
class ProviderSettings:
    account: str
    model_path: str
    price: int
    host: str
    port: int
    threads: int
    gpu_layers: int
    manifest: dict
    #: The context the engine runs with (the manifest's context_length).
    ctx: int = DEFAULT_CTX
    #: The private mesh joined (None: the open market).
    group: str | None = None
    #: Jobs generated at once (the manifest's slots), each with `ctx` tokens of context.
    slots: int = 1

    @staticmethod
    def path(address: str, home: Path | None = None) -> Path:
        """One file per provider account, so several providers can share a user directory
        (`home`: another user directory than this process's, for a launcher of several nodes)."""
        d = (home or config.home()) / "providers"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{address}.json"

    def save(self, home: Path | None = None) -> Path:
        # Durably and atomically (mesh.files): a crash leaves the old settings or the new, never half.
        return write_atomic(self.path(self.account, home), json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def registered(cls) -> list[str]:
        return sorted(p.stem for p in (config.home() / "providers").glob("0x*.json"))

    @classmethod
    def load(cls, address: str | None = None) -> ProviderSettings:
        """This account's settings; without an account, the only provider registered here."""
        if address is None:
            found = cls.registered()
            if not found:
                raise ConfigError("no provider is registered from this user directory", "run `mesh provider register` first")
            if len(found) > 1:
                raise ConfigError(f"{len(found)} providers are registered here ({', '.join(found)})",
                                  "pass --account to choose one")
            address = found[0]
        p = cls.path(address)
        if not p.exists():
            raise ConfigError(f"{address} is not registered as a provider from this user directory",
                              "run `mesh provider register --account ...` first")
        try:
            return cls(**json.loads(p.read_text()))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{p} is damaged ({exc})", "run `mesh provider register` again") from exc


def resolve_model(model: str) -> Path:
    path = default_model_path() if model == "default" else Path(model).expanduser()
    if not path.is_file():
        raise ConfigError(f"no model file at {path}", "pass --model PATH to a GGUF file, or --model default")
    return path


def build_manifest(account: LocalAccount, model_path: Path, price: int, host: str, port: int, threads: int,
                   gpu_layers: int, ctx: int = DEFAULT_CTX, slots: int = 1) -> Manifest:
    """The signed manifest: model fields from the GGUF file, the context the engine will run with,
    this machine's build and hardware."""
    info = model_info(model_path)
    peer_id = peer_id_for_key(bytes(account.key))
    return manifest_for(
        info,
        context_length=min(ctx, info.context_length),
        build=build_of(gpu_layers),
        price_per_token=price,
        peer_id=peer_id,
        multiaddrs=(f"/ip4/{host}/tcp/{port}",),
        protocol_version=str(PROTOCOL_VERSION),
        hardware=detect_hardware(threads, gpu_layers),
        provider=account.address,
        issued_at=int(time.time()),
        slots=slots if slots > 1 else None,  # absent: one at a time, as before the field
    ).sign(account)


def detect_hardware(threads: int, gpu_layers: int) -> Hardware:
    """CPU threads always. llama-cpp-python 0.3.36 exposes whether this build can offload to a
    GPU but not the device's name or memory, so those stay empty/0 unless offload is on, when
    the name says so (docs/INFERENCE_NOTES.md)."""
    name = ""
    if gpu_layers:
        import llama_cpp

        name = "llama.cpp GPU offload" if llama_cpp.llama_supports_gpu_offload() else ""
    return Hardware(cpu_threads=threads, gpu_name=name, gpu_memory_mb=0, gpu_layers=gpu_layers if name else 0)


def endpoint_of(manifest: Manifest) -> str:
    return f"{manifest.multiaddrs[0]}/p2p/{manifest.peer_id}"


def register_provider(chain: Chain, account: LocalAccount, model: str, price: int, stake: int, *,
                      host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int = 1, gpu_layers: int = 0,
                      ctx: int = DEFAULT_CTX, group: str | None = None,
                      announce: str | None = None, slots: int = 1,
                      home: Path | None = None) -> ProviderSettings:
    """Register (or re-register) this account for the model file's pool: the open market, or the
    private mesh `group` names. `announce` is the address peers dial when it differs from `host`
    (a node listening on 0.0.0.0 behind its public address). The settings go to `home` (default:
    this process's user directory)."""
    if price <= 0:
        raise ConfigError("the price must be a positive number of base units per output token", "pass --price N")
    if price > MAX_PRICE:
        raise ConfigError(f"the price must be at most {MAX_PRICE} base units per output token", "pass a lower --price")
    if stake < 0:
        raise ConfigError("the stake cannot be negative", "pass --stake N")
    if ctx < 16:
        raise ConfigError("the context must be at least 16 tokens", "pass a larger --ctx")
    if not 1 <= slots <= MAX_SLOTS:
        raise ConfigError(f"slots must be 1 to {MAX_SLOTS}", "pass --slots N")
    dialled = announce or host
    try:
        ipaddress.IPv4Address(dialled)
    except ValueError:
        raise ConfigError(f"{dialled!r} is not an IPv4 address", "pass --host (and --announce) as a.b.c.d") from None
    if ipaddress.IPv4Address(dialled).is_unspecified:
        raise ConfigError(f"{dialled} is not an address peers can dial (it means 'every interface')",
                          "pass --announce with this machine's address on the network the consumers use")
    model_path = resolve_model(model)
    manifest = build_manifest(account, model_path, price, announce or host, port, threads, gpu_layers, ctx, slots)
    mc = MarketClient(chain)
    if stake:
        chain.require_balance(account.address, stake, "staking")
    mc.register(account, bytes.fromhex(manifest.model_sha256[2:]), bytes.fromhex(manifest.manifest_hash()[2:]), price,
                endpoint_of(manifest), group=group_id(group))
    if stake:
        mc.stake(account, stake)
    settings = ProviderSettings(account.address, str(model_path), price, host, port, threads, gpu_layers,
                                manifest.to_dict(), manifest.context_length, group, slots)
    settings.save(home)
    return settings


def engine_for(settings: ProviderSettings, slots: int | None = None) -> InferenceEngine:
    """The engine a provider runs: one job at a time (LlamaCppEngine) for one slot, else the
    continuously batched engine with `slots` sequences of `ctx` tokens each. `slots` may be fewer
    than the manifest declares (never more: consumers plan by what is declared)."""
    slots = settings.slots if slots is None else slots
    if not 1 <= slots <= settings.slots:
        raise ConfigError(f"this node is registered for at most {settings.slots} slots, not {slots}",
                          "run `mesh provider register --slots N` again")
    if slots == 1:
        return LlamaCppEngine(settings.model_path, n_ctx=settings.ctx, n_threads=settings.threads,
                              n_gpu_layers=settings.gpu_layers)
    return BatchedEngine(settings.model_path, n_ctx=settings.ctx, n_threads=settings.threads,
                         n_gpu_layers=settings.gpu_layers, slots=slots)


class ListingWatch:
    """Says once, when it happens, that the on-chain listing no longer matches this node (it was
    deregistered, or registered again from elsewhere: consumers now reject its manifest)."""

    def __init__(self, chain: Chain, address: str, manifest: Manifest, say: Callable[[str], None]) -> None:
        self.mc, self.address, self.say = MarketClient(chain), address, say
        self.listed_hash = bytes.fromhex(manifest.manifest_hash()[2:])
        self.state: str | None = None

    def __call__(self) -> None:
        listing = self.mc.account(self.address)
        state = None
        if not listing["listed"]:
            state = "deregistered: no new job draws this node"
        elif bytes(listing["manifest_hash"]) != self.listed_hash:
            state = "registered again elsewhere: consumers now reject this node's manifest"
        if state != self.state and state is not None:
            self.say(f"the on-chain listing changed ({state}); run `mesh provider register` here again and restart")
        self.state = state


def run_provider(chain: Chain, account: LocalAccount, settings: ProviderSettings, *,
                 on_ready: Callable[[str, list[str]], None] | None = None,
                 on_job: Callable[[JobLog], None] | None = None, on_claim: Callable[[str], None] | None = None,
                 claim_poll: float = 15.0, engine=None, judge=None) -> None:
    """Serve until SIGINT/SIGTERM; keep every served job's claim and do jury duty meanwhile.
    `engine` and `judge` may be passed in (tests and benchmarks reuse them)."""
    manifest = Manifest.parse(settings.manifest)
    if manifest.verify() != account.address:
        raise ConfigError("the saved manifest is not signed by this account", "run `mesh provider register` again")
    model_hash = bytes.fromhex(manifest.model_sha256[2:])
    listing = MarketClient(chain).account(account.address)
    if bytes(listing["manifest_hash"]).hex() != manifest.manifest_hash()[2:]:
        raise ConfigError("the on-chain listing does not match this node's manifest (another registration, or a new chain)",
                          "run `mesh provider register` again")
    if file_sha256(settings.model_path) != manifest.model_sha256:
        raise ConfigError(f"{settings.model_path} changed since registration", "run `mesh provider register` again")
    if manifest.build is not None and manifest.build != build_of(settings.gpu_layers):
        raise ConfigError("llama.cpp or its settings changed since registration (the manifest declares another build)",
                          "run `mesh provider register` again")
    engine = engine or engine_for(settings)
    state = config.home() / f"provider-{account.address}"
    state.mkdir(exist_ok=True)
    keeper = ClaimKeeper(chain, account, on_event=on_claim, path=state / "claims.json")
    court = CourtKeeper(chain, account, judge or LazyJudge(settings.model_path, n_gpu_layers=settings.gpu_layers),
                        on_event=on_claim,
                        path=state / "court.json")
    service = ProviderService(account, engine, JobGate(chain, account.address, model_hash), manifest,
                              served=ServedJobs(state / "served.log"), on_job=on_job, claims=keeper)

    check_listing = ListingWatch(chain, account.address, manifest, on_claim or log.warning)

    async def watch_claims() -> None:
        last_head = -1
        while True:
            await trio.sleep(claim_poll)
            # Nothing to do until a block comes, unless a claim or a jury duty waits for the clock:
            # an idle provider then costs the chain one call per tick instead of a dozen.
            try:
                head = await trio.to_thread.run_sync(lambda: chain.w3.eth.block_number)
            except Exception:  # a chain hiccup must not stop the node; the next tick retries
                log.exception("reading the chain's head failed")
                continue
            if head == last_head and not keeper.pending() and not court.duties():
                continue
            last_head = head
            for duty in (keeper.tick, court.tick, check_listing):
                try:
                    await trio.to_thread.run_sync(duty)
                except Exception:  # a chain hiccup must not stop the node; the next tick retries
                    log.exception("%s failed", duty.__qualname__)
                    last_head = -1

    async def main() -> None:
        async with Node.start(bytes(account.key), settings.port, listen_ip=settings.host,
                              max_connections_per_peer=SERVER_CONNECTIONS_PER_PEER) as node:
            service.attach(node)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_claims)
                if on_ready:
                    on_ready(node.peer_id, node.listen_addrs)
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
                nursery.cancel_scope.cancel()

    trio.run(main)
