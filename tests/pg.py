"""A throwaway PostgreSQL server for tests, from Debian's `postgresql` package.

`PgCluster.start()` runs initdb into a fresh temp dir, starts the server with pg_ctl on a free
127.0.0.1 port (unix socket inside the temp dir, so nothing touches /var/run/postgresql), and
`stop()` always stops it and deletes the dir. initdb refuses to run as root, so under root the
server runs as the `postgres` system user (runuser) and the dir is chowned to it.

Fixtures (import them into a test module; one cluster is shared by the whole session):
    ledger_url    an empty database per test, parametrized over "sqlite" and "postgresql"
    pg_url        an empty PostgreSQL schema per test (in one database per session)

When the PostgreSQL binaries are missing the PostgreSQL cases FAIL (they never skip): CI installs
them with `apt-get install -y postgresql`. Set MESH_PG_BINDIR to use binaries elsewhere.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshmarket.mesh.anvil import free_port

BINDIR_ENV = "MESH_PG_BINDIR"
START_TIMEOUT_S = 30


def find_bindir() -> Path | None:
    """$MESH_PG_BINDIR, else the newest /usr/lib/postgresql/N/bin, else initdb on PATH."""
    env = os.environ.get(BINDIR_ENV)
    if env:
        return Path(env) if (Path(env) / "initdb").exists() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _missing() -> str:
    env = os.environ.get(BINDIR_ENV)
    where = (f"${BINDIR_ENV}={env} has no initdb" if env
             else "no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH")
    return (f"PostgreSQL server binaries not found ({where}): install them with "
            "`apt-get install -y postgresql` (setup.sh installs them for CI)")


@dataclass
class PgCluster:
    bindir: Path
    root: Path
    port: int
    user: str | None  # system user the server runs as (None: the current user)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    @classmethod
    def start(cls) -> PgCluster:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(_missing())
        root = Path(tempfile.mkdtemp(prefix="mesh-pg-"))
        user = None
        if os.geteuid() == 0:
            user = "postgres"
            try:
                pw = pwd.getpwnam(user)
            except KeyError as exc:
                shutil.rmtree(root, ignore_errors=True)
                raise RuntimeError("running as root needs the `postgres` system user (the postgresql package adds it)") from exc
            os.chown(root, pw.pw_uid, pw.pw_gid)
        cluster = cls(bindir, root, free_port(), user)
        try:
            r = cluster._run("initdb", "-D", str(cluster.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                             "--no-sync", "--no-locale")
            if r.returncode != 0:
                raise RuntimeError(f"initdb failed: {r.stderr.strip() or r.stdout.strip()}")
            # Durability is pointless for a throwaway server; these make it several times faster.
            opts = (f"-c listen_addresses=127.0.0.1 -c port={cluster.port} -c unix_socket_directories={root} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
            r = cluster._run("pg_ctl", "-D", str(cluster.data), "-l", str(root / "server.log"), "-o", opts,
                             "-w", "-t", str(START_TIMEOUT_S), "start")
            if r.returncode != 0:
                log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
                raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} {log[-2000:]}")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        self.admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def admin(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database,
                             autocommit=True) as conn:
            conn.execute(sql)


# ------------------------------------------------------------------------------ session sharing

_lock = threading.Lock()
_cluster: PgCluster | None = None
_error: str | None = None
_users = 0
_names = itertools.count()


def acquire() -> PgCluster:
    """The session's cluster, started on first use. Raises RuntimeError with the reason if it cannot."""
    global _cluster, _error, _users
    with _lock:
        if _cluster is None and _error is None:
            try:
                _cluster = PgCluster.start()
                # Backup for exits that skip fixture teardown: the server must never outlive us.
                atexit.register(_cluster.stop)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                _error = str(exc)
        if _cluster is None:
            raise RuntimeError(_error)
        _users += 1
        return _cluster


def release() -> None:
    global _cluster, _users
    with _lock:
        _users -= 1
        if _users == 0 and _cluster is not None:
            _cluster.stop()
            _cluster = None


@pytest.fixture(scope="session")
def pg_cluster():
    """One PostgreSQL server for the session, shared by every module that imports this fixture."""
    try:
        cluster = acquire()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        release()


_test_db: dict[int, str] = {}


@pytest.fixture
def pg_url(pg_cluster):
    """A fresh, empty schema in the session's test database, made the connection's search_path.

    CREATE DATABASE costs ~0.4 s on PostgreSQL 15; a schema costs milliseconds, and everything the
    ledger does (tables, alembic_version, inspection) happens in the connection's current schema.
    """
    db = _test_db.get(id(pg_cluster))
    if db is None:
        db = _test_db[id(pg_cluster)] = f"mesh_test_{os.getpid()}"
        pg_cluster.create_database(db)
    schema = f"t{next(_names)}"
    pg_cluster.admin(f'CREATE SCHEMA "{schema}"', db)
    try:
        yield f"{pg_cluster.url(db)}?options=-csearch_path%3D{schema}"
    finally:
        pg_cluster.admin(f'DROP SCHEMA "{schema}" CASCADE', db)


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def ledger_url(request, tmp_path):
    """An empty database: a SQLite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        return
    yield request.getfixturevalue("pg_url")
