"""What the HTTP outputs (webhook, Alertmanager) share: identification, bearer
tokens from a file, which answers are worth retrying, URLs fit for a log line."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import msgspec
import structlog
import trio

from .. import __version__

__all__ = ["AUTH_STATUSES", "RETRY_STATUSES", "USER_AGENT", "HttpUrl", "TokenFile", "redact_url", "retryable"]

log = structlog.get_logger("xfrmwatch.output.http")

USER_AGENT = f"xfrmwatch/{__version__}"
#: a configured http:// or https:// URL
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://")]
#: statuses worth retrying (besides transport errors and 5xx)
RETRY_STATUSES = frozenset({408, 425, 429})
#: statuses after which the token file is read again (and the request retried)
AUTH_STATUSES = frozenset({401, 403})


def retryable(status: int) -> bool:
    return status >= 500 or status in RETRY_STATUSES or status in AUTH_STATUSES


class TokenFile:
    """A bearer token read from a file (stripped), cached until :meth:`invalidate`
    (on SIGHUP, or after a 401/403), so rotated tokens are picked up."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._token: str | None = None

    def invalidate(self) -> None:
        self._token = None

    async def headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer ..."}``, or nothing without a path.  An
        unreadable file is logged and sends no Authorization header."""
        if not self.path:
            return {}
        if self._token is None:
            try:
                self._token = (await trio.Path(self.path).read_text()).strip()
            except OSError as exc:
                log.error("cannot read token file", path=self.path, error=exc.strerror or str(exc))
                return {}
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}


def redact_url(url: str) -> str:
    """A URL fit for a log line: no user:password, no query (tokens live there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparsable url>"
