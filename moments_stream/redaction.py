"""Credentials out of what people read: Redis URLs and error texts redacted for messages and logs.

Pure text functions, apart from redis_conn so that logging (imported by every command, `consumer
classify` included) need not import redis-py.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

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
