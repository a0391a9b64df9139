"""Keeping credentials out of everything a person or program can read back."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]*)@"
)
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|key|secret)=)[^&\s]*")
REDACTED = "***"


def redact_url(url: str) -> str:
    """Return ``url`` with the password (and secret query values) replaced by ``***``.

    >>> redact_url("rtsp://admin:hunter2@10.0.0.5:554/live")
    'rtsp://admin:***@10.0.0.5:554/live'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        netloc = f"{parts.username}:{REDACTED}@{host}"
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, url)


def redact_text(text: str) -> str:
    """Redact every ``scheme://user:password@`` found anywhere in free text."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{REDACTED}@", text)
    return _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URL credentials in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_redaction() -> None:
    """Attach :class:`RedactingFilter` to every handler of the root logger."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
