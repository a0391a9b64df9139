"""The ``api:`` section of a config file."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` / ``"0.0.0.0:0"`` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"listen {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if number > 65535:
        raise ValueError(f"listen {listen!r}: port {number} is above 65535")
    return host, number


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiConfig(BaseModel):
    """The operator HTTP API (served by ``visionflow run`` and ``visionflow api``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = Field(
        default="127.0.0.1:8080",
        description="HOST:PORT to listen on; loopback (127.0.0.1, ::1, localhost) by default. "
        "Port 0 picks a free port. Any other address needs token or token_file.",
    )
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token the mutating routes (POST/PATCH/DELETE) require; write it as "
        "${ENV_VAR} to keep it out of the file. Never logged or returned.",
    )
    token_file: str | None = Field(
        default=None,
        description="File holding the bearer token (a mounted secret; surrounding whitespace "
        "ignored), read at start-up; relative to the config file's folder. Use token or "
        "token_file, not both. Neither: the API is read-only (mutating routes answer 403).",
    )
    status_stale_s: float = Field(
        default=10.0,
        gt=0,
        description="visionflow api (reading Redis): /readyz reports not ready when the "
        "status in Redis was last written longer ago than this (the pipeline is gone).",
    )

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, listen: str) -> str:
        split_listen(listen)
        return listen

    @model_validator(mode="after")
    def _token_rules(self) -> ApiConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        if self.token is not None and not self.token.get_secret_value().strip():
            raise ValueError("token is empty (is its ${ENV} variable set to an empty value?)")
        host, _ = split_listen(self.listen)
        if not is_loopback(host) and self.token is None and self.token_file is None:
            raise ValueError(
                f"listen {self.listen!r} is reachable from other machines: set token or "
                "token_file (or listen on 127.0.0.1)"
            )
        return self

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]
