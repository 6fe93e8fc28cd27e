"""The benchmark suite in smoke mode: every subject runs, every response is checked, and the
report lists every row. Timings from a few hundred iterations mean nothing and are not checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.bench.__main__ import SMOKE
from tests.bench.inprocess import MODES
from tests.bench.suite import SPECS

ROOT = Path(__file__).resolve().parents[2]
TARGETS = 7


def _section(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def test_smoke_run_reports_every_subject_and_target(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "skipped:" not in out, out[out.index("skipped:") :]
    inproc = _section(out, "In-process (", "Under a server").splitlines()
    for spec in SPECS:
        row = [line for line in inproc if line.startswith(f"  {spec.label} ")]
        assert row, f"no in-process row for {spec.name}"
        assert row[0].count(" µs ") == len(MODES), row[0]
    served = _section(out, "Under a server", "Targets:").splitlines()
    assert SMOKE.server_subjects is not None
    for name in SMOKE.server_subjects:
        label = next(spec.label for spec in SPECS if spec.name == name)
        row = [line for line in served if line.startswith(f"  {label} ")]
        assert row, f"no server row for {name}"
        assert f"{SMOKE.server_rounds} rounds" in row[0], row[0]
    targets = [line for line in out.split("Targets:", 1)[1].splitlines() if line.startswith("  [")]
    assert len(targets) == TARGETS
    assert all("n/a" not in line for line in targets), targets
    dry = [line for line in targets if "demotions/s" in line]  # measured two ways, both shown
    assert len(dry) == 1, targets
    assert "in-process" in dry[0], dry[0]
    assert "through uvicorn" in dry[0], dry[0]
    doc = (tmp_path / "benchmarks.md").read_text(encoding="utf-8")
    for spec in SPECS:
        assert f"| {spec.label} |" in doc
    assert "Through uvicorn, as a client sees it" in doc
    assert (tmp_path / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
