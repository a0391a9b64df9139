"""Connecting to Redis: one place that makes every client (TLS options included) and turns
Redis's refusals into messages that say what to fix.

``rediss://`` URLs are TLS; the certificate authority and an optional client certificate
come from :class:`RedisTls` fields (``redis.tls_*`` in the config), used only for
``rediss://`` URLs so a plain ``redis://`` fallback server still works.  Credentials are the
URL's ``user:password@`` part (an ACL user; the password usually from ``${ENV}`` or
``${file:/run/secrets/...}`` in the config, never written on a command line).

:func:`explain` is how every visionflow component reports a Redis error: the password is
redacted, and an ACL refusal says which command on which key the user lacks, a refused
login or a failed certificate check says what to set.
"""

from __future__ import annotations

from typing import Any

import redis
from pydantic import BaseModel, Field, model_validator
from redis.exceptions import NoPermissionError

from visionflow.errors import PublishError
from visionflow.streams.urls import redact_text

ACL_HINT = "grant the user the rules in README 'Secrets, Redis ACL users and TLS'"
TLS_HINT = (
    "set redis.tls_ca_file to the CA that signed the server's certificate "
    "(and tls_cert_file/tls_key_file if the server asks for a client certificate)"
)


class RedisTls(BaseModel):
    """TLS files for ``rediss://`` URLs (ignored for ``redis://``)."""

    tls_ca_file: str | None = Field(
        default=None,
        description="PEM file of the certificate authority that signed the Redis server's "
        "certificate, for rediss:// URLs. Empty: the system's trusted CAs.",
    )
    tls_cert_file: str | None = Field(
        default=None,
        description="PEM client certificate for rediss:// servers that require one "
        "(tls-auth-clients yes); its key in tls_key_file, or in this file too.",
    )
    tls_key_file: str | None = Field(
        default=None,
        description="PEM private key of tls_cert_file (keep it readable only by the pipeline's "
        "user).",
    )

    @model_validator(mode="after")
    def _key_needs_cert(self) -> RedisTls:
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file is set without tls_cert_file (the certificate it signs)")
        return self

    def tls_kwargs(self, url: str) -> dict[str, Any]:
        """redis-py connection arguments for ``url`` (none unless it is ``rediss://``)."""
        if not url.lower().startswith("rediss://"):
            return {}
        kwargs: dict[str, Any] = {}
        if self.tls_ca_file:
            kwargs["ssl_ca_certs"] = self.tls_ca_file
        if self.tls_cert_file:
            kwargs["ssl_certfile"] = self.tls_cert_file
            kwargs["ssl_keyfile"] = self.tls_key_file
        return kwargs


def connect(url: str, tls: RedisTls | None = None, **kwargs: Any) -> redis.Redis:
    """A client for ``url`` with the TLS files of ``tls`` (for ``rediss://``)."""
    extra = tls.tls_kwargs(url) if tls is not None else {}
    return redis.Redis.from_url(url, **extra, **kwargs)


def _tls_failure(text: str) -> bool:
    """An error of the TLS layer: an unknown CA, a refused or missing client certificate
    (TLS 1.3 reports that as an EOF from ``_ssl.c`` at the first write)."""
    lowered = text.lower()
    return "ssl" in lowered or "certificate" in lowered or "tls" in lowered


def explain(exc: BaseException) -> str:
    """One line for logs and status: what Redis refused and what to do (password redacted)."""
    text = redact_text(f"{exc}")
    if isinstance(exc, NoPermissionError):
        return f"permission denied by the Redis ACL: {text}; {ACL_HINT}"
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text:
        return (
            f"Redis refused the login ({text}): check the user and the password in the URL "
            "(from ${ENV} or ${file:...})"
        )
    if isinstance(exc, redis.ConnectionError) and _tls_failure(text):
        return f"TLS to Redis failed ({text}): {TLS_HINT}"
    return f"{type(exc).__name__}: {text}"


def denied(exc: BaseException, command: str, key: str) -> BaseException:
    """An ACL refusal of ``command`` on ``key``, named in the error (Redis 7's key refusal
    does not name the key); any other error unchanged."""
    if isinstance(exc, NoPermissionError):
        return NoPermissionError(f"{command} {key}: {exc}")
    return exc


def fatal(exc: BaseException) -> bool:
    """True when retrying cannot help until someone changes the credentials, the ACL or
    the TLS files (as opposed to a server that is down or slow)."""
    if isinstance(exc, NoPermissionError | redis.AuthenticationError):
        return True
    text = str(exc)
    return "WRONGPASS" in text or (isinstance(exc, redis.ConnectionError) and _tls_failure(text))


def probe(url: str, tls: RedisTls | None = None, timeout: float = 1.0) -> str | None:
    """None when the server answers PING; the reason when it cannot be reached.  Raises
    :class:`PublishError` when it can be reached but refuses us (login, ACL, TLS): falling
    back to another server would hide that."""
    client = connect(url, tls, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
        return None
    except (redis.RedisError, OSError) as exc:
        if fatal(exc):
            raise PublishError(explain(exc)) from None
        return explain(exc)
    finally:
        client.close()


# ---- ACL users ------------------------------------------------------------------------
# The least a pipeline and a consumer need, per key family (Redis >= 7: one selector in
# parentheses per family, so a command is allowed only on its own family's keys).  Keyless:
# PING (health), MULTI/EXEC/DISCARD (status and dead letters are written in transactions).
# redis-py's CLIENT SETINFO on connect (Redis >= 7.2) may be refused: it ignores that.
_KEYLESS = "+ping +multi +exec +discard"
_PUBLISHER = (
    # detections: XADD with MAXLEN trimming; XRANGE + XINFO STREAM for the spool replay's
    # duplicate check and id recovery; XREVRANGE for the CLI's live "latest detection" column
    "~{p}:detections:* +xadd +xtrim +xrange +xrevrange +xinfo|stream",
    # status board: per-stream and per-worker hashes, the pipeline hash, the stream id set
    # (DEL + SADD in MULTI; a removed stream's hash is deleted; a fleet node's worker hashes
    # expire: PEXPIRE)
    "(~{p}:status:* ~{p}:worker:* ~{p}:pipeline ~{p}:streams +hset +del +sadd +pexpire)",
    # per-minute counts buckets (HINCRBY, EXPIRE) and annotated snapshots (SET with a TTL)
    "(~{p}:counts:* +hincrby +expire)",
    "(~{p}:snapshot:* +set +expire)",
    # tracking: events and their counts in one Lua round (EVALSHA; SCRIPT LOAD is keyless)
    # guarded by a round marker under events:
    "(~{p}:events:* ~{p}:counts:* +evalsha +eval +xadd +get +set +hincrby +expire)",
    # the runtime stream registry, read by the reconciler (the API writes it: its own user)
    "(~{p}:registry ~{p}:registry:* +hgetall +hget +get)",
)
# a fleet node's fenced detections writes (visionflow.workers.fence): EVALSHA of a script
# whose two keys are the stream's lease and its detections (both must match one selector),
# which GETs the lease and XADDs / XRANGEs the detections (the first part of _PUBLISHER)
_FENCED = ("(~{p}:detections:* ~{p}:fleet:lease:* +evalsha)", "(~{p}:fleet:lease:* +get)")
_CONSUMER = (
    # the group: created on demand (MKSTREAM), read, acknowledged, reclaimed, inspected
    "~{p}:detections:* ~{p}:streams +xreadgroup +xack +xautoclaim +xpending +xgroup|create "
    "+smembers",
    # dead letters: XADD (in a MULTI with the XACK) to the dead-letter streams only
    "(~{p}:deadletter:* +xadd)",
)


def acl_rules(role: str, prefix: str = "visionflow") -> str:
    """The ACL rules for a ``publisher`` (the pipeline), the extra rules of a fleet node's
    publisher (``fenced``: its write-fenced detections; the rest of a fleet node's keys need
    rules of their own) or a ``consumer`` (:mod:`visionflow.consumer`) of ``prefix``'s keys,
    to follow ``user <name> reset on #<sha256 of the password>`` in an ACL file or
    ``ACL SETUSER``."""
    if role == "fenced":
        return " ".join(_FENCED).format(p=prefix)
    parts = {"publisher": _PUBLISHER, "consumer": _CONSUMER}.get(role)
    if parts is None:
        raise ValueError(f"unknown ACL role {role!r}: 'publisher' or 'consumer'")
    keyless = _KEYLESS + (" +script|load" if role == "publisher" else "")
    return " ".join(["-@all", keyless, *parts]).format(p=prefix)
