"""Logging set-up for the `beacon` processes: text or JSON lines, and no secret in any of them (URL passwords,
secret query parameters, and the configured secrets' values are replaced by `***`)."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOG_FORMATS = ("text", "json")  # BEACON_LOG_FORMAT
REDACTED = "***"
# A configured secret shorter than this is not searched for in log lines: it would garble common words, and a
# secret that short protects nothing anyway.
MIN_SECRET_CHARS = 4
# Attributes every record has; any other attribute came from the `extra` of the log call.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# scheme://user:password@host — the userinfo runs to the netloc's last "@" (redis-py splits it there too).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s/?#]*)@")
# redis-py also takes the password from the query string: redis://host/0?password=...; WeChat's and WeCom's
# token calls carry the app secret (`secret=`, `corpsecret=`) and their APIs the access token.
_URL_PASSWORD_PARAM = re.compile(
    r"(?P<key>[?&](?:password|secret|corpsecret|access_token|token)=)[^&#\s]*", re.IGNORECASE
)


def _hide_password(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{REDACTED}@" if colon else match.group(0)


def redact(text: str, secrets: re.Pattern[str] | None = None) -> str:
    """`text` with the password of every URL in it, and secret query parameters, replaced by `***` (user names
    and hosts are kept); with `secrets` (from `secrets_pattern`), every configured secret's value too."""
    text = _URL_PASSWORD_PARAM.sub(rf"\g<key>{REDACTED}", _URL_USERINFO.sub(_hide_password, text))
    return secrets.sub(REDACTED, text) if secrets is not None else text


def secrets_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """A pattern matching any of `secrets` (API keys, app secrets, tokens...), longest first; None if none."""
    values = sorted({value for value in secrets if len(value) >= MIN_SECRET_CHARS}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, values))) if values else None


class RedactingFormatter(logging.Formatter):
    """Formats a record, its arguments and its traceback, then redacts URL passwords (and `secrets`) from it."""

    def __init__(self, fmt: str | None = None, *, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self._secrets = secrets_pattern(secrets)

    def format(self, record: logging.LogRecord) -> str:
        """The redacted line (a traceback included, since an exception's message may quote a URL)."""
        return self.redact(super().format(record))

    def redact(self, text: str) -> str:
        """`text` as `redact` leaves it, with this formatter's secrets hidden too."""
        return redact(text, self._secrets)


class JsonFormatter(RedactingFormatter):
    """One JSON object per record: `ts` (ISO 8601, UTC), `level`, `logger`, `message`, then whatever the call
    passed as `extra` (`partition`, `user_id`, `action_id`, `connector`...), and `exc` with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON, every string in it redacted."""
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = self._plain(value)
        if record.exc_info:
            entry["exc"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = self.redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))

    def _plain(self, value: Any) -> Any:
        """An `extra` value as JSON: numbers, booleans and null as they are, anything else as redacted text."""
        if value is None or isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
            return value
        return self.redact(value if isinstance(value, str) else str(value))


def configure_logging(level: str, log_format: str = "text", secrets: Iterable[str] = ()) -> None:
    """Send every logger's records to stderr at `level`, as text lines or JSON objects (`log_format`), with
    URL passwords and the values of `secrets` hidden."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = (
        JsonFormatter(secrets=secrets) if log_format == "json" else RedactingFormatter(LOG_FORMAT, secrets=secrets)
    )
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)
