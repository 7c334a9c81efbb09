"""`GET /collections/{name}/duplicates`: groups of near-duplicate images of a collection
(discovery/duplicates.py), largest first, a page at a time.

The groups are computed once per collection state and threshold in a worker thread and kept
(api.vectors.Vectors.duplicates): the next pages come from that result. Any write to the
collection through this service (an add, relabel or delete over HTTP, an indexing job, a
refresh's catch-up) or a change of its point count makes the next request compute afresh.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import RuntimeDep, StoreDep
from api.errors import ApiError
from api.openapi import AUTH, errors
from api.params import Params
from api.routes.collections import NameArg
from core import store

router = APIRouter(prefix="/collections", tags=["discovery"])
EXAMPLE = {
    "collection": "pets",
    "physical_collection": "pets__20261126-143000-3f2a9c1",
    "threshold": 0.9,
    "k": 10,
    "points": 5000,
    "duplicated": 3,
    "total_groups": 1,
    "offset": 0,
    "limit": 20,
    "seconds": 1.42,
    "groups": [
        {
            "size": 3,
            "min_similarity": 0.93,
            "min_edge": 0.93,
            "members": [
                {
                    "id": "6f1c1b8e-2f0d-5c59-9d3e-0b8f6c2f4a11",
                    "uri": "/photos/cat.jpg",
                    "label": "cat",
                    "similarity": 1.0,
                },
                {
                    "id": "0b3e2d4c-6a1f-5e7d-8c9b-1a2b3c4d5e6f",
                    "uri": "/photos/cat-copy.jpg",
                    "label": None,
                    "similarity": 0.97,
                },
                {
                    "id": "9a8b7c6d-5e4f-5a3b-2c1d-0e9f8a7b6c5d",
                    "uri": "/photos/cat-crop.jpg",
                    "label": None,
                    "similarity": 0.93,
                },
            ],
        }
    ],
}


class DuplicateParams(Params):
    threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="least cosine similarity of near-copies (default: "
        "DINOSERVE_DISCOVERY__DUPLICATE_THRESHOLD)",
    )
    offset: int = Field(0, ge=0, le=10_000_000, description="groups to skip (largest first)")
    limit: int = Field(20, ge=1, le=500, description="groups in this page")


class DuplicateMember(BaseModel):
    id: str
    uri: str | None
    label: str | None
    similarity: float = Field(description="cosine similarity to the group's centre (first)")


class DuplicateGroup(BaseModel):
    size: int
    min_similarity: float = Field(description="the least similar member to the centre")
    min_edge: float = Field(description="the weakest link that joined the group (≥ threshold)")
    members: list[DuplicateMember] = Field(description="the centre first, then by similarity")


class DuplicatesResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})

    collection: str
    physical_collection: str
    threshold: float
    k: int = Field(description="neighbours asked per image (DINOSERVE_DISCOVERY__DUPLICATE_K)")
    points: int = Field(description="images scanned")
    duplicated: int = Field(description="images in some group")
    total_groups: int
    offset: int
    limit: int
    seconds: float = Field(description="time the groups took to compute (cached since)")
    groups: list[DuplicateGroup]


@router.get(
    "/{name}/duplicates",
    summary="Groups of near-duplicate images",
    response_model=DuplicatesResponse,
    responses=errors(*AUTH, 404, 422, 503),
)
async def duplicates(
    rt: RuntimeDep,
    vectors: StoreDep,
    name: NameArg,
    params: Annotated[DuplicateParams, Query()],
) -> dict[str, Any]:
    """Images whose embeddings are at least `threshold` similar (cosine) to another's, joined
    into groups (connected components of the k-NN graph, k = DINOSERVE_DISCOVERY__DUPLICATE_K),
    largest first; `offset` and `limit` page through them. The first request for a collection
    and threshold scans the whole collection (n k-NN queries: 100k images took minutes on two
    busy cores, bench/RESULTS.md); later pages come from that result until the collection
    changes."""
    try:
        store.check_name(name)
    except ValueError as exc:
        raise ApiError(422, "invalid_collection", str(exc)) from exc
    physical = await vectors.physical(name, None)
    d = rt.settings.discovery
    threshold = d.duplicate_threshold if params.threshold is None else params.threshold
    page = await vectors.duplicates(physical, threshold, d.duplicate_k, params.offset, params.limit)
    return {"collection": name, "physical_collection": physical, **page}
