"""All routes, one module per resource, collected into one router."""

from fastapi import APIRouter

from api.routes import admin, attention, classify, embed, health, images, page, search

router = APIRouter()
for module in (embed, classify, search, attention, images, health, page, admin):
    router.include_router(module.router)
