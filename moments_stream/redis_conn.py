"""Connecting to Redis: one client per URL, with clear errors naming the fix and the retry policy
that rides out a Redis restart (the embedded server lives in ``embedded_redis``)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

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


# A query option that carries a secret: redis-py reads ``password`` (and ``ssl_password``, the TLS
# key's passphrase) from the query as well as from the user-info part.
_SECRET_OPTION = re.compile(r"(?P<name>[?&;][^=&;#]*(?:password|passwd|secret|token)[^=&;#]*=)(?P<value>[^&;#]*)",
                            re.IGNORECASE)
# A URL of a scheme redis-py (or Lithops, rq) may show, inside any text.
_URL_IN_TEXT = re.compile(r"\b(?:rediss?|unix|redis\+sentinel)://[^\s'\"<>]+", re.IGNORECASE)
MASK = "***"


def redact(url: str) -> str:
    """The URL without its credentials (``user:PASSWORD@``, ``?password=``, ``ssl_password=``), for
    messages and logs."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return _SECRET_OPTION.sub(rf"\g<name>{MASK}", url)
    authority, path_start, tail = rest, "", ""
    for index, char in enumerate(rest):
        if char in "/?#":
            authority, path_start, tail = rest[:index], char, rest[index + 1:]
            break
    if "@" in authority:
        userinfo, _, hostport = authority.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:{MASK}@{hostport}" if colon else authority
    tail = _SECRET_OPTION.sub(rf"\g<name>{MASK}", path_start + tail)
    return f"{scheme}://{authority}{tail}"


def redact_text(text: str) -> str:
    """``text`` with every Redis URL in it redacted (:func:`redact`): for error messages and logs."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact(match.group(0)), text)


def secrets_of(url: str) -> list[str]:
    """The secret strings ``url`` holds (its password, however given), longest first."""
    found = []
    try:
        parsed = urlsplit(url)
        if parsed.password:
            found += [parsed.password, unquote(parsed.password)]
        for name, values in parse_qs(parsed.query).items():
            if _SECRET_OPTION.fullmatch(f"?{name}=x"):
                found += values
    except ValueError:  # not parseable: redact() still masks what it recognises
        pass
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def without_secrets(text: str, url: str) -> str:
    """``text`` (an error's message, say) with ``url``'s secrets masked wherever they appear."""
    text = redact_text(text)
    for secret in secrets_of(url):
        text = text.replace(secret, MASK)
    return text


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
