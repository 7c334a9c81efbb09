"""Security and reliability fixtures: the API fixtures (micro package, indexed store, apps),
a real uvicorn service on loopback, and a Qdrant fault injector.

The refresh fixtures (two model versions, an indexed registry) are imported for the corrupt
model test; the admin tests under tests/refresh cover the rest of that path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api.main import create_app
from core.settings import Settings
from tests.api.conftest import (  # noqa: F401  (fixtures)
    client,
    indexed_store,
    make_client,
    make_settings,
    png_bytes,
    settings_on_copy,
)
from tests.api.test_browser import _free_port
from tests.refresh.conftest import env, two_versions  # noqa: F401  (fixtures)
from tests.servers import loopback_server


def live_settings(micro_package, indexed_store, tmp_path_factory, **overrides) -> Settings:  # noqa: F811
    """Settings for a service on a private copy of the indexed store."""
    copy = tmp_path_factory.mktemp("qdrant_live") / "q"
    return settings_on_copy(micro_package, indexed_store, copy, **overrides)


class LiveServer:
    """A real uvicorn service in a thread (HTTP parsing, keep-alive, raw bytes on the wire)."""

    def __init__(self, settings: Settings) -> None:
        self.port = _free_port()
        self.app = create_app(settings)
        self.server = loopback_server(self.app, self.port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def live(micro_package, indexed_store, tmp_path_factory) -> Iterator[LiveServer]:  # noqa: F811
    """One real service per module on loopback (default settings otherwise)."""
    with LiveServer(live_settings(micro_package, indexed_store, tmp_path_factory)) as srv:
        yield srv


class Injected(ConnectionError):
    """The failure an Outage raises: what a client sees of a server that is down."""


PRIMITIVES = (
    "_collections",
    "_aliases",
    "_exists",
    "_dim",
    "_create",
    "_drop",
    "_change_aliases",
    "_upsert",
    "_retrieve",
    "_search",
    "_scroll",
    "_count",
    "_delete",
    "_set_payload",
    "_optimize",
)


class Outage:
    """Stands between a Store and its backend and fails calls the way an unreachable server
    does (a transient error, which the store's retry policy retries) while `down`, or for the
    next `fail_next` calls. Calls are recorded by name without the leading underscore.

    Args:
        db: the store (embedded or server) whose primitives are wrapped.
        only: fail only these call names (default: every call).
    """

    def __init__(self, db: Any, only: set[str] | None = None) -> None:
        self._only = only
        self.down = False
        self.fail_next = 0  # fail this many calls from now on
        self.arm_at: tuple[int, int] | None = None  # (after this many calls, fail that many)
        self.failed: list[str] = []
        self.calls: list[str] = []
        self._lock = threading.Lock()
        for name in PRIMITIVES:
            setattr(db, name, self._wrap(name.lstrip("_"), getattr(db, name)))
        real_transient = db._transient
        db._transient = lambda exc: isinstance(exc, Injected) or real_transient(exc)

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls.append(name)
                if self.arm_at is not None and len(self.calls) > self.arm_at[0]:
                    self.fail_next, self.arm_at = self.arm_at[1], None
                fail = (self.down or self.fail_next > 0) and (
                    self._only is None or name in self._only
                )
                if fail and not self.down:
                    self.fail_next -= 1
                if fail:
                    self.failed.append(name)
            if fail:
                raise Injected("injected: Qdrant is down")
            return fn(*args, **kwargs)

        return call


@pytest.fixture
def outage() -> Callable[..., Outage]:
    """Wrap a Store's backend calls in an Outage (undone at the end of the test)."""
    wrapped: list[tuple[Any, dict[str, Any]]] = []

    def wrap(db: Any, only: set[str] | None = None) -> Outage:
        saved = {n: db.__dict__.get(n) for n in (*PRIMITIVES, "_transient")}
        wrapped.append((db, saved))
        return Outage(db, only)

    yield wrap
    for db, saved in reversed(wrapped):
        for name, value in saved.items():
            if value is None:
                db.__dict__.pop(name, None)
            else:
                setattr(db, name, value)
