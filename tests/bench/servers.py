"""Throughput under a real server: uvicorn (uvloop, httptools, 1 worker) for ASGI subjects,
gunicorn (1 sync worker) for WSGI ones, each a subprocess on a free 127.0.0.1 port, loaded by
wrk when it is on PATH, else by a Python client in another process.

The load generator and the server share the machine's CPUs, so the rate of one subject moves
by tens of percent from one minute to the next. All the servers of a kind therefore run at
once (idle while another is loaded) and are loaded in turn, in several short rounds, the order
reversed every other round: each subject's rounds meet the same drift as the raw app's, and the
median over rounds is compared with the raw app's median. Every server is stopped at the end of
its kind, whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench.store import _get_from
from tests.bench.suite import Spec

__all__ = ["ServerResult", "free_port", "load_tool", "run_server_specs"]

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ServerResult:
    spec: Spec
    server: str  # "uvicorn" | "gunicorn"
    rps: float  # median over rounds
    p50_ms: float | None  # median over rounds
    p99_ms: float | None  # median over rounds
    errors: int  # non-2xx answers and socket errors, all rounds
    tool: str
    rounds: tuple[float, ...] = ()  # req/s of each round, in the order run

    @property
    def spread(self) -> float:
        """(fastest - slowest round) / median."""
        if not self.rounds or not self.rps:
            return 0.0
        return (max(self.rounds) - min(self.rounds)) / self.rps


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load_tool() -> str:
    return "wrk" if shutil.which("wrk") else "python-client"


def _command(spec: Spec, port: int) -> tuple[str, list[str]]:
    if spec.kind == "asgi":
        return "uvicorn", [
            sys.executable, "-m", "uvicorn", "tests.bench.serve:app",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--loop", "uvloop", "--http", "httptools", "--ws", "none",
            "--no-access-log", "--log-level", "warning", "--lifespan", "auto",
        ]  # fmt: skip
    return "gunicorn", [
        sys.executable, "-m", "gunicorn", "tests.bench.serve:app",
        "--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "sync",
        "--log-level", "warning",
    ]  # fmt: skip


def _get(port: int, path: str = "/item") -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": "bench.local"})
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


@contextlib.contextmanager
def _server(spec: Spec, port: int, tmp: Path) -> Iterator[str]:
    name, command = _command(spec, port)
    env = {
        **os.environ,
        "TIERCACHE_BENCH_SUBJECT": spec.name,
        "TIERCACHE_BENCH_TMP": str(tmp / f"server-{spec.name}"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log = (tmp / f"server-{spec.name}.log").open("wb")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} for {spec.name} exited: see {log.name}")
            try:
                _get(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} for {spec.name} did not start") from None
                time.sleep(0.05)
        yield name
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---- load generators --------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


Load = tuple[float, float | None, float | None, int]  # req/s, p50 ms, p99 ms, errors


def _wrk(port: int, seconds: float, connections: int, threads: int) -> Load:
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--latency", "-H", "Host: bench.local", f"http://127.0.0.1:{port}/item",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True)
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if sockets:
        errors += sum(int(x) for x in sockets.groups())
    return rps, _ms(p50.group(1)) if p50 else None, _ms(p99.group(1)) if p99 else None, errors


async def _client(port: int, seconds: float, connections: int) -> tuple[int, int, list[float]]:
    request = b"GET /item HTTP/1.1\r\nHost: bench.local\r\n\r\n"
    deadline = time.monotonic() + seconds
    done = errors = 0
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - t0) * 1000)
                if not head.startswith(b"HTTP/1.1 2"):
                    errors += 1
                done += 1
                if b"connection: close" in head.lower():
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return done, errors, latencies


def _client_process(
    port: int, seconds: float, connections: int, queue: multiprocessing.Queue[Any]
) -> None:
    queue.put(asyncio.run(_client(port, seconds, connections)))


def _python_load(port: int, seconds: float, connections: int) -> Load:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[Any] = context.Queue()
    proc = context.Process(target=_client_process, args=(port, seconds, connections, queue))
    proc.start()
    try:
        done, errors, latencies = _get_from(proc, queue, seconds + 30)
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    latencies.sort()

    def pick(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    return done / seconds, pick(0.5), pick(0.99), errors


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _warm(spec: Spec, name: str, port: int) -> None:
    for _ in range(3):  # the first request stores, the next ones hit
        status, headers = _get(port)
    if status != 200:
        raise RuntimeError(f"{spec.name} under {name}: status {status}")
    if spec.cache_status and spec.cache_status not in headers.get("cache-status", ""):
        raise RuntimeError(
            f"{spec.name} under {name}: Cache-Status {headers.get('cache-status')!r}"
        )


def _run_kind(
    specs: list[Spec], tmp: Path, *, seconds: float, rounds: int, connections: int, threads: int,
    log: Callable[[str], None], tool: str, fail: Callable[[Spec, Exception], None],
) -> list[ServerResult]:  # fmt: skip
    loads: dict[str, list[Load]] = {}
    live: list[tuple[Spec, str, int]] = []
    with contextlib.ExitStack() as stack:
        for spec in specs:
            port = free_port()
            try:
                name = stack.enter_context(_server(spec, port, tmp))
                _warm(spec, name, port)
            except Exception as exc:  # one broken subject must not cost the others
                fail(spec, exc)
                continue
            live.append((spec, name, port))
            loads[spec.name] = []
        per_round = seconds / rounds
        for i in range(rounds):
            for spec, _name, port in live if i % 2 == 0 else live[::-1]:
                if spec.name not in loads:
                    continue  # failed in an earlier round
                try:
                    if tool == "wrk":
                        load = _wrk(port, per_round, connections, threads)
                    else:
                        load = _python_load(port, per_round, connections)
                except Exception as exc:
                    fail(spec, exc)
                    del loads[spec.name]
                    continue
                loads[spec.name].append(load)
    results = []
    for spec, name, _port in live:
        if spec.name not in loads:
            continue
        runs = loads[spec.name]
        rps = [r[0] for r in runs]
        result = ServerResult(
            spec, name, statistics.median(rps), _median([r[1] for r in runs]),
            _median([r[2] for r in runs]), sum(r[3] for r in runs), tool, tuple(rps),
        )  # fmt: skip
        log(
            f"  {spec.name:<22} {name:<8} {result.rps:10.0f} req/s "
            f"(median of {len(rps)} rounds, spread {result.spread:.0%})"
        )
        results.append(result)
    return results


def run_server_specs(
    specs: list[Spec], tmp: Path, *, seconds: float, rounds: int = 1, connections: int = 32,
    threads: int = 2, log: Callable[[str], None] = print, tool: str | None = None,
    skipped: list[str] | None = None,
) -> list[ServerResult]:  # fmt: skip
    """Each spec loaded for `seconds` in all, in `rounds` rounds alternating with the other specs
    of its kind. A subject that fails is named in `skipped` and the others go on; without
    `skipped` its error is raised."""
    tool = tool or load_tool()

    def fail(spec: Spec, exc: Exception) -> None:
        if skipped is None:
            raise exc
        skipped.append(f"{spec.name} server: {type(exc).__name__}: {exc}")

    results = []
    for kind in ("asgi", "wsgi"):
        group = [spec for spec in specs if spec.kind == kind]
        if group:
            results += _run_kind(
                group, tmp, seconds=seconds, rounds=rounds, connections=connections,
                threads=threads, log=log, tool=tool, fail=fail,
            )  # fmt: skip
    return results
