"""In-process timing: call each app with a prebuilt scope or environ, the way a server would,
many times; report the median over rounds of the mean time per request.

Every app is timed in two modes, alternating round by round. "direct" calls the app and
nothing else: ASGI apps are awaited in a loop on uvloop, so no event-loop iteration happens
unless the app itself waits; WSGI apps are called and their body joined. "server" runs each
request the way its server does, still in-process: an ASGI request in a new task awaited
before the next one (uvicorn's dispatch on uvloop), a WSGI request through gunicorn's own
request path (its parser, environ builder, start_response and response writer, writing to a
socket stand-in). The first says what the app costs alone, the second what share of a
server's per-request work it adds.

The responses land in a bounded window, like a server that writes each message and drops it:
nothing accumulates over a round to be scanned by the garbage collector, which stays on, so
per-request allocations cost their share of collections and no more. After each round every
response in the window is checked (status, body, Cache-Status) and the app's call counter says
whether the app behind the cache was reached, so a number is always for what its label says.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from tests.bench import subjects as s
from tests.bench.suite import Spec

__all__ = [
    "MODES",
    "WINDOW",
    "InProcessResult",
    "Plan",
    "run_asgi_specs",
    "run_wsgi_specs",
    "settle",
]

HOST = b"bench.local"
SETTLE_TIMEOUT = 10.0
# ASGI messages / WSGI responses kept for the checks: a dozen responses or more, few enough
# that the sink never grows with the round.
WINDOW = 32
MODES = ("direct", "server")


@dataclass(frozen=True)
class Plan:
    """How long to measure: `rounds` rounds of about `round_seconds` each (at least
    `min_calls` calls a round, at most `max_calls`)."""

    rounds: int
    round_seconds: float
    min_calls: int
    max_calls: int
    per_call_max: int  # calls a round when each call needs an untimed flush first


@dataclass(frozen=True)
class InProcessResult:
    spec: Spec
    us: float  # median over rounds of µs per request
    us_min: float  # fastest round
    spread: float  # (slowest - fastest) / median over rounds
    calls: int  # measured calls in total
    mode: str = "direct"  # one of MODES


class BenchCheckError(AssertionError):
    """A measured response was not what the subject claims to measure."""


def asgi_scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", HOST), (b"user-agent", b"bench/1"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def wsgi_environ(path: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": HOST.decode(),
        "HTTP_USER_AGENT": "bench/1",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


# ---- checks ---------------------------------------------------------------------------------
Response = tuple[int, dict[bytes, bytes], bytes]


def _check(spec: Spec, responses: list[Response], calls: int, requests: int) -> None:
    """`responses`: the last ones of the round; `calls`: how often the app behind the cache ran
    during the round's `requests`."""
    if not responses:
        raise BenchCheckError(f"{spec.name}: no response captured")
    for status, headers, body in responses:
        if status != 200:
            raise BenchCheckError(f"{spec.name}: status {status}")
        if body != s.BODY and json.loads(body) != s.PAYLOAD:
            raise BenchCheckError(f"{spec.name}: unexpected body {body[:60]!r}")
        if spec.cache_status:
            got = headers.get(b"cache-status", b"").decode()
            if spec.cache_status not in got:
                raise BenchCheckError(
                    f"{spec.name}: Cache-Status {got!r} lacks {spec.cache_status!r}"
                )
    if spec.behind is not None:
        if spec.app_called and calls != requests:
            raise BenchCheckError(f"{spec.name}: app ran {calls}x for {requests} misses")
        if not spec.app_called and calls:
            raise BenchCheckError(f"{spec.name}: app ran {calls}x during hits")


def _asgi_responses(window: Iterable[dict[str, Any]]) -> list[Response]:
    """The complete responses in a window of ASGI messages. A response whose start fell out of
    the window is skipped; one left unfinished at the end of the round is an error."""
    out: list[Response] = []
    status = 0
    headers: dict[bytes, bytes] = {}
    parts: list[bytes] | None = None  # None: outside a response
    for message in window:
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = {bytes(k).lower(): bytes(v) for k, v in message.get("headers", ())}
            parts = []
        elif message["type"] == "http.response.body" and parts is not None:
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                out.append((status, headers, b"".join(parts)))
                parts = None
    if parts is not None:
        raise BenchCheckError("the last response of the round was not finished")
    return out


def _round_sizes(plan: Plan, estimate_ns: float, per_call: bool, paths: int) -> int:
    calls = int(plan.round_seconds * 1e9 / max(estimate_ns, 1.0))
    calls = max(plan.min_calls, min(plan.max_calls, calls))
    calls = min(calls, plan.per_call_max) if per_call else calls
    # Whole cycles of the paths: every round starts where the warm-up left off.
    return max(paths, calls - calls % paths)


def _build(spec: Spec, tmp: Path) -> Any:
    """The subject's app, with its files in a directory of its own under `tmp`."""
    workdir = tmp / spec.name
    workdir.mkdir(parents=True, exist_ok=True)
    return spec.build(workdir)


def _logged(
    log: Callable[[str], None], spec: Spec, measured: list[InProcessResult]
) -> list[InProcessResult]:
    log(f"  {spec.name:<22} " + ", ".join(f"{r.us:9.2f} µs/request {r.mode}" for r in measured))
    return measured


def _alternating(rounds: int) -> Iterator[str]:
    """The modes, round by round, in an order reversed every other round: a drift in machine
    load then lands on both."""
    for i in range(rounds):
        yield from MODES if i % 2 == 0 else MODES[::-1]


def _calls(spec: Spec) -> int:
    """Calls so far of the app behind the subject's cache (0 for subjects with none)."""
    return s.CALLS[spec.behind] if spec.behind else 0


def _summarise(spec: Spec, rounds_ns: list[float], calls: int, mode: str) -> InProcessResult:
    median = statistics.median(rounds_ns)
    return InProcessResult(
        spec=spec,
        us=median / 1000,
        us_min=min(rounds_ns) / 1000,
        spread=(max(rounds_ns) - min(rounds_ns)) / median if median else 0.0,
        calls=calls,
        mode=mode,
    )


# ---- ASGI -------------------------------------------------------------------------------------
async def settle(cache: Any) -> None:
    """Wait until demotions queued by the warm-up requests have been written."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        stats = await cache.stats()
        if not stats.get("pending_demotions", 0):
            return
        await asyncio.sleep(0.01)
    raise BenchCheckError("demotions still pending after warm-up")


async def _measure_asgi(spec: Spec, app: Any, plan: Plan) -> list[InProcessResult]:
    window: deque[dict[str, Any]] = deque(maxlen=WINDOW)
    keep = window.append

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        keep(message)

    cache = getattr(app, "cache", None)
    for path in spec.warm:
        await app(asgi_scope(path), receive, send)
    if cache is not None:
        await settle(cache)
    _asgi_responses(window)  # the warm-up answers are not checked: they are misses
    window.clear()
    scopes = [asgi_scope(path) for path in spec.paths]
    flush: Callable[[], Awaitable[None]] | None = None
    if spec.flush is not None:
        assert cache is not None, f"{spec.name}: flushing needs a tiercache middleware"
        tier = spec.flush
        flush = lambda: cache.flush(tier=tier)  # noqa: E731
    create_task = asyncio.get_running_loop().create_task

    async def one_round(n: int, mode: str) -> float:
        order = [scopes[i % len(scopes)] for i in range(n)]
        task = mode == "server"
        if flush is None:
            # Two loops rather than a test per request: the mode must cost nothing itself.
            t0 = time.perf_counter_ns()
            if task:
                for scope in order:
                    await create_task(app(scope.copy(), receive, send))
            else:
                for scope in order:
                    await app(scope.copy(), receive, send)
            return (time.perf_counter_ns() - t0) / n
        total = 0
        for scope in order:
            await flush()
            t0 = time.perf_counter_ns()
            if task:
                await create_task(app(scope.copy(), receive, send))
            else:
                await app(scope.copy(), receive, send)
            total += time.perf_counter_ns() - t0
        return total / n

    sizes: dict[str, int] = {}
    for mode in MODES:
        estimate = await one_round(len(scopes) * 25, mode)
        sizes[mode] = _round_sizes(plan, estimate, flush is not None, len(scopes))
    window.clear()
    rounds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for mode in _alternating(plan.rounds):
        before = _calls(spec)
        gc.collect()
        rounds[mode].append(await one_round(sizes[mode], mode))
        _check(spec, _asgi_responses(window), _calls(spec) - before, sizes[mode])
        window.clear()
    return [_summarise(spec, rounds[mode], sizes[mode] * plan.rounds, mode) for mode in MODES]


async def _run_asgi(
    specs: list[Spec], tmp: Path, plan: Plan, log: Callable[[str], None]
) -> list[InProcessResult]:
    results = []
    for spec in specs:
        app = _build(spec, tmp)
        try:
            measured = await _measure_asgi(spec, app, plan)
        finally:
            await _close_asgi(app)
        results += _logged(log, spec, measured)
    return results


async def _close_asgi(app: Any) -> None:
    cache = getattr(app, "cache", None)
    if cache is not None and hasattr(cache, "close"):
        await cache.close()
    aclose = getattr(app, "aclose", None)
    if aclose is not None:
        await aclose()


def run_asgi_specs(
    specs: list[Spec], tmp: Path, plan: Plan, log: Callable[[str], None] = print
) -> list[InProcessResult]:
    """Both modes of every spec, on uvloop: the loop uvicorn runs the apps on."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run_asgi(specs, tmp, plan, log))


# ---- WSGI -------------------------------------------------------------------------------------
def _settle_sync(cache: Any) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        if not cache.stats_sync().get("pending_demotions", 0):
            return
        time.sleep(0.01)
    raise BenchCheckError("demotions still pending after warm-up")


class _SocketStandIn:
    """What gunicorn's response writer needs of a socket; the bytes go nowhere."""

    def sendall(self, data: bytes) -> None:
        return None


def _gunicorn_request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST.decode()}\r\nUser-Agent: bench/1\r\n"
        "Accept: */*\r\n\r\n"
    ).encode()


def _measure_wsgi(spec: Spec, app: Any, plan: Plan) -> list[InProcessResult]:
    from gunicorn.config import Config
    from gunicorn.http import wsgi as gunicorn_wsgi
    from gunicorn.http.message import Request
    from gunicorn.http.unreader import IterUnreader

    window: deque[tuple[str, list[tuple[str, str]], bytes]] = deque(maxlen=WINDOW)
    keep = window.append
    head: list[Any] = [None, None]

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        head[0] = status
        head[1] = headers
        return None

    def call(environ: dict[str, Any]) -> None:
        result = app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        keep((head[0], head[1], body))

    cfg = Config()
    sock = _SocketStandIn()
    peer, server = ("127.0.0.1", 50000), ("127.0.0.1", 8000)

    def serve(raw: bytes) -> None:
        """gunicorn's sync worker's handle_request, minus the socket and the access log."""
        request = Request(cfg, IterUnreader([raw]), peer, 1)
        response, environ = gunicorn_wsgi.create(request, sock, peer, server, cfg)

        def recording_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            head[0], head[1] = status, headers
            return response.start_response(status, headers, exc_info)

        result = app(environ, recording_start_response)
        parts = []
        try:
            for item in result:
                response.write(item)
                parts.append(item)
            response.close()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        keep((head[0], head[1], b"".join(parts)))

    def decoded() -> list[Response]:
        return [
            (int(status.split(" ", 1)[0]), {k.lower().encode(): v.encode() for k, v in hs}, body)
            for status, hs, body in window
        ]

    cache = getattr(app, "cache", None)
    for path in spec.warm:
        call(wsgi_environ(path))
    if cache is not None:
        _settle_sync(cache)
    window.clear()
    environs = [wsgi_environ(path) for path in spec.paths]
    requests = [_gunicorn_request(path) for path in spec.paths]
    tier = spec.flush

    def one_round(n: int, mode: str) -> float:
        direct = mode == "direct"
        inputs: list[Any] = environs if direct else requests
        order = [inputs[i % len(inputs)] for i in range(n)]
        if tier is None:
            t0 = time.perf_counter_ns()
            if direct:
                for environ in order:
                    call(environ.copy())
            else:
                for raw in order:
                    serve(raw)
            return (time.perf_counter_ns() - t0) / n
        total = 0
        assert cache is not None, f"{spec.name}: flushing needs a tiercache middleware"
        for item in order:
            cache.flush_sync(tier)
            t0 = time.perf_counter_ns()
            if direct:
                call(item.copy())
            else:
                serve(item)
            total += time.perf_counter_ns() - t0
        return total / n

    sizes: dict[str, int] = {}
    for mode in MODES:
        estimate = one_round(len(environs) * 25, mode)
        sizes[mode] = _round_sizes(plan, estimate, tier is not None, len(environs))
    window.clear()
    rounds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for mode in _alternating(plan.rounds):
        before = _calls(spec)
        gc.collect()
        rounds[mode].append(one_round(sizes[mode], mode))
        _check(spec, decoded(), _calls(spec) - before, sizes[mode])
        window.clear()
    return [_summarise(spec, rounds[mode], sizes[mode] * plan.rounds, mode) for mode in MODES]


def run_wsgi_specs(
    specs: list[Spec], tmp: Path, plan: Plan, log: Callable[[str], None] = print
) -> list[InProcessResult]:
    results = []
    for spec in specs:
        app = _build(spec, tmp)
        try:
            measured = _measure_wsgi(spec, app, plan)
        finally:
            cache = getattr(app, "cache", None)
            if cache is not None:
                cache.close_sync()
        results += _logged(log, spec, measured)
    return results
