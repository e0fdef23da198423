"""Start and stop a local Anvil node from the npm package @foundry-rs/anvil.

Used by `mesh chain up`, `mesh demo`, the test fixtures and the benchmarks: one way to start the
chain, with the port free-checked, readiness awaited (bounded) and the process always reaped.
"""

from __future__ import annotations

import json
import os
import platform
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from meshmarket.mesh.errors import ChainError, ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Anvil's funded dev accounts come from this well-known mnemonic; their keys are public, so they
#: are accepted only on the local chain (chain id 31337).
DEV_MNEMONIC = "test test test test test test test test test test test junk"
#: How many of them Anvil funds (and `dev:N` may name).
DEV_ACCOUNT_COUNT = 20


def _platform_package() -> str:
    system = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}.get(platform.system(), "linux")
    arch = {"x86_64": "amd64", "AMD64": "amd64", "arm64": "arm64", "aarch64": "arm64"}.get(platform.machine(), "amd64")
    return f"anvil-{system}-{arch}"


def find_anvil() -> Path:
    """The native binary inside the npm package (no node shim in between, so kill() reaches it)."""
    root = Path(os.environ.get("MESH_NODE_ROOT", REPO_ROOT))
    candidates = [
        root / "node_modules" / "@foundry-rs" / _platform_package() / "bin" / "anvil",
        root / "node_modules" / ".bin" / "anvil",
    ]
    for c in candidates:
        if c.exists():
            return c
    raise ConfigError("Anvil is not installed", "run the README's set-up command (it runs `npm ci`)")


#: Ports handed out for local listeners come from below the kernel's ephemeral range: a port the
#: kernel picked for bind(0) is in the range outgoing connections draw from, and one of those took
#: such a port between the pick and the listener's bind (a provider then failed with "address in use").
LISTEN_PORTS_FROM = 20_000


def _ephemeral_low() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, chosen at random below the ephemeral range
    (so no outgoing connection takes it before it is bound); the kernel's pick if none is found."""
    rng = random.SystemRandom()
    high = _ephemeral_low()
    for _ in range(100 if high > LISTEN_PORTS_FROM + 1000 else 0):
        port = rng.randrange(LISTEN_PORTS_FROM, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rpc_call(url: str, method: str, params: list | None = None, timeout: float = 2.0):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply = json.loads(resp.read())
    if "error" in reply:
        raise ChainError(f"{method} failed: {reply['error'].get('message')}")
    return reply["result"]


@dataclass
class AnvilProcess:
    proc: subprocess.Popen
    port: int
    #: The address clients connect to (loopback when Anvil listens on every interface).
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def __enter__(self) -> AnvilProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_anvil(port: int | None = None, *, ready_timeout: float = 15.0, detach: bool = False,
                log_path: Path | None = None, chain_id: int = 31337, block_time: float | None = None,
                host: str = "127.0.0.1") -> AnvilProcess:
    """Start Anvil on host:port (a free port when None) and wait until it answers. Its dev
    accounts (mesh.keys.DEV_ACCOUNT_COUNT) are funded with ETH. `block_time`: mine a block every
    so many seconds (a chain with a real block time) instead of one per transaction."""
    port = port or free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if s.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "") else host, port)) == 0:  # taken
            raise ConfigError(f"port {port} is already in use", "pick another with --port, or stop what runs there")
    cmd = [str(find_anvil()), "--host", host, "--port", str(port), "--mnemonic", DEV_MNEMONIC,
           "--chain-id", str(chain_id), "--accounts", str(DEV_ACCOUNT_COUNT)]
    if block_time:
        cmd += ["--block-time", str(block_time)]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=detach)
    finally:
        if log_path:
            out.close()
    handle = AnvilProcess(proc, port, "127.0.0.1" if host in ("0.0.0.0", "") else host)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChainError(f"Anvil exited with code {proc.returncode} before answering on port {port}")
        try:
            rpc_call(handle.url, "eth_chainId", timeout=0.5)
            return handle
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.05)
    handle.stop()
    raise ChainError(f"Anvil did not answer on port {port} within {ready_timeout:.0f} s")
