"""Settings: one typed model, read from a TOML file, then the environment, then flags.

Later sources win (flags over environment over file over defaults). Any problem becomes one
:class:`~consumer.errors.ConfigError` naming the setting, which the command line prints as one
line with exit code 2.
"""

from __future__ import annotations

import os
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .limits import MAX_BULK, RateLimitMode

#: What the Knock environment does with nested objects on upsert (``knock.nested_merge``); the
#: planner and a backfill's held users fold updates by it.
NestedMerge = Literal["either", "deep"]

DEFAULT_BASE_URL = "https://api.knock.app"
DEFAULT_GROUP_ID = "knock-sink"

#: Knock reserved field -> trait keys tried in order (the first one present wins).
DEFAULT_FIELDS: dict[str, list[str]] = {
    "email": ["email"],
    "name": ["name"],
    "phone_number": ["phone", "phone_number", "phoneNumber"],
    "avatar": ["avatar"],
    "created_at": ["createdAt", "created_at"],
    "locale": ["locale"],
    "timezone": ["timezone"],
}

#: Environment variables and the setting each one fills (the Knock ones are the names Knock's
#: own SDKs read).
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "KNOCK_SINK_TOPICS": ("kafka", "topics"),
    "KNOCK_SINK_GROUP_ID": ("kafka", "group_id"),
    "KNOCK_SINK_DLQ_TOPIC": ("kafka", "dlq_topic"),
    "KNOCK_API_KEY": ("knock", "api_key"),
    "KNOCK_BASE_URL": ("knock", "base_url"),
    "SCHEMA_REGISTRY_URL": ("kafka", "schema_registry_url"),
    "SCHEMA_REGISTRY_BASIC_AUTH": ("kafka", "schema_registry_basic_auth"),
}

#: How a topic's values are read: ``json``; ``avro``, Confluent's framing (byte 0, a 4-byte
#: schema id, Avro binary) with the writer schema from the registry; ``avro-plain``, bare Avro
#: binary with the writer schema in ``kafka.avro_schema_file``; ``auto``, per value: Confluent
#: Avro when the first byte is 0 (no JSON text starts with it), JSON otherwise.
Format = Literal["auto", "json", "avro", "avro-plain"]


class _Section(BaseModel):
    # Attribute docstrings become each field's description: the settings reference
    # (docs/reference/configuration.md) is generated from them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


#: librdkafka prefetches up to 64 MB by default (``queued.max.messages.kbytes``), on top of
#: what the sink holds; 16 MB keeps a backlog's memory bounded and still outruns the sink.
PREFETCH_KBYTES: Final = 16384

#: Once a partition's prefetch is full, librdkafka waits ``fetch.queue.backoff.ms`` (1000 by
#: default) before it fetches for it again, which is longer than the sink takes to read 16 MB:
#: the loop would then wait in ``consume`` for each next fetch. librdkafka's documentation asks
#: for a lower value when the queue thresholds are set low.
FETCH_QUEUE_BACKOFF_MS: Final = 20


class KafkaSettings(_Section):
    """Where events come from, how their values are read, and where dead letters go."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka brokers, comma-separated ``host:port``."""
    topics: list[str] = Field(default_factory=list)
    """Topics to read (comma-separated in the environment variable)."""
    group_id: str = DEFAULT_GROUP_ID
    """Consumer group. A backfill uses ``<group_id>-backfill-<UTC time>`` unless
    ``--group-id`` is given."""
    dlq_topic: str | None = None
    """Dead-letter topic; unset: ``<source topic>.dlq`` for each source topic."""
    client: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """librdkafka settings passed through as they are (TLS, SASL, timeouts...), for the
    consumer and the dead-letter producer."""
    consume_batch: int = Field(default=1000, ge=1, le=100_000)
    """Messages asked of the Kafka client per call."""
    max_message_bytes: int = Field(default=1_048_576, ge=1)
    """Values larger than this go to the dead-letter topic unread (kind ``oversize``)."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group without a commit starts on a partition."""
    schema_registry_url: str | None = None
    """Confluent-compatible Schema Registry base URL (Apicurio: ``.../apis/ccompat/v7``),
    without credentials."""
    schema_registry_basic_auth: SecretStr | None = None
    """``user:password`` for the registry's basic auth; environment or file only, never a
    flag, and never logged."""
    schema_registry_ca: str | None = None
    """CA bundle (PEM path) for the registry's TLS."""
    schema_registry_cert: str | None = None
    """Client certificate (PEM path) for the registry; goes with ``schema_registry_key``."""
    schema_registry_key: str | None = None
    """The client certificate's key (PEM path)."""
    format: Format = "auto"
    """How values are read, for every topic not named in ``formats``: ``json``; ``avro``
    (Confluent framing, writer schema from the registry); ``avro-plain`` (bare Avro binary
    written with ``avro_schema_file``); ``auto``: Confluent Avro when the first byte is 0, JSON
    otherwise, per value."""
    formats: dict[str, Format] = Field(default_factory=dict)
    """Topic -> format, overriding ``format`` for that topic."""
    avro_schema_file: str | None = None
    """Writer schema (``.avsc``) of the topics read as ``avro-plain``."""

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if "@" in v.split("://", 1)[1].split("/", 1)[0]:
            # Credentials in a URL end up in logs and error messages; the secret has its own
            # setting, kept out of both.
            raise ValueError("no user:password in the URL: use SCHEMA_REGISTRY_BASIC_AUTH")
        return v.rstrip("/")

    @field_validator("schema_registry_basic_auth")
    @classmethod
    def _user_password(cls, v: SecretStr | None) -> SecretStr | None:
        # The message never quotes the value: it is a password.
        if v is not None and ":" not in v.get_secret_value():
            raise ValueError("expected user:password")
        return v

    @model_validator(mode="after")
    def _formats_have_what_they_need(self) -> KafkaSettings:
        # ConfigError, not ValueError: pydantic lets it through, so the message names the
        # missing setting instead of "kafka".
        used = {self.format, *self.formats.values()}
        if "avro" in used and not self.schema_registry_url:
            raise ConfigError(
                "kafka.schema_registry_url",
                "format avro (Confluent framing) needs a schema registry (SCHEMA_REGISTRY_URL)",
            )
        if "avro-plain" in used and not self.avro_schema_file:
            raise ConfigError(
                "kafka.avro_schema_file", "format avro-plain needs a writer schema file"
            )
        if (self.schema_registry_cert is None) != (self.schema_registry_key is None):
            raise ConfigError(
                "kafka.schema_registry_cert", "a client certificate and its key go together"
            )
        return self

    def format_for(self, topic: str | None) -> Format:
        """The format of ``topic``'s values (``format`` when the topic is not in ``formats``)."""
        if topic is None:
            return self.format
        return self.formats.get(topic, self.format)

    @field_validator("topics", mode="before")
    @classmethod
    def _split_topics(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [t.strip() for t in v.split(",") if t.strip()]
        return v

    def dlq_for(self, topic: str) -> str:
        return self.dlq_topic or f"{topic}.dlq"

    def prefetch_kbytes(self) -> int:
        """What librdkafka may hold prefetched for the consumer, in KiB (its
        ``queued.max.messages.kbytes``: ours, unless the pass-through sets it)."""
        return int(self.client.get("queued.max.messages.kbytes", PREFETCH_KBYTES))

    def librdkafka(self) -> dict[str, Any]:
        """The librdkafka settings shared by every client: bootstrap plus the pass-through."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.client}


class KnockSettings(_Section):
    """The Knock environment, and how the sink paces and shapes its calls to it."""

    api_key: SecretStr | None = None
    """The environment's secret key (``sk_...``); environment or file only, never a flag, and
    never logged."""
    base_url: str = DEFAULT_BASE_URL
    """Knock API base URL."""
    bulk_size: int = Field(default=MAX_BULK, ge=1, le=MAX_BULK)
    """Users per bulk identify call (use 100 on accounts with Knock's older limit)."""
    rate_limits: RateLimitMode = "knock"
    """``knock`` paces every route to Knock's documented tiers; ``off`` never waits (a local
    Knock-compatible API, benchmarks)."""
    timeout: float = Field(default=30.0, gt=0)
    """Seconds for one HTTP request."""
    max_backoff: float = Field(default=30.0, gt=0)
    """Cap of the exponential backoff between retries of a transient failure, in seconds."""
    concurrency: int = Field(default=8, ge=1, le=64)
    """Requests in flight at once (bulk chunks, merges, single identifies)."""
    nested_merge: NestedMerge = "deep"
    """What the Knock environment does with nested objects on upsert. ``deep`` (Knock documents
    deep merge of nested properties since 2024-11-05) folds two updates that both carry an
    object under one key into one deep-merged entry; ``either``, for environments that do not
    deep-merge, keeps them apart, exact whether Knock deep-merges or replaces them, at the
    cost of more calls."""
    budget_share: float | None = Field(default=None, gt=0, le=1)
    """Share (0 < share <= 1) of Knock's rate limits this consumer group uses, when several
    groups (or other clients) use one Knock environment; unset: all of it. Members of the
    group split it by the partitions they hold."""

    @property
    def paced(self) -> bool:
        """Whether requests are paced to Knock's limits (``rate_limits = "knock"``): what plan
        sizes, the plans' cadence, a backfill's read-ahead and the progress bound ask."""
        return self.rate_limits == "knock"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    def secret_key(self) -> str:
        """The API key; :class:`ConfigError` when it is not set (the one place that checks)."""
        if self.api_key is None or not self.api_key.get_secret_value():
            raise ConfigError("knock.api_key", "not set (KNOCK_API_KEY)")
        return self.api_key.get_secret_value()


class MappingSettings(_Section):
    """How a Segment event's user and traits become a Knock user's properties."""

    default_region: str = "US"
    """Region used to read phone numbers written without a country code."""
    anonymous: Literal["skip", "anonymous_id"] = "skip"
    """What to do with an event that has no ``userId``: skip it (counted), or use its
    ``anonymousId`` (with ``anonymous_prefix`` in front) as the Knock user id."""
    anonymous_prefix: str = ""
    """Put in front of an ``anonymousId`` used as a Knock user id."""
    fields: dict[str, list[str]] = Field(default_factory=dict)
    """Knock reserved field -> trait keys tried in order; an empty list turns the field off
    (the traits it would have read stay custom properties). Keys given here replace the
    defaults of that field only."""
    drop: list[str] = Field(default_factory=list)
    """Traits never sent to Knock."""
    rename: dict[str, str] = Field(default_factory=dict)
    """Trait -> custom property name."""

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        import phonenumbers  # local: only validation needs the region table

        if v.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {v!r}")
        return v.upper()

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(v) - set(DEFAULT_FIELDS))
        if unknown:
            raise ValueError(f"not a Knock reserved field: {', '.join(unknown)}")
        return v

    def field_sources(self) -> dict[str, list[str]]:
        """The effective reserved-field table: defaults overlaid with ``fields``."""
        return {**DEFAULT_FIELDS, **self.fields}


#: Knock's actions besides user properties: each section maps one kind of Segment call (see
#: docs/mapping.md). Field paths are dot paths into the Segment message as sent
#: (``properties.order_id``, ``context.groupId``), as Knock's own Sources write them.


class WorkflowRule(_Section):
    """One workflow trigger (``[[workflows.rules]]``): the calls it matches and what the
    trigger carries. Give exactly one of ``event`` and ``pattern``."""

    type: Literal["track", "page", "screen"] = "track"
    """Message type the rule matches: ``track`` (by ``event``) or ``page``/``screen`` (by
    ``name``)."""
    event: str | None = None
    """The event (or page/screen) name, exactly."""
    pattern: str | None = None
    """Or a glob over the name (``Order *``); ``re:`` in front makes it a regular expression
    that must match the whole name."""
    key: str = Field(min_length=1)
    """The Knock workflow key (required)."""
    data: dict[str, str] | None = None
    """Trigger ``data``: name -> dot path. Unset: every ``properties`` field."""
    actor: str | None = None
    """Dot path of the actor's user id (optional)."""
    tenant: str | None = "context.groupId"
    """Dot path of the tenant id; the trigger has no tenant when the path is absent."""

    @model_validator(mode="after")
    def _one_matcher(self) -> WorkflowRule:
        if (self.event is None) == (self.pattern is None):
            raise ValueError("give exactly one of event or pattern")
        if self.pattern is not None and self.pattern.startswith("re:"):
            import re

            try:
                re.compile(self.pattern[3:])
            except re.error as exc:
                raise ValueError(f"pattern: {exc}") from None
        return self


class WorkflowSettings(_Section):
    """Workflow triggers from ``track``, ``page`` and ``screen`` calls, and the window that
    keeps a replay from notifying twice."""

    rules: list[WorkflowRule] = Field(default_factory=list)
    """The triggers, one ``[[workflows.rules]]`` table each (fields below). Every matching rule
    triggers."""
    max_age: float = Field(default=3600.0, gt=0, le=86_400)
    """``run`` triggers only events at most this many seconds old (by their ``timestamp``).
    Anything at most 24 h is replay-safe (Knock keeps an idempotency key 24 h, and an event
    triggered once is older than ``max_age`` 24 h later); 1 h because an older event is rarely
    still news to the person notified."""
    backfill: bool = False
    """Whether a backfill triggers workflows at all (then only for events newer than
    ``since``)."""
    since: datetime | None = None
    """A backfill triggers only events newer than this. Unset: 24 h before the backfill
    starts, which is also the earliest allowed (older triggers would be outside Knock's
    idempotency window). A time without a zone is UTC."""

    @field_validator("since")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return v


class GroupSettings(_Section):
    """What a ``group`` call becomes besides the user's traits."""

    mode: Literal["off", "tenant", "object"] = "off"
    """Nothing (``off``), a Knock tenant, or an object of ``collection``."""
    collection: str = Field(default="accounts", min_length=1)
    """Object mode: the Knock object collection."""
    subscribe: bool = False
    """Object mode: subscribe the user of the group call to the object."""
    drop: list[str] = Field(default_factory=list)
    """Group traits never sent."""
    rename: dict[str, str] = Field(default_factory=dict)
    """Group trait -> property name."""


class AudienceSettings(_Section):
    """Knock audience membership from identify traits or from track calls."""

    traits: list[str] = Field(default_factory=list)
    """Trait form: these identify traits are audience keys (``true`` adds the user,
    ``false`` removes it)."""
    trait_prefix: str | None = None
    """Trait form: so is every trait starting with this prefix (the whole trait key is the
    audience)."""
    track: bool = False
    """Track form: ``entered`` / ``exited`` events add / remove the user."""
    entered: str = "Audience Entered"
    """Track form: the event that adds the user to the audience."""
    exited: str = "Audience Exited"
    """Track form: the event that removes the user from the audience."""
    key_path: str = "properties.audience_key"
    """Track form: dot path of the audience key."""


class DeleteSettings(_Section):
    """User deletes from a compacted topic's tombstones."""

    tombstones: bool = False
    """A null value (tombstone) keyed by a user id deletes that user; only for topics keyed by
    user id. Off: a tombstone is dead-lettered (``undecodable``)."""


class SinkSettings(_Section):
    """The loop: batching, backpressure, shutdown, a backfill's memory, ordering, watching."""

    flush_interval: float = Field(default=0.5, gt=0)
    """Least seconds between two plans: how long to gather events before sending what is
    buffered. Under Knock's limits a plan is also cut only when its bulk call could leave
    (about once a second); longer intervals send fewer, fuller calls and add up to that long
    to each event's latency (docs/performance.md#freshness)."""
    read_ahead_idle: float = Field(default=1.0, gt=0)
    """A backfill reading ahead: seconds without a record after which it stops reading ahead
    and sends what it holds, once the partitions being read are past their end offsets by the
    consumer's position (docs/backfills.md). Not shorter than moving from one partition to the
    next takes."""
    max_pending: int = Field(default=20_000, ge=1)
    """Events buffered or in flight before fetching pauses (a backfill holds folded users
    instead, bounded by ``backfill_memory_mb``)."""
    catch_up_lag: int = Field(default=1_000, ge=0)
    """``run``: a partition at least this many events behind (when assigned, or as lag builds)
    holds its users, folding each one's events, until it is read to where it ended then; each
    user then goes out once (docs/operations.md#catching-up). 0: off, events go out as read."""
    catch_up_pending: int = Field(default=200_000, ge=1)
    """``run``: events read but unresolved at which fetching pauses while partitions catch up
    (in place of ``max_pending``); when reached, what is folded goes out."""
    drain_timeout: float = Field(default=30.0, gt=0)
    """Seconds allowed on shutdown or partition revoke to finish in-flight work."""
    item_attempts: int = Field(default=5, ge=1)
    """Attempts at one item Knock rejected inside a bulk operation before it is
    dead-lettered."""
    backfill_memory_mb: int = Field(default=256, ge=1)
    """A backfill's memory, in MiB: the whole process's, held users included. Held users spill
    to disk once their estimated size reaches what is left of it after the process's own (its
    resident size when the backfill starts, and twice librdkafka's prefetch allowance), less however
    far the process has since gone past the budget (docs/backfills.md#memory)."""
    work_dir: str | None = None
    """Where a backfill spills held users (a fresh directory inside it, removed at the end);
    unset: the system's temporary directory."""
    lateness: float = Field(default=5.0, ge=0)
    """Topics not keyed by user: seconds of event time a live sink holds the updates of a
    user seen on more than one partition, to hand them on in event-time order; a backfill
    orders every update exactly, unless its topic counts as keyed by user. 0: arrival order,
    for a backfill too (docs/delivery.md#event-time-order-inside-the-sink)."""
    merge_ids: int = Field(default=100_000, ge=0)
    """Merges (alias) whose ``messageId`` is remembered, to skip a repeat of one (0: off)."""
    known_ttl: float = Field(default=86_400.0, ge=0)
    """Change detection: seconds a user's properties that Knock confirmed are remembered, so
    that an update repeating them is not sent again; past it the user's next update goes out
    whole, so a user changed or deleted in Knock by someone else is set right within this long
    of its next mention (the default: a day). 0: off, everything is sent. A backfill in a
    group of its own (no ``--group-id``) keeps no record (docs/change-detection.md)."""
    known_memory_mb: int = Field(default=64, ge=1)
    """Change detection: MiB of memory the remembered users may take (an estimate: about
    1 KB for a user with ten properties); past it the least recently used are forgotten, and
    a forgotten user's next update goes out whole. Not part of ``backfill_memory_mb``."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Serve Prometheus metrics and the ``/healthz`` and ``/readyz`` probes on this port
    (0: off)."""
    stall_timeout: float = Field(default=60.0, gt=0)
    """Seconds without a turn of the loop after which ``/healthz`` and ``/readyz`` fail (at
    least ``drain_timeout`` plus 5: a revoke's drain holds the loop that long)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least level logged."""
    log_format: Literal["auto", "json", "text"] = "auto"
    """``json`` lines, ``text`` lines, or ``auto``: text on a terminal, JSON otherwise."""


class Settings(_Section):
    """Every setting, one section per TOML table."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    knock: KnockSettings = Field(default_factory=KnockSettings)
    mapping: MappingSettings = Field(default_factory=MappingSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    workflows: WorkflowSettings = Field(default_factory=WorkflowSettings)
    groups: GroupSettings = Field(default_factory=GroupSettings)
    audiences: AudienceSettings = Field(default_factory=AudienceSettings)
    deletes: DeleteSettings = Field(default_factory=DeleteSettings)

    def secrets(self) -> list[str]:
        """The values no output may show: the API key, the registry's password (and the whole
        ``user:password``)."""
        out = [self.knock.api_key.get_secret_value()] if self.knock.api_key else []
        if self.kafka.schema_registry_basic_auth is not None:
            auth = self.kafka.schema_registry_basic_auth.get_secret_value()
            out += [auth, auth.partition(":")[2]]
        # librdkafka pass-through: sasl.password, ssl.key.password, sasl.oauthbearer.client.secret...
        out += [str(v) for k, v in self.kafka.client.items() if "password" in k or "secret" in k]
        return [s for s in out if s]

    def require_runnable(self) -> None:
        """Check what ``run`` and ``backfill`` need beyond the types."""
        if not self.kafka.topics:
            raise ConfigError("kafka.topics", "no topic to read (KNOCK_SINK_TOPICS or --topic)")
        self.knock.secret_key()


def _deep_set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from a TOML file, the environment and ``overrides`` (flags),
    in that order of precedence, lowest first.

    ``overrides`` maps dotted names (``"knock.bulk_size"``) to values; ``None`` values are
    ignored so that unset flags do not hide the environment.
    """
    raw: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("--config", f"{path}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path}: {exc}") from None
    env = os.environ if environ is None else environ
    for name, path_ in ENVIRONMENT.items():
        if env.get(name):
            _deep_set(raw, path_, env[name])
    extra: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _deep_set(extra, tuple(dotted.split(".")), value)
    _deep_update(raw, extra)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        raise ConfigError(loc, msg) from None
