"""Connecting to Redis: one client per URL, with clear errors naming the fix and the retry policy
that rides out a Redis restart (the embedded server lives in ``embedded_redis``)."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from .errors import RedisUnavailableError
from .redaction import redact, secrets_of, without_secrets


def text(value: object) -> str:
    """A Redis reply as text (our clients return bytes; redis-py types replies more loosely)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a text reply from Redis, got {type(value).__name__}")


def has_password(url: str) -> bool:
    return bool(secrets_of(url))


# Once connected, commands ride out a Redis restart (about a minute of retries with back-off);
# the first PING is not retried, so a wrong URL or password fails at once (callers that should
# wait for Redis to come up, like consumers, retry connect() themselves).
FIRST_PING_RETRY = Retry(NoBackoff(), retries=0)
OUTAGE_RETRY = Retry(ExponentialWithJitterBackoff(base=0.5, cap=5), retries=20)


# What a client raises while Redis is down or restarting (after its own retries ran out).
REDIS_OUTAGE = (redis.ConnectionError, redis.TimeoutError)


def _tls_options(url: str) -> dict[str, bool]:
    """TLS connections check the server's host name against its certificate (redis-py 6 and later
    default to it; 5.x did not): asked for here as well, so no release skips it. A URL's own
    ``ssl_check_hostname=false`` still wins (redis-py lets the URL's options override)."""
    return {"ssl_check_hostname": True} if url.lower().startswith("rediss://") else {}


def connect(url: str) -> redis.Redis:
    """A client for ``url`` that has answered PING, or a :class:`RedisUnavailableError` naming the fix.

    TLS settings come from the URL's query, as redis-py reads them, e.g.
    ``rediss://:PASSWORD@host:6380/0?ssl_ca_certs=/etc/ssl/ca.pem``.
    """
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30, retry=FIRST_PING_RETRY,
                                      **_tls_options(url))
        client.ping()
    except redis.AuthenticationError as error:
        if not has_password(url):
            raise RedisUnavailableError(
                f"Redis at {redact(url)} requires a password",
                fix="put it in MOMENTS_REDIS_URL, e.g. redis://:PASSWORD@host:6379/0",
            ) from None
        raise RedisUnavailableError(
            f"Redis at {redact(url)} refused the credentials: {without_secrets(str(error), url)}",
            fix="put the right password in MOMENTS_REDIS_URL, e.g. redis://:PASSWORD@host:6379/0",
        ) from None
    except redis.ResponseError as error:
        if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
            raise RedisUnavailableError(
                f"Redis at {redact(url)} requires a password",
                fix="put it in MOMENTS_REDIS_URL, e.g. redis://:PASSWORD@host:6379/0",
            ) from None
        raise redis.ResponseError(without_secrets(str(error), url)) from None
    except ValueError as error:  # redis-py could not read the URL
        raise RedisUnavailableError(
            f"{redact(url)} is not a Redis URL redis-py reads: {without_secrets(str(error), url)}",
            fix="set MOMENTS_REDIS_URL to redis://[:PASSWORD@]HOST:PORT/DB or rediss://... for TLS",
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        raise RedisUnavailableError(
            f"cannot connect to Redis at {redact(url)}: {without_secrets(str(error), url)}",
            fix="start Redis there, or point MOMENTS_REDIS_URL at a running server "
            "(TLS: rediss://...?ssl_ca_certs=CA.pem)",
        ) from None
    client.set_retry(OUTAGE_RETRY)
    return client
