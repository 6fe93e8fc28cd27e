"""Real servers on 127.0.0.1 free ports for the tests where timing or the wire matters: uvicorn
for ASGI, werkzeug's threaded server for WSGI, each in a daemon thread, stopped on exit."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from werkzeug.serving import make_server

READY_SECONDS = 10.0


@contextmanager
def wsgi_server(app: Any) -> Iterator[int]:
    """Serve a WSGI app with one thread per request; yields the port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def asgi_server(app: ASGIApp, **options: Any) -> Iterator[int]:
    """Serve an ASGI app with uvicorn from a socket bound here; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    settings: dict[str, Any] = {
        "log_level": "warning", "lifespan": "off", "timeout_graceful_shutdown": 1, "ws": "none",
    }  # fmt: skip
    config = uvicorn.Config(app, **{**settings, **options})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + READY_SECONDS
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
