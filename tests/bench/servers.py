"""Throughput under a real server: uvicorn (uvloop, httptools, 1 worker) for ASGI subjects,
gunicorn (1 sync worker) for WSGI ones, each a subprocess on a free 127.0.0.1 port, loaded by
wrk when it is on PATH, else by a Python client in another process.

The load generator and the server share the machine's CPUs, so the rate of one subject moves
by tens of percent from one minute to the next. All the servers of a kind therefore run at
once (idle while another is loaded) and are loaded in turn, in several short rounds, the order
reversed every other round: each subject's rounds meet the same drift as the raw app's, and the
median over rounds is compared with the raw app's median. Every server is stopped at the end of
its kind, whatever happens.

`measure_served_dry_load` times hot hits through one uvicorn process, one request at a time
from a client process, while that server's cache absorbs demotions into its dry tier: the
dry-load target as a client sees it, beside store.measure_dry_load's in-process figure."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import json
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

from tests.bench.store import _get_from, pct
from tests.bench.subjects import DRY_LOAD_CONTROL
from tests.bench.suite import DRY_LOAD, Spec

__all__ = [
    "ServedDryLoadResult",
    "ServerResult",
    "free_port",
    "load_tool",
    "measure_served_dry_load",
    "run_server_specs",
]

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


# ---- hot hits through uvicorn while the dry tier absorbs demotions ---------------------------
@dataclass(frozen=True)
class ServedDryLoadResult:
    """store.DryLoadResult as a client sees it: each hot-hit request timed from the client
    process, send to last byte, over loopback to uvicorn."""

    seconds: float  # busy phases, in all (the server's clock)
    target_rate: float  # entries/s the server's writer pushes through hot towards dry
    request_rate: float | None  # hot-hit requests/s the client paced itself to; None: back to back
    requests: int  # timed, quiet and busy together
    puts_per_s: float
    demotions_per_s: float  # stats(): hot->cold and cold->dry both count
    dry_writes_per_s: float
    dropped: int
    quiet_p50_us: float
    quiet_p99_us: float
    busy_p50_us: float
    busy_p99_us: float
    not_hot: int  # answers without `detail=hot` (busy and quiet)
    errors: int  # answers other than 200
    unsettled: int  # quiet phases that began with demotions still queued
    # CPUs the server process used (all its threads: CPU seconds per second), by phase
    server_cpu_quiet: float = 0.0
    server_cpu_busy: float = 0.0
    pair_ratios: tuple[float, ...] = ()  # busy p99 / quiet p99 of each neighbouring pair
    server: str = "uvicorn"

    @property
    def p99_ratio(self) -> float:
        return self.busy_p99_us / self.quiet_p99_us


_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:[ \t]*(\d+)")


def _exchange(sock: socket.socket, request: bytes) -> tuple[bytes, bytes]:
    """One request on a keep-alive connection: (head, body). Nothing is pipelined, so the
    answer ends at its Content-Length."""
    sock.sendall(request)
    data = sock.recv(65536)
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            length = _CONTENT_LENGTH.search(data, 0, end + 2)
            if length is None:
                raise ValueError(f"no Content-Length: {data[:end]!r}")
            total = end + 4 + int(length.group(1))
            if len(data) >= total:
                return data[:end], data[end + 4 : total]
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk


def _served_dry_phases(
    port: int, phases: int, phase_seconds: float, request_rate: float | None
) -> dict[str, Any]:
    """Quiet and busy phases in turn against the dry-load server, each hot hit timed alone.
    Runs in its own process (a fresh heap, its collector off) on one connection, one request
    at a time, so the server never has two to queue: back to back (a closed loop), or paced
    to `request_rate`."""
    gc.disable()  # the client's own pauses would land on random requests of either phase
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    item = b"GET /item HTTP/1.1\r\nHost: bench.local\r\n\r\n"
    perf_ns, monotonic, sleep = time.perf_counter_ns, time.monotonic, time.sleep
    exchange = _exchange
    not_hot = errors = unsettled = 0

    def control(command: str) -> dict[str, Any]:
        request = f"GET {DRY_LOAD_CONTROL}{command} HTTP/1.1\r\nHost: bench.local\r\n\r\n"
        head, body = exchange(sock, request.encode())
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{command}: {head!r}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def timed(seconds: float) -> list[float]:
        nonlocal not_hot, errors
        latencies: list[float] = []
        heads: list[bytes] = []
        interval = 1.0 / request_rate if request_rate else 0.0
        next_at = start = monotonic()
        deadline = start + seconds
        while (now := monotonic()) < deadline:
            if next_at > now:
                sleep(next_at - now)
            t0 = perf_ns()
            head, _ = exchange(sock, item)
            latencies.append((perf_ns() - t0) / 1000)
            heads.append(head)
            # No catching up after a slow answer: a burst would measure queueing.
            next_at = max(next_at + interval, monotonic())
        for head in heads:  # checked after the phase, off the timed path
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
            elif b"detail=hot" not in head:
                not_hot += 1
        return latencies

    try:
        for _ in range(3):  # the server's start-up probe stored /item; these hit it
            head, _ = exchange(sock, item)
        if b"detail=hot" not in head:
            raise RuntimeError(f"/item is not a hot hit: {head!r}")
        before = control("quiet")
        quiet: list[list[float]] = []
        busy: list[list[float]] = []
        for _ in range(phases):
            # Untimed: a quiet phase with the drain still writing would not be quiet.
            if not control("quiet")["settled"]:
                unsettled += 1
            quiet.append(timed(phase_seconds))
            control("busy")
            busy.append(timed(phase_seconds))
        after = control("quiet")
    finally:
        sock.close()
    return {
        "quiet": quiet, "busy": busy, "before": before, "after": after,
        "not_hot": not_hot, "errors": errors, "unsettled": unsettled,
    }  # fmt: skip


def _served_dry_child(queue: multiprocessing.Queue[Any], *args: Any) -> None:
    queue.put(_served_dry_phases(*args))


def measure_served_dry_load(
    tmp: Path, seconds: float, *, phases: int = 12, request_rate: float | None = None
) -> ServedDryLoadResult:
    """`phases` quiet and as many busy phases, `seconds` of busy phase in all, against one
    uvicorn process running `suite.DRY_LOAD` (its writer at 5,000 puts/s when busy)."""
    port = free_port()
    phase_seconds = seconds / phases
    context = multiprocessing.get_context("spawn")
    with _server(DRY_LOAD, port, tmp) as server:
        queue: multiprocessing.Queue[Any] = context.Queue()
        args = (queue, port, phases, phase_seconds, request_rate)
        proc = context.Process(target=_served_dry_child, args=args)
        proc.start()
        try:
            # A quiet phase waits at most 10 s for the queue; beyond that something hangs.
            data = _get_from(proc, queue, 2 * seconds + 11 * phases + 30)
        finally:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    before, after = data["before"], data["after"]
    busy_seconds = after["busy_seconds"] - before["busy_seconds"]
    quiet = [x for phase in data["quiet"] for x in phase]
    busy = [x for phase in data["busy"] for x in phase]
    return ServedDryLoadResult(
        seconds=busy_seconds,
        target_rate=after["rate"],
        request_rate=request_rate,
        requests=len(quiet) + len(busy),
        puts_per_s=(after["written"] - before["written"]) / busy_seconds,
        demotions_per_s=(after["demotions"] - before["demotions"]) / busy_seconds,
        dry_writes_per_s=(after["dry_entries"] - before["dry_entries"]) / busy_seconds,
        dropped=after["demotions_dropped"] - before["demotions_dropped"],
        quiet_p50_us=pct(quiet, 0.5),
        quiet_p99_us=pct(quiet, 0.99),
        busy_p50_us=pct(busy, 0.5),
        busy_p99_us=pct(busy, 0.99),
        not_hot=data["not_hot"],
        errors=data["errors"],
        unsettled=data["unsettled"],
        server_cpu_quiet=(after["quiet_cpu"] - before["quiet_cpu"])
        / max(1e-9, after["quiet_seconds"] - before["quiet_seconds"]),
        server_cpu_busy=(after["busy_cpu"] - before["busy_cpu"]) / busy_seconds,
        pair_ratios=tuple(
            pct(b, 0.99) / pct(q, 0.99) for q, b in zip(data["quiet"], data["busy"], strict=True)
        ),
        server=server,
    )
