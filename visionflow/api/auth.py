"""The bearer token of the mutating routes: where it comes from and how it is checked."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from visionflow.api.config import ApiConfig
from visionflow.errors import ConfigError

bearer = HTTPBearer(auto_error=False, description="api.token (or api.token_file) of the config")


def resolve_token(api: ApiConfig, base_dir: Path) -> str | None:
    """The token the API checks: ``api.token`` or the content of ``api.token_file``
    (relative to ``base_dir``); None when neither is set (read-only API)."""
    if api.token is not None:
        return api.token.get_secret_value().strip()
    if api.token_file is None:
        return None
    path = Path(api.token_file).expanduser()
    path = path if path.is_absolute() else base_dir / path
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"api.token_file {str(path)!r}: cannot read it: {exc.strerror or exc}"
        ) from None
    if not token:
        raise ConfigError(f"api.token_file {str(path)!r} is empty")
    return token


def token_guard(token: str | None) -> Callable[[HTTPAuthorizationCredentials | None], None]:
    """A FastAPI dependency: 401 without the right bearer token (compared in constant
    time), 403 when the API has no token at all (read-only)."""
    expected = token.encode() if token else None

    def guard(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if expected is None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "this API is read-only: set api.token or api.token_file to change streams",
            )
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a valid bearer token is required (Authorization: Bearer <api.token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return guard
