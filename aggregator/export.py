"""One row per video, streamed from Redis (HSCAN) so that a million predictions never sit in memory.

Rows are flat (top1..top5 with their probabilities as columns) so that CSV and JSON lines carry the
same fields; their order is Redis' scan order.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import redis

from moments_stream.keys import Keys
from moments_stream.outcome import COUNTED, FAILED, OutcomeKind
from moments_stream.settings import DEFAULT_TOP_K

FORMATS = ("jsonl", "csv")
SCAN_BATCH = 500

COLUMNS = (
    ["video", "outcome"]
    + [field for rank in range(1, DEFAULT_TOP_K + 1) for field in (f"top{rank}", f"top{rank}_probability")]
    + ["model_id", "synthetic_weights", "worker", "fingerprint", "frame_count", "codec", "sampling"]
    + ["download_ms", "decode_ms", "infer_ms", "total_ms", "error"]
)


def export_row(record: dict[str, Any], outcome: OutcomeKind) -> dict[str, Any]:
    """A stored record (the outcome message, of any schema) as one flat row of ``COLUMNS``; the hash
    it came from says whether it was counted or failed."""
    row: dict[str, Any] = {column: record.get(column) for column in COLUMNS}
    row["outcome"] = outcome
    for rank, (category, probability) in enumerate(record.get("top5") or [], start=1):
        if rank > DEFAULT_TOP_K:
            break
        row[f"top{rank}"] = category
        row[f"top{rank}_probability"] = probability
    return row


def _scan(client: redis.Redis, key: str) -> Iterator[dict[str, Any]]:
    for _, raw in client.hscan_iter(key, count=SCAN_BATCH):
        yield json.loads(raw)


def export_rows(
    client: redis.Redis, keys: Keys, model_id: str | None, include_failed: bool = False
) -> Iterator[dict[str, Any]]:
    """The model's predictions, then (if asked) the failed videos, one row at a time."""
    if model_id is not None:
        yield from (export_row(record, COUNTED) for record in _scan(client, keys.predictions(model_id)))
    if include_failed:
        yield from (export_row(record, FAILED) for record in _scan(client, keys.failed()))


def write_rows(rows: Iterator[dict[str, Any]], out: TextIO, output_format: str) -> int:
    """Write ``rows`` as JSON lines or CSV (with a header); returns how many were written."""
    if output_format not in FORMATS:
        raise ValueError(f"unknown export format {output_format!r}; expected one of {FORMATS}")
    if output_format == "csv":
        writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        write_row: Callable[[dict[str, Any]], object] = writer.writerow
    else:

        def write_row(row: dict[str, Any]) -> object:
            return out.write(json.dumps(row, ensure_ascii=False) + "\n")

    written = 0
    for row in rows:
        write_row(row)
        written += 1
    return written


def write_file(rows: Iterator[dict[str, Any]], out: str | Path, output_format: str) -> int:
    """Write ``rows`` to ``out`` aside and rename it, so that a reader never sees half an export."""
    partial = Path(f"{out}.partial")
    with partial.open("w", newline="", encoding="utf-8") as stream:
        written = write_rows(rows, stream, output_format)
    partial.replace(out)
    return written
