"""Real servers for the tests, started on 127.0.0.1 free ports from binaries on PATH.

memcached, redis-server, PostgreSQL (the local server on 127.0.0.1:5432 when it accepts
connections, else initdb/pg_ctl in a temp dir) and moto's S3 server. Every wait is a
bounded loop. A missing program raises `ServiceUnavailable` naming it and the install
script; tests/conftest.py turns that into a failure, or a skip with TIERCACHE_SKIP_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PostgresServer",
    "S3Server",
    "ServerProcess",
    "ServiceUnavailable",
    "free_port",
    "require_program",
    "start_memcached",
    "start_postgres",
    "start_redis",
    "start_s3",
]

HOST = "127.0.0.1"
READY_TIMEOUT = 15.0
INSTALL_HINT = "bash .ci/install-services.sh"
S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing"
S3_REGION = "us-east-1"


class ServiceUnavailable(RuntimeError):
    """A server the tests need cannot be started here."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def require_program(program: str, *extra_dirs: str) -> str:
    found = shutil.which(program)
    for directory in extra_dirs:
        if found is None and Path(directory, program).is_file():
            found = str(Path(directory, program))
    if found is None:
        raise ServiceUnavailable(
            f"`{program}` is not on PATH: install it with `{INSTALL_HINT}` "
            "(or set TIERCACHE_SKIP_SERVICES=1 to skip the tests that need it)"
        )
    return found


def _ask(port: int, request: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(request)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


def _dying_with_us(argv: list[str]) -> list[str]:
    """`argv` run so that the server gets SIGTERM when this test process dies, even killed:
    util-linux's setpriv sets the parent-death signal and execs it (no Python runs in the
    forked child, which a preexec_fn would need). Where setpriv is missing, `argv` as is."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


def _wait_until(ready: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise ServiceUnavailable(f"{what} exited with {proc.returncode}: {output[-2000:]}")
        time.sleep(0.05)
    raise ServiceUnavailable(f"{what} not ready after {READY_TIMEOUT:.0f} s")


@dataclass
class ServerProcess:
    """A server we started; `kill()` and `start()` again reuse the same port (fault tests)."""

    name: str
    port: int
    argv: list[str]
    ready: Callable[[], bool]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            _dying_with_us(self.argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_until(self.ready, f"{self.name} on port {self.port}", self.proc)
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean shutdown, connections drop."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def restart(self) -> None:
        self.kill()
        for _ in range(100):  # the port can linger briefly after a kill
            try:
                self.start()
                return
            except ServiceUnavailable:
                time.sleep(0.1)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def start_memcached(port: int | None = None) -> ServerProcess:
    binary = require_program("memcached")
    port = port or free_port()
    argv = [binary, "-l", HOST, "-p", str(port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]
    ready = lambda: _ask(port, b"version\r\n", b"VERSION")  # noqa: E731
    return ServerProcess("memcached", port, argv, ready).start()


def start_redis(port: int | None = None) -> ServerProcess:
    binary = require_program("redis-server")
    port = port or free_port()
    argv = [
        binary,
        "--bind", HOST,
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", tempfile.gettempdir(),
    ]  # fmt: skip
    ready = lambda: _ask(port, b"PING\r\n", b"+PONG")  # noqa: E731
    return ServerProcess("redis-server", port, argv, ready).start()


# ---- PostgreSQL -----------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A fresh database for this session, on the local server or a private cluster."""

    dsn: str
    admin_dsn: str
    database: str
    cluster_dir: Path | None = None
    pg_ctl: str | None = None
    run_as: list[str] = field(default_factory=list)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            _run_sql(self.admin_dsn, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        if self.cluster_dir is not None and self.pg_ctl is not None:
            subprocess.run(
                [*self.run_as, self.pg_ctl, "-D", str(self.cluster_dir), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
                timeout=30,
            )
            shutil.rmtree(self.cluster_dir.parent, ignore_errors=True)


def _run_sql(dsn: str, sql: str) -> Any:
    import asyncpg

    async def run() -> Any:
        conn = await asyncpg.connect(dsn, timeout=3)
        try:
            return await conn.execute(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def _accepts(dsn: str) -> bool:
    try:
        _run_sql(dsn, "SELECT 1")
    except Exception:
        return False
    return True


def start_postgres() -> PostgresServer:
    database = f"tiercache_test_{uuid.uuid4().hex[:12]}"
    user = os.environ.get("PGUSER", "postgres")
    local = f"postgresql://{user}@{HOST}:5432/postgres"
    if _accepts(local):
        _run_sql(local, f'CREATE DATABASE "{database}"')
        return PostgresServer(
            dsn=f"postgresql://{user}@{HOST}:5432/{database}", admin_dsn=local, database=database
        )
    return _start_private_postgres(database)


def _pg_bin_dirs() -> list[str]:
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return []
    return [str(path / "bin") for path in sorted(root.iterdir(), reverse=True)]


def _start_private_postgres(database: str) -> PostgresServer:
    initdb = require_program("initdb", *_pg_bin_dirs())
    pg_ctl = require_program("pg_ctl", *_pg_bin_dirs())
    base = Path(tempfile.mkdtemp(prefix="tiercache-pg-"))
    data = base / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        owner = "postgres"
        try:
            entry = pwd.getpwnam(owner)
        except KeyError as exc:
            raise ServiceUnavailable(
                f"initdb cannot run as root and there is no `postgres` user: {INSTALL_HINT}"
            ) from exc
        os.chown(base, entry.pw_uid, entry.pw_gid)
        run_as = ["runuser", "-u", owner, "--"]
    port = free_port()
    steps = [
        [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
        [
            *run_as, pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "-t", "30",
            "-o", f"-p {port} -k {base} -c listen_addresses={HOST} -c fsync=off", "start",
        ],
    ]  # fmt: skip
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            raise ServiceUnavailable(
                f"{argv[len(run_as)]} failed: {done.stdout.decode()}{done.stderr.decode()}"
            )
    admin = f"postgresql://postgres@{HOST}:{port}/postgres"
    _wait_until(lambda: _accepts(admin), f"postgres on port {port}", None)
    _run_sql(admin, f'CREATE DATABASE "{database}"')
    return PostgresServer(
        dsn=f"postgresql://postgres@{HOST}:{port}/{database}",
        admin_dsn=admin,
        database=database,
        cluster_dir=data,
        pg_ctl=pg_ctl,
        run_as=run_as,
    )


# ---- S3 (moto) ------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint_url: str
    server: Any
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    region: str = S3_REGION

    def config(self, bucket: str, prefix: str = "tiercache/") -> dict[str, Any]:
        """The `s3:` config section for one test's bucket."""
        return {
            "endpoint_url": self.endpoint_url,
            "bucket": bucket,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "prefix": prefix,
        }

    def stop(self) -> None:
        self.server.stop()


def start_s3() -> S3Server:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise ServiceUnavailable(
            f"moto[server] is not installed: pip install -e '.[dev]' ({exc})"
        ) from exc
    # moto serves through werkzeug, which logs every request to stderr.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    request = b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    _wait_until(lambda: _ask(port, request, b"HTTP/1."), f"moto S3 on port {port}", None)
    return S3Server(endpoint_url=f"http://{HOST}:{port}", server=server)
