"""Scalar parameters of the endpoints, validated once: query parameters, or the same names as
form fields / JSON keys (see api.deps.merge_params)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.store import NAME_RE, check_name


class Params(BaseModel):
    """Base of every endpoint's parameters: an unknown name is an error (422), not ignored, so
    a typo (`tempreature=`) never silently runs with the default."""

    model_config = ConfigDict(extra="forbid")


class EmbedParams(Params):
    pass


class _Collection(Params):
    collection: str | None = Field(
        None,
        pattern=NAME_RE.pattern,  # documents it in the OpenAPI schema; _name checks the rest
        description="logical collection (default: DINOSERVE_COLLECTION)",
    )

    @field_validator("collection")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)


class ClassifyParams(_Collection):
    k: int = Field(20, ge=1, le=1000, description="labelled neighbours that vote")
    temperature: float = Field(
        0.07, gt=0, le=10, allow_inf_nan=False, description="T in exp(similarity / T)"
    )


class SearchParams(_Collection):
    k: int = Field(10, ge=1, le=1000, description="how many results")
    label: str | None = Field(None, min_length=1, max_length=256, description="only this label")


class SearchByIdParams(SearchParams):
    image: str = Field(
        ..., min_length=1, max_length=4096, description="point id or indexed URI of the query"
    )


class AttentionParams(Params):
    threshold: float = Field(
        0.6, gt=0, le=1, allow_inf_nan=False, description="attention mass the mask keeps"
    )
    format: Literal["json", "png"] = "json"


class ImageParams(_Collection):
    pass
