"""Keeping credentials out of everything a person or program can read back."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]*)@"
)
#: A query parameter is secret when its name contains one of these (case-insensitive):
#: ``password``, ``apikey``, ``access_token``, ``signature``, ``auth``, ``X-Amz-Credential``...
#: Loose on purpose: a harmless parameter hidden costs nothing, a secret shown leaks.  The
#: one rule for redaction (:func:`redact_url`, :func:`redact_text`) and for sealing URLs in
#: the runtime registry (:func:`url_secrets` -> ``secrets.has_inline_secret``).
SECRET_NAME_PARTS: tuple[str, ...] = (
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "sig",
    "credential",
)
_PARTS = "|".join(SECRET_NAME_PARTS)
_QUERY_SECRET = re.compile(rf"(?i)([?&;][^=&;?#\s]*(?:{_PARTS})[^=&;?#\s]*=)([^&;#\s]*)")
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


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that :func:`redact_url` hides: its password and the values of
    secret query parameters (empty ones left out).

    >>> url_secrets("rtsp://admin:hunter2@cam/live?token=abc")
    ['hunter2', 'abc']
    """
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    found = [password] if password else []
    return found + [m.group(2) for m in _QUERY_SECRET.finditer(url) if m.group(2)]


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


# ---- which schemes a source may use ---------------------------------------------------
#: What a stream URL may be, as ``source.allowed_schemes`` names it ("file": a local path).
SOURCE_SCHEMES: tuple[str, ...] = ("rtsp", "rtsps", "http", "https", "file")

#: FFmpeg's ``protocol_whitelist`` per scheme: the only protocols FFmpeg may open for a
#: stream, nested ones included (an HLS playlist, an SDP, a redirect cannot reach others).
PROTOCOL_WHITELIST: dict[str, str] = {
    "rtsp": "rtsp,rtp,udp,tcp",
    "rtsps": "rtsp,rtsps,rtp,udp,tcp,tls",
    "http": "http,https,tcp,tls",
    "https": "http,https,tcp,tls",
    "file": "file",
}

# FFmpeg's url_find_protocol: a run of scheme characters followed by ':' names a protocol
# ("concat:", "data:", "pipe:", "tcp:", "subfile,,start,..,:"), with or without "//".
_FFMPEG_PROTOCOL = re.compile(r"^(?P<name>[A-Za-z0-9+.\-]*):")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def source_scheme(url: str) -> str:
    """The scheme of a stream URL as ``source.allowed_schemes`` names it.

    A plain path is ``"file"``. Raises :class:`ValueError` (message without the password)
    for anything FFmpeg would open through another protocol -- ``concat:``, ``data:``,
    ``subfile,``, ``pipe:``, raw ``tcp:``/``udp:``, ... -- including a ``file://`` URL or
    path that hides such a prefix, and for control characters.

    >>> source_scheme("rtsp://cam/live"), source_scheme("clips/a.mp4")
    ('rtsp', 'file')
    """
    if _CONTROL.search(url):
        raise ValueError("control character in the URL")
    if url[:8].lower() == "subfile,":
        raise ValueError("FFmpeg protocol 'subfile' is not a stream source")
    match = _FFMPEG_PROTOCOL.match(url)
    if match is None:
        return "file"
    scheme = match.group("name").lower()
    if scheme == "file":
        path = url[7:] if url[:7].lower() == "file://" else url[5:]
        if _FFMPEG_PROTOCOL.match(path) or path[:8].lower() == "subfile,":
            raise ValueError("file path starts with an FFmpeg protocol prefix")
        return "file"
    if scheme in SOURCE_SCHEMES:
        if url[len(scheme) : len(scheme) + 3] != "://":
            raise ValueError(f"{scheme} URL must start with '{scheme}://'")
        return scheme
    raise ValueError(
        f"unsupported URL scheme {scheme!r} (use rtsp, rtsps, http, https, file or a plain path)"
    )
