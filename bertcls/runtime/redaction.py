"""Secrets never reach a log, a table, a file or an error: passwords in URLs (``scheme://user:password@host``,
also after a path joined the URL into ``scheme:/user:password@host``) and secrets in query strings
(``?password=...``, ``passwd``, ``pwd``, ``sslpassword``, tokens and keys) become ``***`` wherever text leaves the
process."""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
# the password runs to the last "@" of the URL (it may itself hold "/" or "@"), the host follows it
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*:/{1,2}[^/\s:@]*:)(?P<password>\S+)(?P<at>@)(?=[^@\s]*)")
_SECRET_NAMES = r"password|passwd|pwd|sslpassword|secret|token|access_token|auth_token|api_key|apikey|key"
# the secret runs to the next parameter, fragment, quote or space (a trailing ":", "," or "." is punctuation)
_QUERY_SECRET = re.compile(
    rf"(?P<head>[?&;](?:{_SECRET_NAMES})=)(?P<secret>[^&;#\s'\"]+?)(?=[:,.]?(?:[\s&;#'\"]|$))", re.IGNORECASE
)


def redact(text: str) -> str:
    """The text with every URL password and query-string secret replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)


def redact_data(value: Any) -> Any:
    """A copy of nested dicts/lists with every string redacted (for settings written into files)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_data(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """Redacts every record that passes through a handler (its message is rendered first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
