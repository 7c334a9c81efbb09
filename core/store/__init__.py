"""The one store layer: every use of Qdrant in the project goes through `Store` (see
`core.store.base`), opened by `open_store` from the settings — the embedded Qdrant Edge store
under `DINOSERVE_QDRANT_PATH`, or a server/cluster when `DINOSERVE_QDRANT_URL` is set."""

from __future__ import annotations

from core.store.base import BATCH, REQUEST, RetryPolicy, Store
from core.store.layout import (
    NAME_RE,
    SEP,
    IndexBuilding,
    Layout,
    Match,
    Point,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreUnusable,
    UnknownCollection,
    check_name,
    physical_name,
    point_id,
    version_of,
)
from core.store.open import layout_from, open_store, request_policy

__all__ = [
    "BATCH",
    "NAME_RE",
    "REQUEST",
    "SEP",
    "IndexBuilding",
    "Layout",
    "Match",
    "Point",
    "RetryPolicy",
    "Store",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "StoreUnusable",
    "UnknownCollection",
    "check_name",
    "layout_from",
    "open_store",
    "physical_name",
    "point_id",
    "request_policy",
    "version_of",
]
