"""The counts view: one model's per-category counts with the totals of each state, as a document
for scripts (``aggregator counts --json``) and as the table people read."""

from __future__ import annotations

from typing import Any

import redis

from moments_stream import ledger
from moments_stream.settings import Settings

from .status import model_label


def counts_document(client: redis.Redis, settings: Settings, model_id: str | None = None) -> dict[str, Any]:
    """One model's counts (the current one by default) and the totals of each state, for scripts."""
    keys = settings.keys
    model = ledger.resolve_model(client, keys, model_id)
    by_category = dict(ledger.sorted_counts(ledger.counts(client, keys, model))) if model else {}
    return {
        "model": model,
        "counts": by_category,
        "counted": sum(by_category.values()),
        "pending": ledger.pending_count(client, keys),
        "failed": int(client.hlen(keys.failed())),
    }


def format_counts(client: redis.Redis, settings: Settings, model_id: str | None = None) -> str:
    document = counts_document(client, settings, model_id)
    by_category = document["counts"]
    width = max([len(name) for name in by_category] + [8])
    lines = [f"model {model_label(document['model'])}", f"{'category':<{width}}  count"]
    lines += [f"{name:<{width}}  {count:>5}" for name, count in by_category.items()]
    lines.append(f"{'total':<{width}}  {document['counted']:>5}")
    lines.append(f"pending {document['pending']}, failed {document['failed']}")
    return "\n".join(lines)
