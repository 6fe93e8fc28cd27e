"""`python -m tests.bench [--smoke] [--out DIR] [--no-servers]`: run the suite, print the
summary, write benchmarks.md and benchmarks.png (into docs/ for a full run; a smoke run writes
into a temp directory unless --out is given)."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pickle
import pstats
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tests.bench import inprocess, report, servers, store
from tests.bench.suite import SPECS, by_name

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
CHART = "benchmarks.png"
DOC = "benchmarks.md"
ANALYSIS = Path(__file__).with_name("analysis.md")  # hand-written findings appended to the doc


@dataclass(frozen=True)
class Settings:
    plan: inprocess.Plan
    server_seconds: float  # load per subject, in all
    server_rounds: int  # ... split into this many rounds alternating with the other subjects
    server_subjects: tuple[str, ...] | None  # None: every spec marked server
    memory_entries: int
    budget_writes: int
    budget_every: int
    hot_max: int
    cold_max: int
    eviction_keys: int
    eviction_requests: int
    dry_seconds: float
    served_dry_seconds: float  # busy phases in all, as long quiet, through uvicorn
    served_dry_phases: int
    profile_calls: int


FULL = Settings(
    plan=inprocess.Plan(rounds=11, round_seconds=0.08, min_calls=200, max_calls=200_000,
                        per_call_max=300),
    server_seconds=15, server_rounds=5, server_subjects=None, memory_entries=1_000_000,
    budget_writes=60_000, budget_every=500, hot_max=2 * 1024**2, cold_max=8 * 1024**2,
    eviction_keys=100_000, eviction_requests=1_000_000, dry_seconds=12.0,
    served_dry_seconds=15.0, served_dry_phases=12, profile_calls=50_000,
)  # fmt: skip
SMOKE = Settings(
    plan=inprocess.Plan(rounds=3, round_seconds=0.002, min_calls=100, max_calls=200,
                        per_call_max=60),
    server_seconds=2, server_rounds=2,  # wrk runs whole seconds: two rounds is the least
    server_subjects=("raw-asgi", "tiercache-hot-asgi", "raw-wsgi", "tiercache-hot-wsgi"),
    memory_entries=5_000, budget_writes=2_000, budget_every=100, hot_max=256 * 1024,
    cold_max=512 * 1024, eviction_keys=2_000, eviction_requests=20_000, dry_seconds=0.3,
    served_dry_seconds=0.4, served_dry_phases=2, profile_calls=500,
)  # fmt: skip


def _log(message: str) -> None:
    print(message, flush=True)


def profile_hot_hit(tmp: Path, calls: int) -> str:
    """cProfile over `calls` in-process hot hits through CacheMiddleware (ASGI)."""
    spec = by_name("tiercache-hot-asgi")
    app: Any = spec.build(tmp / "profile")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def main() -> str:
        scope = inprocess.asgi_scope("/item")
        await app(scope.copy(), receive, send)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            await app(scope.copy(), receive, send)
        profiler.disable()
        await app.cache.close()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats("tottime").print_stats(14)
        lines = [line for line in out.getvalue().splitlines() if line.strip()]
        start = next(i for i, line in enumerate(lines) if "ncalls" in line)
        return f"{calls:,} hot hits\n" + "\n".join(lines[start:])

    return asyncio.run(main())


def _part(run: report.Run, name: str, fn: Callable[[], T]) -> T | None:
    """One section of the run; a failure is recorded and the rest still runs."""
    _log(f"{name}...")
    try:
        return fn()
    except Exception as exc:  # a broken subject must not cost the other sections
        traceback.print_exc()
        run.skipped.append(f"{name}: {type(exc).__name__}: {exc}")
        return None


def run_suite(settings: Settings, *, smoke: bool, with_servers: bool, command: str) -> report.Run:
    run = report.Run(command=command, smoke=smoke, started=time.strftime("%Y-%m-%d %H:%M %Z"))
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tiercache-bench-"))
    try:
        _log("in-process:")
        for spec in SPECS:  # one at a time: a failing subject is skipped, not its whole kind
            runner = inprocess.run_asgi_specs if spec.kind == "asgi" else inprocess.run_wsgi_specs
            measured = _part(run, spec.name, partial(runner, [spec], tmp, settings.plan, _log))
            run.inprocess.extend(measured or [])
        if with_servers:
            wanted = settings.server_subjects
            chosen = [s for s in SPECS if s.server and (wanted is None or s.name in wanted)]
            _log(f"under servers ({servers.load_tool()}):")
            load = partial(
                servers.run_server_specs, chosen, tmp, seconds=settings.server_seconds,
                rounds=settings.server_rounds, log=_log, skipped=run.skipped,
            )  # fmt: skip
            run.servers.extend(_part(run, "servers", load) or [])
        else:
            run.skipped.append("servers: --no-servers")
        memory = partial(store.measure_memory, settings.memory_entries, tmp)
        run.memory = _part(run, f"memory at {settings.memory_entries:,} entries", memory)
        budget = partial(
            store.measure_budget, settings.budget_writes, tmp / "budget",
            hot_max=settings.hot_max, cold_max=settings.cold_max, every=settings.budget_every,
        )  # fmt: skip
        run.budget = _part(run, "budget under churn", budget)
        traces = partial(store.measure_eviction, settings.eviction_keys, settings.eviction_requests)
        run.eviction = _part(run, "eviction traces", traces) or []
        dry = partial(store.measure_dry_load, settings.dry_seconds, tmp / "dry-load")
        run.dry = _part(run, "hot hits under dry demotions", dry)
        if with_servers:
            served_dry = partial(
                servers.measure_served_dry_load, tmp, settings.served_dry_seconds,
                phases=settings.served_dry_phases,
            )  # fmt: skip
            run.served_dry = _part(run, "hot hits through uvicorn under dry demotions", served_dry)
        else:
            run.skipped.append("hot hits through uvicorn under dry demotions: --no-servers")
        profile = partial(profile_hot_hit, tmp, settings.profile_calls)
        run.profile = _part(run, "profile", profile) or ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    run.seconds = time.monotonic() - t0
    return run


def write(run: report.Run, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    report.chart(run, out / CHART)
    analysis = ANALYSIS.read_text(encoding="utf-8") if ANALYSIS.exists() and not run.smoke else ""
    doc = out / DOC
    doc.write_text(report.markdown(run, CHART, analysis), encoding="utf-8")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few hundred iterations, seconds")
    parser.add_argument("--out", type=Path, help="where benchmarks.md/.png go")
    parser.add_argument("--no-servers", action="store_true", help="skip uvicorn/gunicorn runs")
    parser.add_argument(
        "--render", type=Path, help="rewrite the doc from a saved run (results.pickle) only"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        with args.render.open("rb") as saved:
            run = pickle.load(saved)  # our own file, from a previous run
        doc = write(run, args.out or ROOT / "docs")
        print(report.summary(run))
        print(f"\nwrote {doc}")
        return 0
    command = "python -m tests.bench" + (" --smoke" if args.smoke else "")
    run = run_suite(
        SMOKE if args.smoke else FULL, smoke=args.smoke, with_servers=not args.no_servers,
        command=command,
    )  # fmt: skip
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="tiercache-bench-")) if args.smoke else ROOT / "docs"
    saved = Path(tempfile.mkdtemp(prefix="tiercache-bench-run-")) / "results.pickle"
    saved.write_bytes(pickle.dumps(run))
    doc = write(run, out)
    print(report.summary(run))
    print(f"\nresults saved in {saved} (re-render with --render)")
    print(f"\nwrote {doc} and {out / CHART}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
