"""The README's first command runs `mesh demo`: it must work end to end on the embedded defaults
and leave nothing running, also when interrupted with Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil


def _descendants(pid: int) -> set[int]:
    """Every process the demo started (Anvil and the providers), however deep."""
    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _wait_gone(pids: set[int], seconds: float = 20.0) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        if not alive:
            return set()
        time.sleep(0.2)
    return alive


def test_demo_end_to_end_shows_the_cheater_judged_and_slashed(mesh_home, tmp_path):
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as o, open(err, "w") as e:  # files, not pipes: nothing blocks the demo
        proc = subprocess.Popen([sys.executable, "-m", "meshmarket.cli", "demo", "--max-tokens", "16",
                                 "--question", "What is two plus two?", "--question", "Name a colour."],
                                stdout=o, stderr=e, text=True, env={**os.environ, "MESH_HOME": str(mesh_home)})
        started: set[int] = set()
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:  # every process the demo starts
            started |= _descendants(proc.pid)
            time.sleep(0.2)
        proc.wait(timeout=10)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    # The cheater was drawn, outvoted, disputed, judged by the jury and slashed; honest seats paid.
    assert "contested  agreement 2/3" in out and "closed: judged" in out
    (row,) = [ln for ln in out.splitlines() if " cheater " in ln and "MESH" in ln and ln.lstrip()[0].isdigit()][:1]
    assert row.split()[-2:] == ["1.000000", "MESH"]  # its slashed (burned) lock
    assert "vote committed" in out and "vote revealed" in out
    final = out[out.index("final balances"):]
    (cheater,) = [ln for ln in final.splitlines() if "provider (cheater)" in ln]
    stake = int(re.findall(r"([\d,]+\.\d{6}) MESH", cheater)[1].replace(",", "").replace(".", ""))
    assert stake < 100_000_000 and (100_000_000 - stake) % 1_000_000 == 0  # lost a 1 MESH lock per job caught
    assert "Traceback" not in out + r.stderr
    assert len(started) >= 7, "expected Anvil and six providers"
    assert not _wait_gone(started), "the demo left processes running"


def test_demo_ctrl_c_shuts_everything_down(mesh_home):
    proc = subprocess.Popen([sys.executable, "-m", "meshmarket.cli", "demo", "--max-tokens", "64"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "MESH_HOME": str(mesh_home)})
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("== query 1"):
            break
    started = _descendants(proc.pid)
    assert len(started) >= 7, "expected Anvil and six providers running"
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "shutting everything down" in rest
    assert not _wait_gone(started), "Ctrl-C left processes running"
