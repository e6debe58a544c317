"""The results queue: the ``lithops.multiprocessing.Queue`` outcomes travel on from consumers to
aggregators, found by name and bound to each process's own Redis connection.

A pickled Lithops Queue carries its creator's Redis connection arguments (``PicklableRedis``
pickles host, port, password and TLS paths), so a handle shared through Redis would make every
process talk to the creator's address. Instead the queue's list name is derived from the
namespace (:meth:`Keys.results_list`) and each process rebuilds the queue around the client it
connected itself with ``MOMENTS_REDIS_URL``. Messages are JSON text in the Lithops message
envelope (a pickled ``str``, which Lithops' ``Queue.get`` unpickles). The aggregator reads that
envelope with :class:`EnvelopeReader`, an unpickler that refuses every global, so a message
crafted to run code when unpickled builds nothing; it, and any message that is not one of our
outcomes, goes to the dead-letter hash instead of stopping the aggregator.

The Lithops internals this relies on (pinned to lithops 3.8 in pyproject.toml, each checked by
``tests/test_results_queue.py``): the state tuples of ``Queue`` and of the Redis connection
``_RedisConnection`` (what unpickling them restores), ``connection.get_handle_pair``/``get_subhandle``
(how a queue names its list), and the reader's ``recv_bytes_within`` (what ``Queue.get`` reads
the raw message with, before unpickling it).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import time
import uuid
from dataclasses import dataclass
from typing import Any

import cloudpickle
import redis
from lithops.multiprocessing import Queue
from lithops.multiprocessing import config as mp_config
from lithops.multiprocessing.connection import _RedisConnection, get_subhandle
from lithops.multiprocessing.util import RemoteReference

from .keys import Keys
from .outcome import InvalidOutcome, UnsupportedSchema, VideoOutcome
from .settings import Settings

# How much of an unreadable message the dead-letter entry keeps.
DEAD_LETTER_EXCERPT = 2000


def _pipe_end(client: redis.Redis, handle: str, readable: bool) -> _RedisConnection:
    """One end of a Lithops Redis-list pipe on ``client``, as unpickling one would restore it."""
    end = _RedisConnection.__new__(_RedisConnection)
    end.__setstate__((client, handle, get_subhandle(handle), readable, not readable))
    return end


def bind_results_queue(client: redis.Redis, keys: Keys, expiry_s: int) -> Queue:
    """The namespace's results queue, talking through ``client`` (this process's own connection).

    ``expiry_s`` replaces Lithops' 1 h expiry of the queue's list after the last put (an
    aggregator outage may last longer). The queue is not reference-counted (``managed``): it must
    outlive every process that uses it.
    """
    mp_config.set_parameter(mp_config.REDIS_EXPIRY_TIME, expiry_s)
    reader_handle = keys.results_list()
    writer_handle = get_subhandle(reader_handle)  # the writer pushes to its subhandle: the reader's list
    reader = _pipe_end(client, reader_handle, readable=True)
    writer = _pipe_end(client, writer_handle, readable=False)
    reference = RemoteReference([reader_handle, writer_handle], managed=True, client=client)
    queue = Queue.__new__(Queue)
    queue.__setstate__((0, reader, writer, os.getpid(), reference))
    return queue


def put(queue: Queue, outcome: VideoOutcome) -> None:
    """Publish one outcome as JSON text (plain data: no code travels through the queue)."""
    queue.put(outcome.encode())


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
    """The outcome in one JSON text (a queue payload or an outbox entry), or :class:`MalformedMessage`."""
    try:
        return VideoOutcome.decode(text)
    except InvalidOutcome as error:
        excerpt = text if isinstance(text, str) else repr(text)
        raise MalformedMessage(error.reason, excerpt, isinstance(error, UnsupportedSchema)) from None


class EnvelopeReader(pickle.Unpickler):
    """Reads the Lithops envelope of a results message, a pickled ``str``, and nothing more.

    Anyone who can write to Redis can push onto the results list, so a message is untrusted
    input: a full unpickler would run whatever callable the pickle names (``os.system``, say).
    A pickled ``str`` (or any other plain container of plain values) names no global, so this
    reader refuses every global (and persistent id, which the base class already refuses):
    nothing in a message can reach a callable, and nothing runs."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load the global {module}.{name}: the envelope holds JSON text only")


def read_envelope(raw: bytes) -> object:
    """The value pickled in ``raw``, built without loading any global (:class:`EnvelopeReader`)."""
    return EnvelopeReader(io.BytesIO(raw)).load()


def decode(raw: bytes) -> VideoOutcome:
    """The outcome in one raw queue message, or :class:`MalformedMessage` saying what is wrong."""
    try:
        payload = read_envelope(raw)
    except Exception as error:
        raise MalformedMessage(f"not a Lithops queue message ({type(error).__name__}: {error})", repr(raw)) from None
    if not isinstance(payload, str):
        raise MalformedMessage(f"payload is a {type(payload).__name__}, not JSON text", repr(payload))
    return decode_outcome(payload)


def receive(queue: Queue, timeout_s: float) -> bytes | None:
    """The next raw message, waiting at most ``timeout_s``; ``None`` when none came."""
    return queue._reader.recv_bytes_within(timeout_s)


def receive_batch(client: redis.Redis, keys: Keys, queue: Queue, timeout_s: float, max_messages: int) -> list[bytes]:
    """Up to ``max_messages`` raw messages: the next one, waiting at most ``timeout_s``, then those
    already queued behind it, taken in one atomic round trip (several aggregators may drain one
    queue: each message goes to exactly one of them). Empty when none came."""
    first = receive(queue, timeout_s)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    # LRANGE + LTRIM in MULTI rather than LPOP's count argument, which needs Redis 6.2.
    with client.pipeline(transaction=True) as pipe:
        pipe.lrange(keys.results_list(), 0, max_messages - 2)
        pipe.ltrim(keys.results_list(), max_messages - 1, -1)
        rest, _ = pipe.execute()
    return [first, *rest]


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


def open_results_queue(client: redis.Redis, settings: Settings) -> Queue:
    """The results queue of ``settings``' namespace on ``client``, with the configured expiry."""
    return bind_results_queue(client, settings.keys, settings.results_ttl_s)


def publish(client: redis.Redis, keys: Keys, queue: Queue, outcome: VideoOutcome) -> None:
    """Hand one outcome to the aggregator: :func:`publish_many` of one."""
    publish_many(client, keys, [outcome])


def publish_many(client: redis.Redis, keys: Keys, outcomes: list[VideoOutcome]) -> None:
    """Hand outcomes to the aggregator: first to the outbox (durable until recorded), then the
    queue, all in one round trip of three commands. Each queue message is what ``queue.put`` would
    push (the pickled JSON text, the list's expiry renewed), so a reader sees one message per
    outcome, in order."""
    if not outcomes:
        return
    now = time.time()
    texts = [outcome.published(now).encode() for outcome in outcomes]
    outbox_fields = [
        field for outcome, text in zip(outcomes, texts, strict=True) for field in (outcome.outbox_field, text)
    ]
    with client.pipeline(transaction=False) as pipe:  # Redis runs them in order: the outbox entries first
        pipe.hset(keys.outbox(), items=outbox_fields)
        pipe.rpush(keys.results_list(), *(cloudpickle.dumps(text) for text in texts))
        pipe.expire(keys.results_list(), mp_config.get_parameter(mp_config.REDIS_EXPIRY_TIME))
        pipe.execute()
