"""Logging set-up for the `beacon` processes: one format, and no password of a URL in any log line."""

from __future__ import annotations

import logging
import re
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
REDACTED = "***"

# scheme://user:password@host — the userinfo runs to the netloc's last "@" (redis-py splits it there too).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s/?#]*)@")
# redis-py also takes the password from the query string: redis://host/0?password=...
_URL_PASSWORD_PARAM = re.compile(r"(?P<key>[?&]password=)[^&#\s]*", re.IGNORECASE)


def _hide_password(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{REDACTED}@" if colon else match.group(0)


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***` (user names and hosts are kept)."""
    return _URL_PASSWORD_PARAM.sub(rf"\g<key>{REDACTED}", _URL_USERINFO.sub(_hide_password, text))


class RedactingFormatter(logging.Formatter):
    """Formats a record, its arguments and its traceback, then redacts URL passwords from the result."""

    def format(self, record: logging.LogRecord) -> str:
        """The redacted line (a traceback included, since an exception's message may quote a URL)."""
        return redact(super().format(record))


def configure_logging(level: str) -> None:
    """Send every logger's records to stderr through the redacting formatter, at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
