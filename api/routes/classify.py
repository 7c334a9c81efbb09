"""`POST /classify`: an image → label by the k-NN vote of its nearest labelled neighbours."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from api.body_docs import body_doc
from api.deps import RuntimeDep, ServingDep, StoreDep, UploadBody, single, upload_body
from api.errors import ApiError
from api.openapi import AUTH, UPLOAD, errors
from api.params import ClassifyParams
from core.knn import knn_vote

router = APIRouter(tags=["classification"])
ClassifyBody = Annotated[UploadBody[ClassifyParams], Depends(upload_body(ClassifyParams))]


class Neighbor(BaseModel):
    id: str
    label: str
    score: float
    uri: str | None


class ClassifyResponse(BaseModel):
    label: str
    confidence: float
    scores: dict[str, float]
    neighbors: list[Neighbor]
    collection: str
    physical_collection: str  # the one searched: `<collection>__<model_version>`
    model_version: str  # embedded the query and the collection


@router.post(
    "/classify",
    summary="Classify an image by its labelled neighbours",
    response_model=ClassifyResponse,
    responses=errors(*AUTH, 404, 409, *UPLOAD, 503),
    openapi_extra=body_doc(ClassifyParams),
)
async def classify(
    rt: RuntimeDep, sv: ServingDep, vectors: StoreDep, body: ClassifyBody
) -> ClassifyResponse:
    """DINO's weighted k-NN: class score = Σ exp(similarity / T) over the k nearest labelled
    points of that class, normalised to sum 1. 404 for an unknown collection, 409 for one
    without labels or with another model version's embeddings."""
    params = body.params
    name = params.collection or rt.settings.collection
    physical = await vectors.physical(name, sv.version)
    vector = (await sv.embed([single(body.upload)]))[0]
    hits = await vectors.nearest(physical, vector.tolist(), params.k, labelled_only=True)
    if not hits:
        raise ApiError(
            409,
            "no_labels",
            f"collection {name!r} has no labelled images to vote: index it with labels "
            "(dinoserve index --labels dirs, or a manifest with a label column)",
        )
    vote = knn_vote([h.score for h in hits], [str(h.label) for h in hits], params.temperature)
    return ClassifyResponse(
        label=vote.label,
        confidence=vote.confidence,
        scores=vote.scores,
        neighbors=[Neighbor(id=h.id, label=str(h.label), score=h.score, uri=h.uri) for h in hits],
        collection=name,
        physical_collection=physical,
        model_version=sv.version,
    )
