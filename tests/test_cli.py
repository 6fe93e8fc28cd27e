"""The `tiercache-mw` command: check-config in-process, demo and the console script for real."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tiercache_mw.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_YAML = REPO / "examples" / "tiercache.yaml"
READY_SECONDS = 20.0

GOOD = """\
hot_cache: {backend: ram, ttl_hours: 1, max_size_gb: 0.5}
dry_cache: {backend: local, path: dry}
routes:
  - {pattern: "/products/{id}", tags: {type: product}}
  - {pattern: "/account/**", cache: false}
ttl_rules:
  - tag: {type: product}
    ttl_seconds: 300
"""


def test_check_config_prints_effective_rules_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "/products/{id}" in out
    assert "/account/**" in out
    assert "product" in out
    assert "300" in out


def test_check_config_accepts_the_example_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE_YAML)]) == 0
    assert "/reports/*" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        ("hot_cache: {backend: ram, max_size_gb: lots}\n", "hot_cache.max_size_gb"),
        ("routes:\n  - {pattern: /a}\n  - {pattern: 42}\n", "routes[1].pattern"),
        ("hot_cache: {backend: floppy}\n", "hot_cache.backend"),
        # paths and hosts no operation could use: this file is not a directory
        ("dry_cache: {path: broken.yaml}\n", "dry_cache.path"),
        ("dry_cache: {path: broken.yaml/dry}\n", "dry_cache.path"),
        ("tracking: {path: .}\n", "tracking.path"),
        ("memcached: {host: 'localhost:11211'}\n", "memcached.host"),
    ],
)
def test_check_config_on_a_broken_file_names_file_and_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key_path: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert str(path) in err
    assert key_path in err
    assert len(err.strip().splitlines()) == 1


def test_check_config_on_a_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["check-config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_console_script_is_installed_and_runs_check_config(tmp_path: Path) -> None:
    script = shutil.which("tiercache-mw")
    assert script is not None, "reinstall: pip install -e . --no-deps"
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = subprocess.run(
        [script, "check-config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "/products/{id}" in result.stdout


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "usage: tiercache-mw" in capsys.readouterr().err


# ---- the demo, as the README promises it ------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "demo.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tiercache_mw.cli", "demo", "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            assert process.poll() is None, (tmp_path / "demo.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "demo did not listen"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            code: int | None = process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            code = None
        log.close()
    # uvicorn re-raises SIGTERM after a graceful shutdown: -SIGTERM is a clean exit here.
    assert code in (0, -signal.SIGTERM), (tmp_path / "demo.log").read_text()
    assert "Application shutdown complete" in (tmp_path / "demo.log").read_text()
    assert (tmp_path / ".tiercache").is_dir()  # the embedded dry tier and index live here


def test_demo_shows_a_stored_miss_then_a_hot_hit(demo: str) -> None:
    with httpx.Client(base_url=demo, trust_env=False, timeout=10) as client:
        first = client.get("/products/1")
        second = client.get("/products/1")
        index = client.get("/")
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert second.headers["cache-status"].startswith("tiercache; hit; ttl=")
    assert second.headers["cache-status"].endswith("; detail=hot")
    assert second.json() == first.json()
    assert "curl -i" in index.text
