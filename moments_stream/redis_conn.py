"""Connecting to Redis: one client per URL, with clear errors naming the fix and the retry policy
that rides out a Redis restart (the embedded server lives in ``embedded_redis``)."""

from __future__ import annotations

from urllib.parse import urlparse

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from .errors import RedisUnavailableError


def text(value: object) -> str:
    """A Redis reply as text (our clients return bytes; redis-py types replies more loosely)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a text reply from Redis, got {type(value).__name__}")


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
    return parsed._replace(netloc=netloc).geturl()


# Once connected, commands ride out a Redis restart (about a minute of retries with back-off);
# the first PING is not retried, so a wrong URL or password fails at once (callers that should
# wait for Redis to come up, like consumers, retry connect() themselves).
FIRST_PING_RETRY = Retry(NoBackoff(), retries=0)
OUTAGE_RETRY = Retry(ExponentialWithJitterBackoff(base=0.5, cap=5), retries=20)


# What a client raises while Redis is down or restarting (after its own retries ran out).
REDIS_OUTAGE = (redis.ConnectionError, redis.TimeoutError)


def connect(url: str) -> redis.Redis:
    """A client for ``url`` that has answered PING, or a :class:`RedisUnavailableError` naming the fix.

    TLS settings come from the URL's query, as redis-py reads them, e.g.
    ``rediss://:PASSWORD@host:6380/0?ssl_ca_certs=/etc/ssl/ca.pem``.
    """
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30, retry=FIRST_PING_RETRY)
        client.ping()
    except redis.AuthenticationError as error:
        if urlparse(url).password is None:
            raise RedisUnavailableError(
                f"Redis at {redact(url)} requires a password",
                fix="put it in MOMENTS_REDIS_URL, e.g. redis://:PASSWORD@host:6379/0",
            ) from None
        raise RedisUnavailableError(
            f"Redis at {redact(url)} refused the credentials: {error}",
            fix="put the right password in MOMENTS_REDIS_URL, e.g. redis://:PASSWORD@host:6379/0",
        ) from None
    except redis.ResponseError as error:
        if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
            raise RedisUnavailableError(
                f"Redis at {redact(url)} requires a password",
                fix="put it in MOMENTS_REDIS_URL, e.g. redis://:PASSWORD@host:6379/0",
            ) from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        raise RedisUnavailableError(
            f"cannot connect to Redis at {redact(url)}: {error}",
            fix="start Redis there, or point MOMENTS_REDIS_URL at a running server "
            "(TLS: rediss://...?ssl_ca_certs=CA.pem)",
        ) from None
    client.set_retry(OUTAGE_RETRY)
    return client
