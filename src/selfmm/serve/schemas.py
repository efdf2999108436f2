"""What the API answers: the response bodies (their JSON schemas are the OpenAPI document's),
the multipart body of /predict, and the one-line problem every refusal is."""

from __future__ import annotations

from typing import Literal

from fastapi import HTTPException
from pydantic import BaseModel


class Health(BaseModel):
    status: Literal["ok"]
    workers: int


class Limits(BaseModel):
    max_upload_mb: float
    max_seconds: float
    workers: int
    queue_size: int


class Info(BaseModel):
    dataset: str
    label_range: tuple[float, float]
    neutral_band: float
    feature_widths: dict[str, int]
    feature_sets: dict[str, str]
    text_model: str
    seed: int | None
    versions: dict[str, str]
    limits: Limits


class Score(BaseModel):
    score: float
    sentiment: Literal["negative", "neutral", "positive"]
    text: float
    audio: float
    vision: float
    flags: list[str]
    seconds: float


class Problem(BaseModel):
    detail: str


def problem(status: int, detail: str, **headers: str) -> HTTPException:
    """A refusal: `status` with `detail` on one line (FastAPI answers {"detail": ...})."""
    return HTTPException(status, " ".join(detail.split()), headers=headers or None)


# /predict reads its body itself (streamed, limited), so FastAPI cannot infer this schema.
PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["video", "transcript"],
    "properties": {
        "video": {"type": "string", "format": "binary",
                  "description": "the clip: any container and codecs FFmpeg reads"},
        "transcript": {"type": "string", "description": "what is said in the clip (UTF-8)"},
    }}}}}}

PREDICT_RESPONSES = {
    401: {"model": Problem, "description": "missing or wrong token"},
    403: {"model": Problem, "description": "a cross-origin form submission"},
    408: {"model": Problem, "description": "the upload stalled"},
    413: {"model": Problem, "description": "the upload is over --max-upload-mb"},
    422: {"model": Problem, "description": "a missing field, an empty transcript, a "
          "file that is not a readable video, or a video over --max-seconds"},
    503: {"model": Problem, "description": "busy: retry after Retry-After seconds; or "
          "the server is shutting down"},
    507: {"model": Problem, "description": "the server's disk cannot take the upload"},
}
