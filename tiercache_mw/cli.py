"""The `tiercache-mw` command: `proxy`, `check-config` and `demo`.

Exit codes: 0 success, 2 a usage or configuration error (the one message goes to stderr).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from tiercache_mw.config import describe_config, load_config
from tiercache_mw.errors import ConfigError

__all__ = ["main", "proxy_from_env"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# Worker processes rebuild the proxy from these (uvicorn needs an import string for --workers).
ENV_UPSTREAM = "TIERCACHE_PROXY_UPSTREAM"
ENV_CONFIG = "TIERCACHE_PROXY_CONFIG"
ENV_TIMEOUT = "TIERCACHE_PROXY_TIMEOUT"
ENV_CONNECT_TIMEOUT = "TIERCACHE_PROXY_CONNECT_TIMEOUT"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiercache-mw", description="Tiered HTTP response cache: proxy, config check, demo."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    proxy = commands.add_parser(
        "proxy", help="run a caching reverse proxy in front of an HTTP origin"
    )
    proxy.add_argument("--upstream", required=True, help="origin URL, e.g. http://127.0.0.1:8000")
    proxy.add_argument("--host", default="127.0.0.1", help="address to listen on")
    proxy.add_argument("--port", type=int, default=8080, help="port to listen on")
    proxy.add_argument("--config", metavar="FILE", help="tiercache YAML (default: embedded)")
    proxy.add_argument("--workers", type=int, default=1, help="worker processes (each own RAM)")
    proxy.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait on the upstream (504 after)"
    )
    proxy.add_argument(
        "--connect-timeout", type=float, default=5.0, help="seconds to connect (504 after)"
    )
    proxy.add_argument("--log-level", choices=LOG_LEVELS, default="info")

    check = commands.add_parser("check-config", help="validate a YAML file, print the rules")
    check.add_argument("file", metavar="FILE")

    demo = commands.add_parser("demo", help="serve the demo app on the embedded defaults")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: str = args.command
    if command == "check-config":
        return _check_config(args.file)
    if command == "proxy":
        return _proxy(args)
    return _demo(args)


# ---- check-config ---------------------------------------------------------------------------
def _check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{path}: cannot read the file: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"{path}: OK")
    print(describe_config(config))
    return 0


# ---- proxy -------------------------------------------------------------------------------
def _proxy(args: argparse.Namespace) -> int:
    import uvicorn

    from tiercache_mw.proxy import ReverseProxy, build_proxy

    try:
        config = load_config(args.config) if args.config else None
        ReverseProxy(args.upstream)  # fail here, not in a worker, on a bad URL
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{args.config}: cannot read the file: {exc.strerror or exc}", file=sys.stderr)
        return 2
    _configure_logging(args.log_level)
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "lifespan": "on",
        "log_level": args.log_level,
        # The origin's Date and Server go through; uvicorn would add a second of each.
        "server_header": False,
        "date_header": False,
        # The proxy appends the peer to X-Forwarded-For itself; uvicorn must not rewrite it.
        "proxy_headers": False,
        "ws": "none",  # WebSocket upgrades are not proxied
    }
    if args.workers > 1:
        os.environ[ENV_UPSTREAM] = args.upstream
        os.environ[ENV_CONFIG] = os.path.abspath(args.config) if args.config else ""
        os.environ[ENV_TIMEOUT] = str(args.timeout)
        os.environ[ENV_CONNECT_TIMEOUT] = str(args.connect_timeout)
        uvicorn.run(
            "tiercache_mw.cli:proxy_from_env", factory=True, workers=args.workers, **options
        )
        return 0
    app = build_proxy(
        args.upstream, config, timeout=args.timeout, connect_timeout=args.connect_timeout
    )
    uvicorn.run(app, **options)
    return 0


def proxy_from_env() -> Any:
    """The proxy app for a uvicorn worker process, from the variables `proxy` set."""
    from tiercache_mw.proxy import build_proxy

    return build_proxy(
        os.environ[ENV_UPSTREAM],
        os.environ.get(ENV_CONFIG) or None,
        timeout=float(os.environ[ENV_TIMEOUT]),
        connect_timeout=float(os.environ[ENV_CONNECT_TIMEOUT]),
    )


# ---- demo --------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    import uvicorn

    from tiercache_mw.demo import app

    _configure_logging(args.log_level)
    print(f"tiercache demo: http://{args.host}:{args.port}/  (cache files in ./.tiercache)")
    uvicorn.run(app, host=args.host, port=args.port, lifespan="on", log_level=args.log_level)
    return 0


def _configure_logging(level: str) -> None:
    numeric = logging.DEBUG if level == "trace" else getattr(logging, level.upper())
    logging.basicConfig(level=numeric, format="%(levelname)s:     %(name)s: %(message)s")


if __name__ == "__main__":
    raise SystemExit(main())
