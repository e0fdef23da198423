"""Where Meshmarket keeps its files, and the settings every command shares.

The user directory is $MESH_HOME, else click's per-user app dir ("meshmarket"). It holds:
    deployment.json   the contracts this node talks to (written by `mesh contracts deploy` or
                      `mesh market join`), with the RPC URL they were found at
    keystore/         eth-account encrypted keystores (never plain keys)
    anvil.json        the local chain started by `mesh chain up` (while it runs)
    ledger.sqlite     the local SQL ledger
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from meshmarket.mesh.errors import ConfigError, NotDeployed

#: Anvil's default port: what a user who ran `mesh chain up` expects without flags.
DEFAULT_RPC_URL = "http://127.0.0.1:8545"
ANVIL_CHAIN_ID = 31337


def home() -> Path:
    env = os.environ.get("MESH_HOME")
    if env:
        path = Path(env).expanduser()
    else:
        import click

        path = Path(click.get_app_dir("meshmarket"))
    path.mkdir(parents=True, exist_ok=True)
    return path


#: The local chain `mesh chain up` runs, recorded while it runs (pid, port, url).
LOCAL_CHAIN_FILE = "anvil.json"
DEPLOYMENT_FILE = "deployment.json"


def local_chain() -> dict | None:
    """The record of the chain `mesh chain up` started from this user directory, if it still runs."""
    path = home() / LOCAL_CHAIN_FILE
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none, damaged, or its process is gone (a stale record)
    return state


def rpc_url(explicit: str | None = None, *, new_deployment: bool = False) -> str:
    """--rpc flag, else $MESH_RPC_URL, else the deployment's URL, else the chain `mesh chain up`
    runs, else Anvil's default. For a new deployment the running local chain comes before an
    older deployment's URL: `mesh chain up --port N` then `mesh contracts deploy` deploys there."""
    if explicit:
        return explicit
    env = os.environ.get("MESH_RPC_URL")
    if env:
        return env
    local = local_chain()
    if new_deployment and local:
        return str(local["url"])
    path = home() / DEPLOYMENT_FILE
    if path.exists():
        try:
            return json.loads(path.read_text())["rpc_url"]
        except (ValueError, KeyError):
            pass
    return str(local["url"]) if local else DEFAULT_RPC_URL


@dataclass(frozen=True)
class MarketParams:
    """Deployment parameters (immutables of the registry and the market); every default carries its
    reason. All times are seconds of chain time."""

    #: A week, as in staking protocols: stake leaves slowly, so a provider cannot run from a job.
    thaw_period: int = 7 * 24 * 3600
    #: 1 MESH (6 decimals): even a tiny job risks something real when it lies.
    min_job_lock: int = 1_000_000
    #: Each seat locks twice the most it can earn: a proven lie costs more than honest work earns.
    collateral_ratio: int = 2
    #: Draw weight saturates at 100 MESH of stake: a pool's providers are drawn in proportion to
    #: stake up to it (more identities for more weight), and a draw needs few attempts. Set it near
    #: the typical stake of a deployment's providers.
    weight_cap: int = 100_000_000
    #: One job may lock at most a quarter of a provider's stake: what a single job can put at risk.
    max_lock_share: int = 4
    #: Providers answer in seconds; 10 min before anything can happen without a silent seat.
    delivery_window: int = 10 * 60
    #: Then 10 min in which a seat that delivered but was not settled commits its claim, before
    #: the consumer may leave any seat out.
    claim_window: int = 10 * 60
    #: Then 10 min to reveal committed claims.
    reveal_window: int = 10 * 60
    #: A contested job waits 30 min for a party to dispute it before its provisional outcome holds.
    dispute_window: int = 30 * 60
    #: Each court phase (evidence, vote commit, vote reveal): scoring takes seconds, jurors are
    #: online providers, 10 min leaves room for a restart.
    court_phase: int = 10 * 60
    #: Three jurors: one captured juror decides nothing.
    jury_size: int = 3
    #: A dispute must pay its jurors something: jobs whose jury fee (maxTokens x priceCap) is below
    #: 300 base units (100 per juror) cannot be disputed; their provisional outcome stands (a cartel
    #: could gain at most two seats' pay of such a job, under 600 base units).
    min_jury_fee: int = 300

    def lock_for(self, max_tokens: int, price: int) -> int:
        """ProviderRegistry.lockFor, the one Python mirror of it: the stake a seat locks."""
        return lock_for(self.min_job_lock, self.collateral_ratio, max_tokens, price)


def lock_for(min_job_lock: int, collateral_ratio: int, max_tokens: int, price: int) -> int:
    """max(minJobLock, collateralRatio * maxTokens * price), as ProviderRegistry.lockFor computes it."""
    return max(min_job_lock, collateral_ratio * max_tokens * price)


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    rpc_url: str
    token: str
    registry: str
    market: str
    block: int
    block_hash: str
    deployer: str
    params: MarketParams = field(default_factory=MarketParams)
    #: The registry's deployment block: providers may register before the market is bound, so
    #: event readers start here. 0 in records written before it existed (readers then search).
    start_block: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Deployment:
        try:
            params = MarketParams(**data.get("params", {}))  # a v1 record fails here: redeploy
            return cls(
                chain_id=int(data["chain_id"]),
                rpc_url=str(data["rpc_url"]),
                token=str(data["token"]),
                registry=str(data["registry"]),
                market=str(data["market"]),
                block=int(data["block"]),
                block_hash=str(data["block_hash"]),
                deployer=str(data["deployer"]),
                params=params,
                start_block=int(data.get("start_block", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"deployment record is damaged ({exc})",
                              "record the market again (`mesh market join RPC_URL` or `mesh contracts deploy`)") from exc

    @staticmethod
    def default_path() -> Path:
        return home() / DEPLOYMENT_FILE

    def save(self, path: Path | None = None) -> Path:
        """Record it where every command looks (the user directory), or at `path`."""
        from meshmarket.mesh.files import write_atomic

        return write_atomic(path or self.default_path(), self.to_json() + "\n")  # never half a record

    @classmethod
    def load(cls, path: Path | None = None) -> Deployment:
        path = path or cls.default_path()
        if not path.exists():
            raise NotDeployed(f"no market is recorded at {path}",
                              "join one with `mesh market join RPC_URL`, or deploy your own with `mesh contracts deploy`")
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON",
                              "record the market again (`mesh market join RPC_URL` or `mesh contracts deploy`)") from exc
        return cls.from_dict(data)
