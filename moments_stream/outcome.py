"""The one message a consumer sends an aggregator about a video: counted, with its prediction, or
failed, with the reason. It travels on the results queue and waits in the outbox as JSON, and the
ledger keeps it as the video's record.

The JSON form is versioned by ``schema`` (every message carries it; 1 is the first), so consumers
and aggregators of different releases can run side by side during an upgrade. A message without
``schema`` is not an outcome.

A reader accepts every schema up to :data:`SCHEMA_VERSION` and ignores fields it does not know, so
a field added later needs no new schema; one that changes a meaning does. A newer schema is refused
with :class:`UnsupportedSchema`: the aggregator leaves that message in the outbox (durable until
recorded) for an upgraded aggregator to record, and says so.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, cast

SCHEMA_VERSION = 1
COUNTED: Literal["counted"] = "counted"
FAILED: Literal["failed"] = "failed"
OutcomeKind = Literal["counted", "failed"]
KINDS: tuple[OutcomeKind, ...] = (COUNTED, FAILED)
TopK = tuple[tuple[str, float], ...]
PROBABILITY_DIGITS = 6


class InvalidOutcome(ValueError):
    """Data that is not an outcome message; ``reason`` says what is wrong with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedSchema(InvalidOutcome):
    """An outcome written by a newer release than this reader."""


@dataclass(frozen=True)
class VideoOutcome:
    outcome: OutcomeKind
    video: str
    fingerprint: str
    # The model that produced a counted outcome (always set), or that a failed video was for.
    model_id: str | None = None
    worker: str | None = None
    # A counted outcome: the top-k categories with their probabilities, most probable first.
    top5: TopK = ()
    synthetic_weights: bool = False
    frame_count: int | None = None
    sampling: str | None = None
    codec: str | None = None
    download_ms: float | None = None
    decode_ms: float | None = None
    infer_ms: float | None = None
    total_ms: float | None = None
    # A failed outcome: what went wrong, in words a user can act on.
    error: str | None = None
    # A failed outcome of a job for one model (``--reclassify``): that model, so that ``consumer
    # requeue`` enqueues it for the same model again (unset: the job was for any model).
    for_model: str | None = None
    # When the consumer handed it over (outbox recovery waits on it).
    published_at: float | None = None

    @property
    def counted(self) -> bool:
        return self.outcome == COUNTED

    @property
    def top1(self) -> str:
        return self.top5[0][0]

    @property
    def outbox_field(self) -> str:
        """The outbox field this outcome waits under (:func:`outbox_field`)."""
        return outbox_field(self.video, self.fingerprint, self.model_id)

    def published(self, at: float) -> VideoOutcome:
        return dataclasses.replace(self, published_at=at)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the current schema; unset optional fields are left out."""
        document: dict[str, Any] = {"schema": SCHEMA_VERSION}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "top5":
                if value:
                    document["top5"] = [[name, round(probability, PROBABILITY_DIGITS)] for name, probability in value]
            elif value is not None and not (field.name == "synthetic_weights" and not value):
                document[field.name] = value
        return document

    def encode(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, document: object) -> VideoOutcome:
        """The outcome a JSON object of any supported schema holds, or :class:`InvalidOutcome`."""
        if not isinstance(document, dict):
            raise InvalidOutcome("payload is not a JSON object")
        if "schema" not in document:
            raise InvalidOutcome("no schema field")
        schema = document["schema"]
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise InvalidOutcome(f"schema {schema!r} is not a number")
        if schema > SCHEMA_VERSION:
            raise UnsupportedSchema(f"schema {schema} is newer than this release reads ({SCHEMA_VERSION})")
        missing = [name for name in ("video", "fingerprint", "outcome") if not isinstance(document.get(name), str)]
        if missing:
            raise InvalidOutcome(f"missing or non-text field(s): {', '.join(missing)}")
        kind = document["outcome"]
        if kind not in KINDS:
            raise InvalidOutcome(f"unknown outcome {kind!r}")
        top5 = _top_k(document.get("top5"))
        if kind == COUNTED and not (top5 and isinstance(document.get("model_id"), str)):
            raise InvalidOutcome("a counted outcome needs top5 [[category, probability], ...] and model_id")
        known = {field.name for field in dataclasses.fields(cls)}
        values = {name: value for name, value in document.items() if name in known}
        values.update(outcome=cast(OutcomeKind, kind), top5=top5)
        try:
            return cls(**values)
        except TypeError as error:  # pragma: no cover - every field has a default
            raise InvalidOutcome(str(error)) from None

    @classmethod
    def decode(cls, text: str | bytes) -> VideoOutcome:
        try:
            document = json.loads(text)
        except ValueError as error:
            raise InvalidOutcome(f"payload is not JSON ({error})") from None
        return cls.from_json(document)


def outbox_field(video: str, fingerprint: str, model_id: str | None) -> str:
    """The outbox field of an outcome: its video, version and model together (a JSON array), so the
    outcomes of two versions, or of two models, of one video wait side by side and never overwrite
    each other."""
    return json.dumps([video, fingerprint, model_id or ""])


def outbox_identity(field: str) -> tuple[str, str, str] | None:
    """The (video, fingerprint, model id or "") an :func:`outbox_field` names; ``None`` for any other
    field (none that this project writes)."""
    if not field.startswith("["):
        return None
    try:
        parts = json.loads(field)
    except ValueError:
        return None
    if isinstance(parts, list) and len(parts) == 3 and all(isinstance(part, str) for part in parts):
        return parts[0], parts[1], parts[2]
    return None


def outbox_prefix(video: str, fingerprint: str) -> str:
    """What every :func:`outbox_field` of this video's version, whatever the model, starts with."""
    return json.dumps([video, fingerprint])[:-1] + ", "


def _top_k(value: object) -> TopK:
    if value is None:
        return ()
    if not (isinstance(value, list) and all(_is_scored_category(item) for item in value)):
        raise InvalidOutcome("top5 is not a list of [category, probability] pairs")
    return tuple((str(name), float(probability)) for name, probability in value)


def _is_scored_category(item: object) -> bool:
    return (
        isinstance(item, list | tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], int | float)
        and not isinstance(item[1], bool)
    )


def counted(
    video: str, fingerprint: str, model_id: str, top5: TopK | list[tuple[str, float]], **details: Any
) -> VideoOutcome:
    """A classified video; ``details`` are the optional fields (worker, timings, frame_count, ...)."""
    return VideoOutcome(COUNTED, video, fingerprint, model_id=model_id, top5=tuple(top5), **details)


def failed(
    video: str,
    fingerprint: str,
    error: str,
    worker: str | None = None,
    model_id: str | None = None,
    for_model: str | None = None,
) -> VideoOutcome:
    """A video that could not be classified, and why; ``for_model``: the model its job was for, if
    it named one."""
    return VideoOutcome(FAILED, video, fingerprint, model_id=model_id, worker=worker, error=error, for_model=for_model)
