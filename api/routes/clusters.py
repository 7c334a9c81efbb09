"""Clusters of a collection (issue 20): start a k-means job, follow it, page a cluster's
members, and label a whole cluster at once.

Starting a job and labelling are writes (POST under /collections): they need the write or the
admin key whenever a key is configured, as the collections routes do (api.routes.collections);
a job costs minutes of CPU on a large collection and leaves files on disk, which a read-only key
should not be able to cause. Reading a job's result needs the read key. Labels go through the
collections' write path (api.writes.Writer and the refresh's WriteGate), so /classify uses them
at once and a refresh running meanwhile carries them over.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from api.cluster_jobs import ClusterJobs
from api.deps import RuntimeDep, read_body
from api.errors import ApiError
from api.jobs import JobsUnavailable
from api.openapi import AUTH, errors
from api.routes.collections import PATCH_BYTES, Label, NameArg, WriteDep, _name, _writer
from api.runtime import Runtime
from discovery.clusters import ClusterParams
from discovery.results import public

router = APIRouter(prefix="/collections", tags=["clusters"])

JobArg = Annotated[str, Path(description="job id, as POST answered it", pattern=r"^[0-9a-f]{12}$")]
ClusterArg = Annotated[int, Path(description="cluster number (0 = the largest)", ge=0, le=100_000)]


class ClusterRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"k": 10, "seed": 0}, {"k_min": 2, "k_max": 30}]},
    )

    k: int | None = Field(
        None, ge=2, le=1000, description="clusters; omit to choose k in k_min..k_max"
    )
    k_min: int = Field(2, ge=2, le=1000, description="automatic k: the smallest tried")
    k_max: int = Field(
        20,
        ge=2,
        le=1000,
        description="automatic k: the largest tried (at most points / 5 and "
        "DINOSERVE_DISCOVERY__K_MAX)",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the fitting's and the sample's seed")
    method: Literal["auto", "spectral", "kmeans"] = Field(
        "auto",
        description="spectral: spectral clustering of the nearest-neighbour graph; kmeans: "
        "spherical k-means; auto: spectral up to DINOSERVE_DISCOVERY__MINIBATCH_ABOVE points, "
        "MiniBatchKMeans above",
    )

    @model_validator(mode="after")
    def _range(self) -> ClusterRequest:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min {self.k_min} is above k_max {self.k_max}")
        return self


class LabelRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"label": "cat"}, {"label": "cat", "max_distance": 0.3}]},
    )

    label: Label | None = Field(description="the label for the members; null removes theirs")
    max_distance: float | None = Field(
        None,
        ge=0,
        le=2,
        allow_inf_nan=False,
        description="only members within this cosine distance (1 − similarity) of the centre",
    )


B = TypeVar("B", bound=BaseModel)


async def _json(request: Request, model: type[B], optional: bool = False) -> B:
    """A small JSON body as `model` (415 for another content type, 422 when invalid; parsed
    here, so a body that is not JSON is a 422 like every other bad input)."""
    body = await read_body(request, PATCH_BYTES)
    if optional and not body.strip():
        return model()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        message = f"content type {ctype or 'none'!r}: send application/json"
        raise ApiError(415, "unsupported_media_type", message)
    return model.model_validate_json(body)  # ValidationError → 422


def _body_doc(model: type[BaseModel], required: bool) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {
        "requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}
    }


def _jobs(rt: Runtime) -> ClusterJobs:
    if rt.clusters is None:
        raise JobsUnavailable(
            "cluster jobs run in a single-process service (DINOSERVE_SERVE__WORKERS=1), or use "
            "`dinoserve clusters NAME` while no service holds the embedded store"
        )
    return rt.clusters


async def _record(rt: Runtime, name: str, job: str) -> dict[str, Any]:
    jobs = _jobs(rt)
    record = await run_in_threadpool(lambda: jobs.get(name, job))
    if record is None:
        raise ApiError(404, "unknown_job", f"no cluster job {job} for collection {name!r}")
    return record


def _cluster(record: dict[str, Any], cluster: int) -> dict[str, Any]:
    if record["state"] != "done":
        raise ApiError(409, "job_not_done", f"cluster job {record['job']} is {record['state']}")
    clusters = record["result"]["clusters"]
    if cluster >= len(clusters):
        raise ApiError(
            404, "unknown_cluster", f"job {record['job']} has clusters 0..{len(clusters) - 1}"
        )
    return clusters[cluster]


@router.post(
    "/{name}/clusters",
    summary="Cluster a collection's embeddings (a job)",
    status_code=202,
    responses={
        **errors(*AUTH, 404, 409, 413, 415, 422, 503),
        200: {"description": "the cached result"},
    },
    openapi_extra=_body_doc(ClusterRequest, required=False),
    dependencies=[WriteDep],
)
async def start_clusters(request: Request, rt: RuntimeDep, name: NameArg) -> JSONResponse:
    """Clusters of the collection's L2-normalised embeddings, seeded: the same request on the
    same collection gives the same clusters. `method` auto (the default) runs spectral
    clustering of the graph joining each image to its DINOSERVE_DISCOVERY__GRAPH_NEIGHBORS
    nearest, up to DINOSERVE_DISCOVERY__MINIBATCH_ABOVE points, and MiniBatchKMeans above;
    `kmeans` asks for spherical k-means. Without `k`, k is chosen in
    `k_min..k_max` (at most points / 5 and DINOSERVE_DISCOVERY__K_MAX) by the best silhouette
    on a seeded sample (DINOSERVE_DISCOVERY__K_SAMPLE points); a job that cannot have its k
    (more than the points) fails and says so. 202 with the job (follow it with GET
    …/clusters/{job}); 200 with the result when the same request ran on this model version
    and the collection has not changed since (added, deleted or relabelled images change it).
    409 while another job runs."""
    name = _name(name)
    req = await _json(request, ClusterRequest, optional=True)
    jobs = _jobs(rt)
    physical = await rt.vectors.physical(name, None)
    params = ClusterParams(req.k, req.k_min, req.k_max, req.seed, req.method)
    record, cached = await jobs.start(name, physical, params)  # JobBusy: 409
    return JSONResponse(public(record), status_code=200 if cached else 202)


@router.get(
    "/{name}/clusters/{job}",
    summary="State, progress and result of a cluster job",
    responses=errors(*AUTH, 404, 409, 422),
)
async def get_clusters(rt: RuntimeDep, name: NameArg, job: JobArg) -> dict[str, Any]:
    """state running|done|failed|interrupted (a job cut off by a restart: start it again),
    progress, and once done the result: k, purity and NMI against the labels (when there are
    labels), and per cluster its size, majority label, purity and the images nearest its
    centre."""
    return public(await _record(rt, _name(name), job))


@router.get(
    "/{name}/clusters/{job}/{cluster}",
    summary="The members of one cluster, nearest the centre first",
    responses=errors(*AUTH, 404, 409, 422),
)
async def get_cluster(
    rt: RuntimeDep,
    name: NameArg,
    job: JobArg,
    cluster: ClusterArg,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """`members`: ids with their cosine similarity to the centre, a page at a time
    (`next_offset` is null after the last)."""
    c = _cluster(await _record(rt, _name(name), job), cluster)
    ids, sims = c["members"][offset : offset + limit], c["similarity"][offset : offset + limit]
    end = offset + len(ids)
    return {
        **{k: v for k, v in c.items() if k not in ("members", "similarity")},
        "members": [{"id": i, "similarity": s} for i, s in zip(ids, sims, strict=True)],
        "offset": offset,
        "next_offset": end if end < c["size"] else None,
    }


@router.post(
    "/{name}/clusters/{job}/{cluster}/label",
    summary="Label every member of a cluster (or those near its centre)",
    responses=errors(*AUTH, 404, 409, 413, 415, 422, 503, 507),
    openapi_extra=_body_doc(LabelRequest, required=True),
    dependencies=[WriteDep],
)
async def label_cluster(
    request: Request, rt: RuntimeDep, name: NameArg, job: JobArg, cluster: ClusterArg
) -> dict[str, Any]:
    """Sets `label` on the cluster's members (all, or those within `max_distance` cosine
    distance of its centre) that are still in the collection, through the collections' write
    path: /classify votes with them right after. 409 when the job is not done, or was computed
    on another model version than the collection now holds (run it again)."""
    name = _name(name)
    body = await _json(request, LabelRequest)
    record = await _record(rt, name, job)
    c = _cluster(record, cluster)
    if body.max_distance is None:
        ids = list(c["members"])
    else:
        ids = [
            i
            for i, s in zip(c["members"], c["similarity"], strict=True)
            if 1 - s <= body.max_distance
        ]
    writer = _writer(rt)
    async with rt.writes.entry():
        physical = await rt.vectors.run(lambda: writer.target(name, rt.serving.version))
        if physical != record["physical_collection"]:
            raise ApiError(
                409,
                "clusters_outdated",
                f"job {job} clustered {record['physical_collection']}; the collection is now "
                f"{physical}: start a new cluster job",
            )
        labelled = await rt.vectors.run(lambda: writer.relabel_many(physical, ids, body.label))
    return {
        "collection": name,
        "job": job,
        "cluster": cluster,
        "label": body.label,
        "max_distance": body.max_distance,
        "members": c["size"],
        "selected": len(ids),
        "labelled": labelled,
    }
