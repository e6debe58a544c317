"""The results queue: how outcomes travel from consumers to aggregators. This module owns its
protocol; nothing else writes or reads the list.

- **The list.** One Redis list per namespace, :meth:`Keys.results_list` (``redislist-a-<namespace>:results``:
  the name Lithops gave it when a ``lithops.multiprocessing.Queue`` carried the messages; kept, so
  a pipeline upgraded mid-run drains what is already there).
- **A message** is one outcome's JSON text, UTF-8 (:mod:`moments_stream.outcome`): plain data, read
  with ``json``; no pickle, so nothing read from Redis can make an aggregator build an object or
  run code.
- **Publishing** (:meth:`ResultsQueue.publish`, consumers): the outcomes' outbox entries (``HSET``,
  durable until recorded), then their messages (``RPUSH``, in order), then the list's expiry
  renewed (``EXPIRE``, ``MOMENTS_RESULTS_TTL``): three commands in one round trip, which Redis runs
  in that order, so a message is never on the list without its outbox copy.
- **Receiving** (:meth:`ResultsQueue.receive`, aggregators): ``BLPOP`` waits for the head, then up
  to ``max_messages - 1`` more are taken with ``LRANGE`` + ``LTRIM`` in one ``MULTI``, so several
  aggregators may drain one list and each message reaches one of them.

A message that is not an outcome this release reads (anyone who can write to Redis can push onto
the list; a pickle, such as a ``lithops.multiprocessing.Queue`` pushes, is never unpickled) goes
to the dead-letter hash with the reason and an excerpt, and draining goes on; its outbox copy, if
it has one, is recorded from there.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from .keys import Keys
from .outcome import InvalidOutcome, UnsupportedSchema, VideoOutcome
from .settings import DEFAULT_RESULTS_TTL_S, Settings

# How much of an unreadable message the dead-letter entry keeps.
DEAD_LETTER_EXCERPT = 2000
# The first byte of a pickle of protocol 2 or later (what a lithops.multiprocessing.Queue pushes).
PICKLE_MARK = b"\x80"


@dataclass(frozen=True)
class ResultsQueue:
    """The results queue of one namespace, on ``client`` (this process's own connection: every
    process connects with its own ``MOMENTS_REDIS_URL``). ``expiry_s``: how long the list outlives
    the last publish (an aggregator outage may be long)."""

    client: redis.Redis
    keys: Keys
    expiry_s: int = DEFAULT_RESULTS_TTL_S

    def publish(self, outcomes: Iterable[VideoOutcome]) -> None:
        """Hand outcomes to the aggregators (:func:`publish_many`)."""
        publish_many(self.client, self.keys, list(outcomes), self.expiry_s)

    def receive(self, timeout_s: float, max_messages: int = 1) -> list[bytes]:
        """Up to ``max_messages`` raw messages, oldest first: the next one, waiting at most
        ``timeout_s``, then those already queued behind it, taken in one atomic round trip. Empty
        when none came."""
        key = self.keys.results_list()
        first: Any
        if timeout_s <= 0:
            first = self.client.lpop(key)  # BLPOP's own 0 would wait for ever
        else:
            head: Any = self.client.blpop([key], timeout=timeout_s)  # a fraction of a second: Redis 6.0 or later
            first = None if head is None else head[1]
        if first is None:
            return []
        if max_messages <= 1:
            return [first]
        # LRANGE + LTRIM in MULTI rather than LPOP's count argument, which needs Redis 6.2.
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, max_messages - 2)
            pipe.ltrim(key, max_messages - 1, -1)
            rest, _ = pipe.execute()
        return [first, *rest]


def open_results_queue(client: redis.Redis, settings: Settings) -> ResultsQueue:
    """The results queue of ``settings``' namespace on ``client``, with the configured expiry."""
    return ResultsQueue(client, settings.keys, settings.results_ttl_s)


def publish_many(client: redis.Redis, keys: Keys, outcomes: list[VideoOutcome],
                 expiry_s: int = DEFAULT_RESULTS_TTL_S) -> None:
    """Hand outcomes to the aggregators: first to the outbox (durable until recorded), then onto the
    list, one message each, in order, and the list's expiry renewed: one round trip of three commands."""
    if not outcomes:
        return
    now = time.time()
    texts = [outcome.published(now).encode() for outcome in outcomes]
    outbox_fields = [
        field for outcome, text in zip(outcomes, texts, strict=True) for field in (outcome.outbox_field, text)
    ]
    with client.pipeline(transaction=False) as pipe:  # Redis runs them in order: the outbox entries first
        pipe.hset(keys.outbox(), items=outbox_fields)
        pipe.rpush(keys.results_list(), *(text.encode() for text in texts))
        pipe.expire(keys.results_list(), expiry_s)
        pipe.execute()


def publish(client: redis.Redis, keys: Keys, outcome: VideoOutcome, expiry_s: int = DEFAULT_RESULTS_TTL_S) -> None:
    """Hand one outcome to the aggregators: :func:`publish_many` of one."""
    publish_many(client, keys, [outcome], expiry_s)


class MalformedMessage(Exception):
    """A results-queue message that is not an outcome this release reads; ``excerpt`` is what
    arrived, for a person. ``newer_schema``: a well-formed outcome of a newer release (its outbox
    copy waits for an upgraded aggregator; it is no dead letter)."""

    def __init__(self, reason: str, excerpt: str, newer_schema: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.excerpt = excerpt[:DEAD_LETTER_EXCERPT]
        self.newer_schema = newer_schema


def decode_outcome(text: str | bytes) -> VideoOutcome:
    """The outcome in one JSON text (a queue message or an outbox entry), or :class:`MalformedMessage`."""
    try:
        return VideoOutcome.decode(text)
    except InvalidOutcome as error:
        excerpt = text if isinstance(text, str) else repr(text)
        raise MalformedMessage(error.reason, excerpt, isinstance(error, UnsupportedSchema)) from None


def decode(raw: bytes) -> VideoOutcome:
    """The outcome in one raw queue message, or :class:`MalformedMessage` saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        pickled = ("a pickle (never unpickled: anyone who can write to Redis could make one run code; an "
                   "outbox copy, if any, is recorded instead)")
        what = pickled if raw.startswith(PICKLE_MARK) else f"not UTF-8 text ({error})"
        raise MalformedMessage(f"not a results message: {what}", repr(raw)) from None
    return decode_outcome(text)


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    excerpt: str
    received_at: float


def dead_letter(client: redis.Redis, keys: Keys, error: MalformedMessage) -> str:
    """Keep an unreadable message in the dead-letter hash; returns its entry id."""
    entry_id = f"{time.time():.6f}-{uuid.uuid4().hex[:8]}"
    letter = DeadLetter(error.reason, error.excerpt, time.time())
    client.hset(keys.dead_letters(), entry_id, json.dumps(letter.__dict__))
    return entry_id
