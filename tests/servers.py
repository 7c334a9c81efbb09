"""Real uvicorn services in threads on loopback, for tests that need HTTP on the wire."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_server(app: FastAPI, port: int) -> uvicorn.Server:
    """A uvicorn server for a test, on 127.0.0.1:`port`, that leaves logging as it is.

    uvicorn's own logging config (`logging.config.dictConfig`) first closes every existing
    handler; absl's (imported with tensorboard by an earlier test) then closes the stream it
    was given, which under pytest is the captured stderr of that moment, and every later write
    to it (the capture's own included) fails: the suite stopped with "lost sys.stderr" after
    the first such server, depending on which tests ran before it.
    """
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
    return uvicorn.Server(config)


def start_uvicorn(app: FastAPI, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve `app` on 127.0.0.1:`port` in a daemon thread; returns once it is started.

    Raises:
        RuntimeError: it did not start within 60 s (or its thread died).
    """
    srv = loopback_server(app, port)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return srv, thread


def stop_uvicorn(running: list[tuple[uvicorn.Server, threading.Thread]], timeout: float) -> None:
    for srv, thread in running:
        srv.should_exit = True
        thread.join(timeout=timeout)
