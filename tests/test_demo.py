"""The README's first command runs `mesh demo`: it must work end to end on the embedded defaults
and leave nothing running, also when interrupted with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil


def _ours() -> set[int]:
    """Anvil and provider processes on this machine."""
    out = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "anvil" in cmd.split(" ")[0] or "provider start" in cmd or "cli.devnet cheat" in cmd:
            out.add(p.info["pid"])
    return out


def _wait_gone(pids: set[int], seconds: float = 20.0) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        if not alive:
            return set()
        time.sleep(0.2)
    return alive


def test_demo_end_to_end_shows_the_cheater_slashed(mesh_home):
    before = _ours()
    r = subprocess.run([sys.executable, "-m", "cli", "demo", "--max-tokens", "8",
                        "--question", "What is two plus two?", "--question", "Name a colour."],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "MESH_HOME": str(mesh_home)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "agreement 2/3" in out and "slashed (disagreed)" in out  # the cheater is outvoted
    assert "final balances" in out and "provider (cheater)" in out
    assert "Traceback" not in out + r.stderr
    assert not _wait_gone(_ours() - before), "the demo left processes running"


def test_demo_ctrl_c_shuts_everything_down(mesh_home):
    before = _ours()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "demo", "--max-tokens", "64"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "MESH_HOME": str(mesh_home)})
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("== query 1"):
            break
    started = _ours() - before
    assert len(started) >= 5, "expected Anvil and four providers running"  # Anvil + 4 providers
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "shutting everything down" in rest
    assert not _wait_gone(started), "Ctrl-C left processes running"
