"""All routes, one module per resource, collected into one router."""

from fastapi import APIRouter, Depends

from api.deps import single_valued
from api.routes import (
    admin,
    attention,
    classify,
    clusters,
    collections,
    docs,
    duplicates,
    embed,
    health,
    images,
    page,
    samples,
    search,
)

# Every route: a query parameter given twice is refused (api.deps.single_valued).
router = APIRouter(dependencies=[Depends(single_valued)])
modules = [embed, classify, search, attention, images, samples, collections, duplicates, clusters]
for module in (*modules, health, page, docs, admin):
    router.include_router(module.router)
