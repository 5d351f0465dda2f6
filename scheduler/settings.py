"""Process settings from ``HEALTHGATE_*`` environment variables."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from datetime import timedelta
from ipaddress import IPv6Address
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from scheduler import constants

#: Shown in place of a URL healthgate cannot read: its password could be anywhere in it.
UNREADABLE_URL = "(a URL healthgate cannot read; not shown)"
#: Words of a query parameter (its name or its value) that carry a secret: ``password``,
#: ``sslpassword``, ``options=-c password=...``, a token or a key.
_SECRET_WORDS = ("pass", "secret", "token", "key")
#: The settings holding a URL: ``repr`` and ``str`` show them with the password masked.
_URL_FIELDS = frozenset(
    {"database_url", "broker_url", "redis_url", "linq_base_url", "d360_base_url", "outcome_url"}
)


def masked_url(url: str) -> str:
    """``url`` with its password shown as ``***``, fit to print or log.

    SQLAlchemy's URL parser reads any ``scheme://user:password@host...`` (Redis, AMQP and
    Celery's ``filesystem://`` too). A URL it cannot read, or reads with an ``@`` left in
    the host (an unescaped ``@`` in the password), is not shown at all. Celery's failover
    form, several URLs joined by ``;``, is masked URL by URL, and a password given as a
    query parameter (``?password=``) is masked too.
    """
    if ";" in url:
        return ";".join(masked_url(part) for part in url.split(";"))
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return UNREADABLE_URL
    if "@" in (parsed.host or ""):
        return UNREADABLE_URL
    if any(_secret_query(k, v) for k, v in parsed.query.items()):
        parsed = parsed.set(
            query={k: "***" if _secret_query(k, v) else v for k, v in parsed.query.items()}
        )
    if parsed.drivername.startswith("redis") and parsed.username and parsed.password is None:
        # ``redis://secret@host``: older clients read a lone user part as the password.
        parsed = parsed.set(username="***")
    return parsed.render_as_string(hide_password=True)


def _secret_query(key: str, value: str | tuple[str, ...]) -> bool:
    """A query parameter that holds a secret: ``password``, ``sslpassword``, a token, or
    ``options`` that set one (``-c password=...``)."""
    values = value if isinstance(value, tuple) else (value,)
    return any(word in key.lower() for word in _SECRET_WORDS) or any(
        word in v.lower() for v in values for word in _SECRET_WORDS
    )


class Settings(BaseSettings):
    """Where state lives and how to reach the services; policies live in the policy file."""

    model_config = SettingsConfigDict(env_prefix="HEALTHGATE_", extra="ignore", frozen=True)

    #: State of the embedded default (database, broker folders, send log).
    data_dir: Path = Path(".healthgate")
    policy_file: Path = Path("healthgate.toml")
    #: Defaults to SQLite under ``data_dir``; ``postgresql://...`` in production.
    database_url: str | None = None
    #: Defaults to a folder broker under ``data_dir``; ``redis://...`` in production.
    broker_url: str | None = None
    #: Global limits in Redis when set; in the database otherwise.
    redis_url: str | None = None
    #: Where the ``log`` provider appends one JSON line per send.
    send_log: Path | None = None
    #: Senders by provider name, as ``module:callable`` import paths, replacing the built-in
    #: ones (an in-house gateway, a test double); the callable gets these settings.
    providers: dict[str, str] = Field(default_factory=dict)

    tick_seconds: float = Field(constants.TICK_SECONDS, gt=0)
    dispatch_batch: int = Field(constants.DISPATCH_BATCH, gt=0)
    claim_limit: int = Field(constants.CLAIM_LIMIT, gt=0)
    max_in_flight: int = Field(constants.MAX_IN_FLIGHT, gt=0)
    lease_seconds: float = Field(constants.LEASE_SECONDS, gt=0)
    #: A message SENDING for longer than this is reconciled by beat's tick.
    reconcile_after_seconds: float = Field(constants.RECONCILE_AFTER_SECONDS, gt=0)
    #: How often beat polls the providers for line health.
    poll_seconds: float = Field(constants.POLL_SECONDS, gt=0)
    #: Finished messages' bodies and webhook bodies are purged this many days after.
    retention_days: int = Field(constants.RETENTION_DAYS, gt=0, le=36_500)

    linq_api_key: SecretStr | None = None
    linq_base_url: str | None = None
    #: 360dialog's API; each line's key is named by ``api_key_env`` in the policy file.
    d360_base_url: str = constants.D360_BASE_URL

    #: The Linq webhook signing secrets (``whsec_...``), separated by spaces: a delivery
    #: signed with any of them is accepted, so a secret is rotated without a gap.
    #: Without one, webhooks are refused.
    linq_webhook_secret: SecretStr | None = None

    #: Where the web process (webhooks, read-only JSON) listens.
    web_host: str = constants.WEB_HOST
    web_port: int = Field(constants.WEB_PORT, gt=0, lt=65536)
    #: The bearer token every read of the web process needs (``Authorization: Bearer``).
    #: Without it reads are refused, and the web process will not listen beyond loopback.
    api_token: SecretStr | None = None
    #: A token that opens ``/metrics`` only (for a scraper); the API token opens it too.
    metrics_token: SecretStr | None = None
    #: The ``Host`` names the web process answers (others get 400: DNS rebinding), separated
    #: by commas or spaces; ``*.example.com`` covers subdomains. A public deployment lists
    #: the name its webhooks and readers use.
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = constants.WEB_ALLOWED_HOSTS
    #: The OpenAPI schema (``/openapi.json``), behind the token.
    web_docs: bool = False
    #: SQLite waits this long for the write lock before a write fails (then a webhook is
    #: answered 503 with ``Retry-After``, and the provider delivers it again).
    sqlite_busy_timeout_seconds: float = Field(constants.SQLITE_BUSY_TIMEOUT_SECONDS, gt=0)

    #: The application's Celery task told of every message that finishes (sent, dropped,
    #: expired, failed, needs_review, cancelled): one argument, the outcome as a dict.
    outcome_task: str | None = None
    #: The queue that task is sent to; the application's worker consumes it.
    outcome_queue: str = constants.OUTCOME_QUEUE
    #: Or, for an application outside Celery, a URL each outcome is POSTed to, signed
    #: with ``outcome_secret`` (``whsec_...``) per Standard Webhooks.
    outcome_url: str | None = None
    outcome_secret: SecretStr | None = None

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        """A list from the environment's ``a.example, b.example``; IPv6 literals bracketed."""
        names = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(names, list | tuple):
            return names
        return tuple(_host_pattern(name) for name in names)

    @model_validator(mode="after")
    def _one_callback(self) -> Settings:
        """At most one callback on outcome, each with what it needs."""
        if self.outcome_task is not None and not self.outcome_task.strip():
            raise ValueError("HEALTHGATE_OUTCOME_TASK is empty: name a task, or unset it")
        if self.outcome_queue == constants.DEFAULT_QUEUE:
            raise ValueError(
                f"HEALTHGATE_OUTCOME_QUEUE={self.outcome_queue!r}: healthgate's own queue, "
                "whose worker does not know your callback task and would drop every call; "
                "name the queue your worker consumes"
            )
        if self.outcome_task and self.outcome_url:
            raise ValueError(
                "HEALTHGATE_OUTCOME_TASK and HEALTHGATE_OUTCOME_URL are both set: "
                "outcomes go to one callback, a task or a webhook"
            )
        if self.outcome_url is not None:
            _check_webhook_url(self.outcome_url)
            if self.outcome_secret is None:
                raise ValueError(
                    "HEALTHGATE_OUTCOME_URL needs HEALTHGATE_OUTCOME_SECRET (whsec_...): "
                    "every webhook out is signed"
                )
        if self.outcome_secret is not None:
            _check_webhook_secret(self.outcome_secret.get_secret_value())
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """What ``repr`` and ``str`` show: every URL with its password masked."""
        for name, value in super().__repr_args__():
            if name == "outcome_url" and isinstance(value, str):
                value = shown_url(value)
            elif name in _URL_FIELDS and isinstance(value, str):
                value = masked_url(value)
            yield name, value

    @property
    def database(self) -> str:
        """The SQLAlchemy URL, with the psycopg 3 driver for plain PostgreSQL URLs."""
        url = self.database_url or f"sqlite:///{self.data_dir / constants.SQLITE_FILE}"
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url.removeprefix(prefix)
        return url

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def tick(self) -> timedelta:
        """Beat's period, as a duration (workers not seen for a few are stale)."""
        return timedelta(seconds=self.tick_seconds)

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / constants.BROKER_DIR

    @property
    def send_log_path(self) -> Path:
        return self.send_log or self.data_dir / constants.SEND_LOG_FILE

    @property
    def outcome_callback(self) -> str | None:
        """Where outcomes go, fit to show in ``status``: ``task NAME (queue Q)``,
        ``webhook https://host/…`` or None."""
        if self.outcome_task:
            return f"task {self.outcome_task} (queue {self.outcome_queue})"
        if self.outcome_url:
            return f"webhook {shown_url(self.outcome_url)}"
        return None

    @property
    def embedded(self) -> bool:
        """True when no server is needed at all."""
        return self.database.startswith("sqlite") and self.broker == "filesystem://"


def settings_problem(exc: ValidationError) -> str:
    """A refused setting in one line a problem: the variable, the value as given (masked
    when it is a URL, left out when it is a secret), and what is wrong."""
    lines = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:
            lines.append(message)
            continue
        name = str(error["loc"][0])
        value = error.get("input")
        if any(word in name for word in _SECRET_WORDS):
            shown = "(not shown)"
        elif name == "outcome_url" and isinstance(value, str):
            shown = repr(shown_url(value))
        elif name in _URL_FIELDS and isinstance(value, str):
            shown = repr(masked_url(value))
        else:
            shown = repr(value)[:100]
        lines.append(f"HEALTHGATE_{name.upper()}={shown}: {message}")
    return "; ".join(lines)


def shown_url(url: str) -> str:
    """Where a webhook goes, fit to print: its scheme, host and port only, since a path or
    query may carry a token (``https://hooks.example.com/T0/B0/secret``)."""
    parts = urlsplit(url)
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{rest}"


def _check_webhook_url(url: str) -> None:
    """An absolute http(s) URL with a host, or a ``ValueError`` naming the setting."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rpartition("@")[2]
    if scheme.lower() not in ("http", "https") or not host or any(c.isspace() for c in url):
        raise ValueError(
            f"HEALTHGATE_OUTCOME_URL={shown_url(url)!r}: not an http(s) URL with a host"
        )


def _check_webhook_secret(secret: str) -> None:
    """A Standard Webhooks secret (``whsec_`` and base64 of at least 24 bytes), or a
    ``ValueError`` naming the setting, never the value."""
    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not 24 <= len(key) <= 64:
        raise ValueError(
            "HEALTHGATE_OUTCOME_SECRET is not a webhook secret: whsec_ and the base64 of "
            "24 to 64 random bytes"
        )


def _host_pattern(name: object) -> object:
    """``::1`` as the ``Host`` header carries it, ``[::1]``; any other name as it is."""
    if not isinstance(name, str):
        return name
    try:
        IPv6Address(name)
    except ValueError:
        return name.lower()
    return f"[{name}]"
