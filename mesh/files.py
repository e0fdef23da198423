"""Durable files: the one way Meshmarket writes state that must survive a crash (claims a provider
is owed, jobs a consumer must settle, the deployment record, provider settings).

`write_atomic` writes a temporary file in the same directory, flushes and fsyncs it, renames it
over the target and fsyncs the directory: after a crash the file is either the old version or
the new one, never half of either, and a completed write is on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644, exclusive: bool = False) -> Path:
    """`exclusive`: never replace an existing file (FileExistsError): the finished temporary file is
    linked in place, so the target appears complete or not at all (a keystore)."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # umask may have narrowed the creation mode
        if exclusive:
            os.link(tmp, path)
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def write_json(path: Path, obj: Any, mode: int = 0o644) -> Path:
    return write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n", mode)


def append_durable(path: Path, line: str) -> None:
    """Append one line and fsync it (a write-ahead record: it is on disk before the caller acts)."""
    with open(path, "a") as fh:
        fh.write(line if line.endswith("\n") else line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
