"""What the API answers: the response bodies (their JSON schemas are the OpenAPI document's),
the multipart body of /predict, and the one-line problem every refusal is."""

from __future__ import annotations

from typing import Any, Literal

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
    # The model that recognises the words of clips sent without a transcript: name, sha256
    # (of its model.bin), language; None when the server has no speech recognition.
    speech_recognition: dict[str, str | None] | None = None


class Score(BaseModel):
    score: float
    sentiment: Literal["negative", "neutral", "positive"]
    text: float
    audio: float
    vision: float
    flags: list[str]
    seconds: float
    transcript: str  # the text scored: the one sent, or the recognised words
    # text_source ("given" or "asr"); when speech recognition ran, also model, model_sha256,
    # language, no_speech, unsure, word_probability and words ([text, start s, end s]).
    speech: dict[str, Any]


class Problem(BaseModel):
    detail: str


def problem(status: int, detail: str, **headers: str) -> HTTPException:
    """A refusal: `status` with `detail` on one line (FastAPI answers {"detail": ...})."""
    return HTTPException(status, " ".join(detail.split()), headers=headers or None)


# /predict reads its body itself (streamed, limited), so FastAPI cannot infer this schema.
PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["video"],
    "properties": {
        "video": {"type": "string", "format": "binary",
                  "description": "the clip: any container and codecs FFmpeg reads"},
        "transcript": {"type": "string", "description": "what is said in the clip (UTF-8); "
                       "left out or blank, the words are recognised (see /info's speech_recognition)"},
    }}}}}}

PREDICT_RESPONSES = {
    401: {"model": Problem, "description": "missing or wrong token"},
    403: {"model": Problem, "description": "a cross-origin form submission"},
    408: {"model": Problem, "description": "the upload stalled"},
    413: {"model": Problem, "description": "the upload is over --max-upload-mb"},
    422: {"model": Problem, "description": "a missing video, a file that is not a readable "
          "video, a video over --max-seconds, or no transcript where the server has no speech "
          "recognition"},
    503: {"model": Problem, "description": "busy: retry after Retry-After seconds; or "
          "the server is shutting down"},
    507: {"model": Problem, "description": "the server's disk cannot take the upload"},
}
