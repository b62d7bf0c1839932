"""Request and response bodies of the JSON API (they make the OpenAPI page at ``/docs``).

Requests are strict: unknown fields and wrong types (``"20"`` for ``steps``, ``true`` for ``seed``)
are refused with 422 rather than guessed at.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kernel_generate.command import DEFAULT_GUIDANCE, DEFAULT_STEPS


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"prompt": "a blue star at the center on a black background", "steps": 20, "seed": 1}]})

    prompt: str = Field(min_length=1, max_length=4000, description="what to draw")
    negative_prompt: str = Field("", max_length=4000, description="what not to draw")
    steps: int = Field(DEFAULT_STEPS, ge=1, description="denoising steps (at most the server's --max-steps)")
    guidance: float = Field(DEFAULT_GUIDANCE, ge=0, le=100, allow_inf_nan=False,
                            description="classifier-free guidance scale")
    sampler: str | None = Field(None, max_length=200,
                                description="A1111 sampler name (GET /api/samplers) or scheduler class name; "
                                            "default: the model's own")
    seed: int | None = Field(None, ge=-1, le=2**32 - 1, description="seed; -1 or absent: a random one (recorded)")
    width: int | None = Field(None, ge=1, description="default: the model's native width")
    height: int | None = Field(None, ge=1, description="default: the model's native height")
    batch: int = Field(1, ge=1, description="pictures, with seeds seed, seed + 1, ... (at most --max-batch)")
    model: str | None = Field(None, max_length=500, description="a name from GET /api/models; default: the server's")


class JobParams(BaseModel):
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    sampler: str
    seed: int
    width: int
    height: int
    batch: int
    model: str


class JobOut(BaseModel):
    id: str
    status: str = Field(description="queued | running | done | failed | cancelled")
    progress: float = Field(description="0..1")
    images: list[str] = Field(description="URLs of the finished pictures")
    parameters: list[str] = Field(description="each picture's A1111 `parameters` text, as stored in the PNG")
    error: str | None
    params: JobParams
    position: int | None = Field(description="place in the queue (0: next); null when not waiting")
    device: str | None
    created: float
    started: float | None
    finished: float | None


class JobPage(BaseModel):
    jobs: list[JobOut]
    total: int
    offset: int
    limit: int


class ErrorOut(BaseModel):
    detail: str
    field: str | None = Field(None, description="the request field the error is about")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in (
        (400, "a model name leaving the model folders"), (401, "missing or wrong bearer token"),
        (404, "unknown job or picture"), (422, "invalid request field"))}
