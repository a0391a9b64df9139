"""Stream URLs with credentials in the runtime registry: kept in Redis only encrypted.

A stream added at run time must come back after a restart with its password, yet no
password may be stored in Redis in plain text.  So a URL whose password (or secret query
value: ``token=``, ``key=``, ...) is written inline is sealed with Fernet (AES-128-CBC +
HMAC-SHA256, from the ``cryptography`` package) before it is stored: the registry entry
keeps the redacted URL for display and the Fernet token of the whole URL.  The key comes
from, in this order:

1. ``registry.secret_key_file`` in the config (a file holding the key),
2. the environment variable ``VISIONFLOW_REGISTRY_KEY`` (the key itself),
3. the environment variable ``VISIONFLOW_REGISTRY_KEY_FILE`` (a file holding it).

Make a key with ``python -c "from cryptography.fernet import Fernet;
print(Fernet.generate_key().decode())"``.  Every process that reads the registry for the
pipeline (``visionflow run``) or writes it (the API) needs the same key.

A password written as an ``${ENV}`` reference (``rtsp://admin:${CAM7_PASSWORD}@cam7/live``)
is not a secret in itself: it is stored as written and resolved from the environment of the
pipeline that reads the stream.  Whoever adds streams at run time must not be able to read
the pipeline's environment through a URL (``rtsp://cam/${VISIONFLOW_REGISTRY_KEY}`` would put
the key into the status), so a runtime URL (:func:`check_runtime_url`) may hold one reference
only as the whole password, naming a variable whose name starts with ``CAM`` (``CAM7_PASSWORD``,
``CAM_PASSWORD``, ``CAMERA_PW``); config-file URLs keep full ``${ENV}`` support.

Without a key, a URL with an inline password is refused
(:class:`~visionflow.errors.ConfigError` saying how to configure a key or use ``${ENV}``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken

from visionflow.config import ENV_REF
from visionflow.errors import ConfigError
from visionflow.streams.urls import redact_url, url_secrets

KEY_ENV = "VISIONFLOW_REGISTRY_KEY"
KEY_FILE_ENV = "VISIONFLOW_REGISTRY_KEY_FILE"
HOW_TO_KEY = (
    f'set {KEY_ENV} to a Fernet key (make one with: python -c "from cryptography.fernet '
    f'import Fernet; print(Fernet.generate_key().decode())"), or point '
    f"registry.secret_key_file / {KEY_FILE_ENV} at a file holding it; or write the password "
    "as an ${ENV_VAR} reference resolved where the pipeline runs"
)


#: A runtime URL's ``${NAME}`` must name a variable starting with this (never VISIONFLOW_*,
#: which hold the registry key, the Redis URL, ...).
RUNTIME_ENV_PREFIX = "CAM"
RUNTIME_URL_RULE = (
    "a stream added or changed at run time may use an ${ENV} reference only as the whole "
    f"password of the URL (rtsp://user:${{{RUNTIME_ENV_PREFIX}7_PASSWORD}}@host/...), naming a "
    f"variable whose name starts with {RUNTIME_ENV_PREFIX!r}"
)


def check_runtime_url(stream_id: str, url: str) -> None:
    """ConfigError (naming :data:`RUNTIME_URL_RULE`) when ``url``, added at run time, holds
    ``${`` anywhere but as the whole password, or a password reference to another variable
    than a ``CAM*`` one: the reference is resolved from the pipeline's environment and the
    resolved URL goes into the status, so anything else would let a token holder read it."""
    if "${" not in url:
        return
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    match = ENV_REF.fullmatch(password or "")
    rest = url.replace(f":{password}@", ":@", 1) if match else url
    problem = None
    if "${" in rest:
        problem = "it holds '${' outside the password"
    elif match is not None and match.group("file") is not None:
        problem = "its password is a ${file:...} reference (a file on the pipeline's host)"
    elif match is not None and match.group("default") is not None:
        problem = "its password reference has a default value (a password in plain text)"
    elif match is not None and not match.group("name").startswith(RUNTIME_ENV_PREFIX):
        problem = f"${{{match.group('name')}}} does not start with {RUNTIME_ENV_PREFIX!r}"
    if problem:
        raise ConfigError(f"stream {stream_id!r}: {problem}: {RUNTIME_URL_RULE}")


def has_inline_secret(url: str) -> bool:
    """True when a secret part of ``url`` is more than ``${ENV}`` references."""
    return any(ENV_REF.sub("", part) for part in url_secrets(url))


def _read_key(where: str, text: str) -> Fernet:
    try:
        return Fernet(text.strip().encode())
    except (ValueError, TypeError):
        raise ConfigError(
            f"{where}: not a Fernet key (32 url-safe base64-encoded bytes); {HOW_TO_KEY}"
        ) from None


def _key_file(where: str, path: str) -> Fernet:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where} {path}: cannot read: {exc.strerror or exc}") from None
    return _read_key(f"{where} {path}", text)


def load_key(secret_key_file: str | None = None) -> Fernet | None:
    """The registry's key (see the module docstring for where it is looked up); None when
    none is configured.  A configured key that cannot be read raises ConfigError."""
    if secret_key_file:
        return _key_file("registry.secret_key_file", secret_key_file)
    if os.environ.get(KEY_ENV):
        return _read_key(f"${KEY_ENV}", os.environ[KEY_ENV])
    if os.environ.get(KEY_FILE_ENV):
        return _key_file(f"${KEY_FILE_ENV}", os.environ[KEY_FILE_ENV])
    return None


class UrlSealer:
    """Seals stream URLs with inline credentials for storage and opens them again."""

    def __init__(self, key: Fernet | None) -> None:
        self._key = key

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def seal(self, stream_id: str, url: str) -> tuple[str, str | None]:
        """``(stored url, token)``: the URL itself and None when it holds no inline secret,
        else the redacted URL and the Fernet token of the whole URL."""
        if not has_inline_secret(url):
            return url, None
        if self._key is None:
            raise ConfigError(
                f"stream {stream_id!r}: the URL {redact_url(url)} has an inline password, "
                f"which the runtime registry keeps only encrypted, and no key is configured: "
                f"{HOW_TO_KEY}"
            )
        return redact_url(url), self._key.encrypt(url.encode()).decode()

    def open(self, stream_id: str, stored_url: str, token: str | None) -> str:
        """The URL as it was added (``${ENV}`` references unresolved)."""
        if token is None:
            return stored_url
        if self._key is None:
            raise ConfigError(
                f"stream {stream_id!r}: its URL {stored_url} is stored encrypted and no key "
                f"is configured to read it: {HOW_TO_KEY}"
            )
        try:
            return self._key.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                f"stream {stream_id!r}: its URL {stored_url} was encrypted with another key "
                "than the one configured (or the entry was altered); configure the key it "
                "was added with, or remove the stream and add it again"
            ) from None
