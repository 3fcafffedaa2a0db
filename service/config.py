"""Service settings: one frozen `ServiceSettings`, read once at start and passed down.

Sources, lowest to highest precedence: defaults < config file (TOML or YAML, ``--config``)
< environment (``SENSORCAST_`` prefix, ``__`` between a section and its field, e.g.
``SENSORCAST_KAFKA__BOOTSTRAP_SERVERS``) < command-line flags. Flags win because they are
the most specific thing an operator types for one run; the file is the shared baseline that
a deployment's environment tailors.

`settings_reference()` renders every field as markdown; `sensorcast settings` prints it and a
test checks that the documentation holds exactly that text.
"""

from __future__ import annotations

import contextvars
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from service.errors import ConfigError

__all__ = [
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "DebugSettings",
    "EngineSettings",
    "HttpSettings",
    "KafkaSettings",
    "LogSettings",
    "ModelSettings",
    "ServiceSettings",
    "changelog_topic",
    "env_var_name",
    "load_settings",
    "settings_reference",
]

ENV_PREFIX = "SENSORCAST_"
ENV_NESTED_DELIMITER = "__"

_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "sensorcast_config_file", default=None
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Which broker, topics, consumer group and client, and how records are batched,
    checkpointed, restored and dead-lettered.
    """

    client: Literal["kafka-python", "confluent"] = Field(
        default="kafka-python",
        description="Kafka client library: `kafka-python` (pure Python, always installed) or "
        "`confluent` (confluent-kafka on librdkafka: several times the throughput and far "
        "cheaper checkpoints; needs `pip install 'sensorcast[confluent]'`).",
    )
    bootstrap_servers: str = Field(
        default="localhost:9092",
        min_length=1,
        description="Kafka bootstrap servers, comma-separated host:port.",
    )
    input_topic: str = Field(
        default="sensor-readings", min_length=1, description="Topic the readings are consumed from."
    )
    output_topic: str = Field(
        default="forecasts", min_length=1, description="Topic the forecasts are produced to."
    )
    dead_letter_topic: str = Field(
        default="sensor-readings.dlq",
        min_length=1,
        description="Topic that receives records that cannot be applied.",
    )
    group_id: str = Field(default="sensorcast", min_length=1, description="Consumer group id.")
    client_id: str = Field(
        default="sensorcast", min_length=1, description="Client id reported to the broker."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest", description="Where a group with no committed offset starts reading."
    )
    session_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        description="Consumer group session timeout; a silent member is dropped after it.",
    )
    heartbeat_interval_ms: int = Field(
        default=3_000,
        ge=100,
        description="Consumer heartbeat interval; keep it below a third of the session timeout.",
    )
    max_poll_interval_ms: int = Field(
        default=300_000,
        ge=1000,
        description="Longest allowed pause between polls before the member leaves the group.",
    )
    max_batch: int = Field(
        default=2_000, ge=1, description="Most records taken in one poll (one micro-batch)."
    )
    max_wait_ms: int = Field(
        default=50,
        ge=0,
        description="Longest a poll waits for records before a smaller micro-batch is processed.",
    )
    commit_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between checkpoints (flush forecasts, write changed states, commit offsets).",
    )
    changelog_budget: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Largest share of the time between checkpoints that encoding and sending "
        "changed states to the changelog may take; when a checkpoint's took longer, the next "
        "begins that much later (up to `kafka.commit_interval_max`), so that each changed "
        "stream is written once per longer interval. 1: always every `kafka.commit_interval`.",
    )
    commit_interval_max: float = Field(
        default=60.0,
        gt=0,
        description="Longest time, in seconds, between checkpoints when "
        "`kafka.changelog_budget` stretches the interval (never less than "
        "`kafka.commit_interval`).",
    )
    create_topics: bool = Field(
        default=True,
        description="Create missing topics at start; when false a missing topic is an error.",
    )
    partitions: int = Field(
        default=4,
        ge=1,
        description="Partitions of a created input topic; created derived topics copy the input's count.",
    )
    replication_factor: int = Field(
        default=1, ge=1, description="Replication factor of created topics."
    )
    linger_ms: int = Field(
        default=5, ge=0, description="Producer linger: how long a send waits to fill a batch."
    )
    max_message_bytes: int = Field(
        default=65_536,
        ge=64,
        description="Largest accepted reading record; larger ones are dead-lettered as oversized.",
    )
    max_future_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Readings stamped further than this many seconds ahead of the wall clock "
        "are dead-lettered as `future_timestamp` (unset: 5 minutes or 3 model periods, "
        "whichever is longer).",
    )
    dead_letter_max_bytes: int = Field(
        default=262_144,
        ge=1024,
        description="Largest dead letter written, key and value together: a bigger record is "
        "dead-lettered as its first bytes, with the headers `sensorcast.dead_letter.truncated` "
        "and `sensorcast.source.bytes` (its original size). Keep it below the dead-letter "
        "topic's `max.message.bytes` (1 MB by default on Kafka).",
    )
    dead_letter_late: bool = Field(
        default=False,
        description="Also copy late and duplicate readings to the dead-letter topic (reasons "
        "`late`, `duplicate`); they are counted as drops and logged either way.",
    )
    reconnect_backoff_max: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait, in seconds, between attempts to reach an unreachable broker.",
    )
    checkpoint_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a checkpoint waits for acknowledgements and the commit before it counts as failed.",
    )
    shutdown_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a shutdown waits for pending forecasts to be acknowledged.",
    )
    changelog_topic: str | None = Field(
        default=None,
        min_length=1,
        description="Compacted topic holding every stream's latest state (unset: `<group_id>.state`).",
    )
    restore_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Seconds a restore may take to read assigned partitions' changelog before it is retried.",
    )


def changelog_topic(settings: KafkaSettings) -> str:
    """The configured changelog topic, ``<group>.state`` by default."""
    return settings.changelog_topic or f"{settings.group_id}.state"


class ModelSettings(_Section):
    """Which model of which registry folder is served, and how onnxruntime runs it."""

    registry: Path = Field(
        default=Path("models"), description="Model registry folder (models/<name>/<version>/)."
    )
    name: str = Field(
        default="sensors-demo", min_length=1, description="Name of the model to serve."
    )
    version: str = Field(
        default="latest", min_length=1, description="Version of the model to serve, or `latest`."
    )
    intra_op_threads: int = Field(
        default=1, ge=1, description="onnxruntime intra-op threads per model call."
    )
    spinning: bool = Field(
        default=False,
        description="Let onnxruntime threads spin between calls (lower latency, busy CPU).",
    )
    watch_interval: float = Field(
        default=30.0,
        ge=0,
        description="With `model.version` `latest`: seconds between looks in the registry for "
        "a newer version, which is loaded, verified and swapped in while serving, every "
        "stream re-warmed from its kept readings (0: never; a pinned version never).",
    )


class EngineSettings(_Section):
    """How the stream engine treats gaps, missing features, out-of-range values and clock
    jumps, and which streams' state it keeps, at what precision.
    """

    max_gap_periods: float = Field(
        default=10.0,
        gt=0,
        description="A gap longer than this many model periods triggers the gap policy.",
    )
    gap_policy: Literal["reset", "keep"] = Field(
        default="reset", description="On a long gap: `reset` the stream's state, or `keep` it."
    )
    impute: Literal["reject", "last"] = Field(
        default="reject",
        description="A reading missing a feature: `reject` it, or fill in the `last` seen value.",
    )
    ttl_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Expire a stream's state after this many idle seconds (unset: never).",
    )
    max_streams: int | None = Field(
        default=None,
        ge=1,
        description="Most streams kept; the least recently used is evicted beyond it (unset: no cap).",
    )
    state_dtype: Literal["float32", "float16"] = Field(
        default="float32", description="Precision the per-stream state is stored in."
    )
    out_of_range: Literal["reject", "clip", "accept"] = Field(
        default="reject",
        description="A feature value beyond the model card's training range by more than "
        "`engine.out_of_range_margin` training standard deviations: `reject` it (dead letter "
        "`out_of_range`), `clip` it to that bound, or `accept` it as it is.",
    )
    out_of_range_margin: float = Field(
        default=10.0,
        ge=0,
        description="How far beyond the training range, in training standard deviations of "
        "the feature, a value may lie before `engine.out_of_range` applies.",
    )
    clock_recovery: int = Field(
        default=2,
        ge=0,
        description="After a reading moves a stream's clock ahead by more than "
        "`engine.max_gap_periods`, this many consecutive readings that continue the clock "
        "from before the jump mark the jump as a bad timestamp: the stream's state is reset "
        "and they are applied instead of being dropped as late (0: never).",
    )
    history: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Applied readings each stream keeps (in memory and in its changelog "
        "record) to re-warm its state when the model changes (unset: the served card's "
        "warm-up steps; 0: none, a model change then resets every stream).",
    )


class HttpSettings(_Section):
    """Where /metrics, /healthz and /readyz are served."""

    enabled: bool = Field(default=True, description="Serve /metrics, /healthz and /readyz.")
    host: str = Field(default="0.0.0.0", description="Address the HTTP server binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")


class LogSettings(_Section):
    """Log format, level and how often dropped readings are logged."""

    format: Literal["text", "json"] = Field(
        default="text", description="Log line format: `text` or `json` (one object a line)."
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    drop_interval: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between log lines about dropped readings (late, duplicate, "
        "already applied), per reason; each line names one stream and counts the rest.",
    )


class DebugSettings(_Section):
    """Fault injection, for the fault tests only; never set in production."""

    crash_at: Literal["after_flush", "mid_changelog", "after_changelog", "after_commit"] | None = (
        Field(
            default=None,
            description="Fault injection for tests only: exit the process abruptly at this point of the "
            "first checkpoint that has state to write (`mid_changelog`: half its records sent and "
            "acknowledged; the others while that checkpoint is completed).",
        )
    )


class ServiceSettings(BaseSettings):
    """Everything `sensorcast serve` can be told, with its default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        frozen=True,
        extra="forbid",
        case_sensitive=False,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Kafka transport.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="The served model.")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="Stream engine.")
    http: HttpSettings = Field(default_factory=HttpSettings, description="HTTP endpoints.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")
    debug: DebugSettings = Field(
        default_factory=DebugSettings, description="Fault injection (tests only)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read flags, then the environment, then the ``--config`` file (highest first)."""
        # Highest precedence first: flags (passed as init arguments), environment, file.
        path = _CONFIG_FILE.get()
        if path is None:
            return (init_settings, env_settings)
        file_source: PydanticBaseSettingsSource
        if path.suffix.lower() == ".toml":
            file_source = TomlConfigSettingsSource(settings_cls, toml_file=path)
        else:
            file_source = YamlConfigSettingsSource(settings_cls, yaml_file=path)
        return (init_settings, env_settings, file_source)


def env_var_name(path: tuple[str, ...]) -> str:
    """``("kafka", "max_batch")`` -> ``SENSORCAST_KAFKA__MAX_BATCH``."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(p.upper() for p in path)


def _check_file(path: Path) -> None:
    if path.suffix.lower() not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"config file {path}: use a .toml, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from exc
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"config file {path}: not valid {path.suffix[1:].upper()}: {first}"
        ) from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a table of sections")


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"])
    name = ".".join(loc) or "settings"
    if err["type"] == "extra_forbidden":
        message = f"unknown setting {name}; run `sensorcast settings` for the list"
    else:
        given = err.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        message = f"invalid setting {name} ({env_var_name(loc)}): {err['msg']}{shown}"
    more = exc.error_count() - 1
    return message + (f"; and {more} more" if more else "")


def load_settings(
    config_file: Path | str | None = None, overrides: Mapping[str, Any] | None = None
) -> ServiceSettings:
    """Build the settings from defaults, `config_file`, the environment and `overrides`.

    `overrides` holds command-line values as dotted names (``{"kafka.max_batch": 500}``) or
    nested sections. Any invalid value raises `ConfigError` naming the setting.
    """
    path = Path(config_file) if config_file is not None else None
    if path is not None:
        _check_file(path)
    nested: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        *sections, leaf = key.split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    token = _CONFIG_FILE.set(path)
    try:
        return ServiceSettings(**nested)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    finally:
        _CONFIG_FILE.reset(token)


# -- the reference ----------------------------------------------------------------------------


def _fields(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    for name, info in model.model_fields.items():
        yield (*prefix, name), info


def _type_name(info: FieldInfo) -> str:
    text = (
        repr(info.annotation) if not isinstance(info.annotation, type) else info.annotation.__name__
    )
    return (
        text.replace("typing.", "")
        .replace("pathlib.", "")
        .replace("Literal[", "one of [")
        .replace("NoneType", "None")
        .replace("'", "")
        .replace(" | ", " or ")
    )


def _default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def settings_reference() -> str:
    """Markdown: one table per section, every setting with its variable, type, default and help."""
    lines = [
        "Precedence, lowest to highest: defaults < config file (`--config`, TOML or YAML) "
        f"< environment (`{ENV_PREFIX}<SECTION>{ENV_NESTED_DELIMITER}<NAME>`) < command-line flags.",
    ]
    for section, section_info in ServiceSettings.model_fields.items():
        model = section_info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        lines += [
            "",
            f"### `{section}`: {section_info.description}",
            "",
            "| Setting | Environment variable | Type | Default | Description |",
            "|---|---|---|---|---|",
        ]
        for path, info in _fields(model, (section,)):
            lines.append(
                f"| `{'.'.join(path)}` | `{env_var_name(path)}` | {_type_name(info)} "
                f"| {_default(info)} | {info.description} |"
            )
    return "\n".join(lines) + "\n"
