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

    redis_timeout_s: float = Field(
        default=0.5,
        gt=0,
        le=30,
        description="Socket connect/read timeout of the API's own Redis connection, with no "
        "retry: while Redis is away the data routes answer 503 within about this long "
        "instead of holding a worker thread for seconds.",
    )
    protect_reads: bool | None = Field(
        default=None,
        description="Whether the GET routes (streams, detections, snapshots, counts, "
        "workers, metrics) need the bearer token too; /healthz, /readyz, the dashboard page "
        "and /docs stay open (the page asks for the token: open it once as /?token=...). "
        "Default: on when listen is not loopback, off on loopback. On needs token or "
        "token_file.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (Host header, port ignored) the API answers besides the "
        "listen host, localhost, 127.0.0.1 and ::1; other hosts get 400, which stops DNS "
        "rebinding from a web page. Always checked on a loopback listener; on another "
        "address only when this list is set (a '*' entry turns the check off).",
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
        if self.protect_reads and self.token is None and self.token_file is None:
            raise ValueError("protect_reads needs token or token_file")
        return self

    @property
    def reads_protected(self) -> bool:
        """``protect_reads``, its default resolved from the listen address."""
        if self.protect_reads is None:
            return not is_loopback(self.host)
        return self.protect_reads

    @property
    def trusted_hosts(self) -> frozenset[str] | None:
        """The Host names answered (lower case); None: any (see ``allowed_hosts``)."""
        if "*" in self.allowed_hosts or (not is_loopback(self.host) and not self.allowed_hosts):
            return None
        names = {self.host, "localhost", "127.0.0.1", "::1", *self.allowed_hosts}
        return frozenset(n.lower() for n in names)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]
