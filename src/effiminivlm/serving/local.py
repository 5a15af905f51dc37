"""A uvicorn server in a background thread on 127.0.0.1 and a free port, always stopped.

Why: the browser tests and `benchmarks/bench_serve.py` need the real HTTP stack (sockets, multipart parsing,
keep-alive, graceful shutdown), not the in-process test client, and must never leave a server behind.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalServer:
    """`with LocalServer(app) as srv: srv.url` - uvicorn serving `app` until the block ends.

    Leaving the block asks uvicorn to exit the way SIGTERM does (stop accepting, finish in-flight requests,
    run the app's shutdown) and waits for its thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None,
                 start_timeout: float = 30.0, graceful_timeout: float = 30.0) -> None:
        import uvicorn

        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=int(graceful_timeout), access_log=False)
        self.server = uvicorn.Server(config)
        self.start_timeout = start_timeout
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"uvicorn on {self.url} stopped while starting")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn on {self.url} did not start within {self.start_timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful stop: in-flight requests finish; then the thread is joined."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
