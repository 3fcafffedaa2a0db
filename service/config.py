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
import ssl
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
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
    "sasl_password",
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
    shadow_topic: str = Field(
        default="forecasts.shadow",
        min_length=1,
        description="Topic of the challenger's forecasts (`model.shadow`); created, as the "
        "others, only while a challenger runs.",
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
    fetch_pause_ms: int = Field(
        default=15,
        ge=0,
        description="Under light load, how long the service waits after a fetch that found "
        "readings before it fetches again, so that they gather into one micro-batch, fetched "
        "in one request, whose forecasts go out at once in one produce request (not after "
        "`kafka.linger_ms`). Adds up to this much latency; a service behind the input (full "
        "micro-batches) fetches without a pause. Every fetch that finds records and every "
        "produced batch costs the broker time (the embedded broker: time that grows with its "
        "topics, taken from every client); 0: fetch again as soon as a micro-batch is done.",
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
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every Kafka client connects: `PLAINTEXT`, `SSL` (TLS), `SASL_SSL` "
        "(TLS and a username and password: managed clusters) or `SASL_PLAINTEXT` "
        "(credentials in the clear; trusted networks only).",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None,
        description="SASL mechanism, required with the `SASL_*` protocols: `PLAIN`, "
        "`SCRAM-SHA-256` or `SCRAM-SHA-512`.",
    )
    sasl_username: str | None = Field(
        default=None, min_length=1, description="SASL username (an API key on some clouds)."
    )
    sasl_password: SecretStr | None = Field(
        default=None,
        description="SASL password (an API secret on some clouds); never logged, shown masked "
        "by `sensorcast settings --effective`. Prefer `kafka.sasl_password_file`.",
    )
    sasl_password_file: Path | None = Field(
        default=None,
        description="File holding the SASL password (a mounted Kubernetes Secret); wins over "
        "`kafka.sasl_password`. One trailing newline is ignored.",
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CA certificates that sign the brokers' certificates "
        "(unset: the system's trusted CAs, right for public clouds).",
    )
    ssl_certfile: Path | None = Field(
        default=None,
        description="PEM client certificate for mutual TLS; needs `kafka.ssl_keyfile`.",
    )
    ssl_keyfile: Path | None = Field(
        default=None,
        description="PEM private key (unencrypted) of `kafka.ssl_certfile`, for mutual TLS.",
    )
    ssl_check_hostname: bool = Field(
        default=True,
        description="Check that a broker's certificate names the host connected to (the "
        "certificate chain is verified either way); turn off only for brokers reached by "
        "an address their certificate does not list.",
    )

    @field_validator("sasl_password", mode="before")
    @classmethod
    def _password_as_secret(cls, value: object) -> object:
        # A YAML `password: 12345` is an int: taken as text, so that no error shows it.
        if value is None or isinstance(value, SecretStr):
            return value
        return SecretStr(str(value))

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        """Bad combinations and unusable files fail here, in one line.

        Raised as `ConfigError`, not `ValueError`: pydantic would put the whole section,
        password included, into a `ValidationError`'s text.
        """
        _check_sasl(self)
        _check_tls(self)
        return self


_TLS_PROTOCOLS = ("SSL", "SASL_SSL")
_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def _check_sasl(k: KafkaSettings) -> None:
    """SASL settings come together, and only with a ``SASL_*`` protocol."""
    if k.security_protocol not in _SASL_PROTOCOLS:
        given = [
            name
            for name in ("sasl_mechanism", "sasl_username", "sasl_password", "sasl_password_file")
            if getattr(k, name) is not None
        ]
        if given:
            raise ConfigError(
                f"kafka.{given[0]} is set but kafka.security_protocol is "
                f"{k.security_protocol}: use SASL_SSL (or SASL_PLAINTEXT) to authenticate"
            )
        return
    if k.sasl_mechanism is None:
        raise ConfigError(
            f"kafka.security_protocol={k.security_protocol} needs kafka.sasl_mechanism "
            "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
        )
    if k.sasl_username is None:
        raise ConfigError(
            f"kafka.sasl_mechanism={k.sasl_mechanism} needs kafka.sasl_username "
            "(SENSORCAST_KAFKA__SASL_USERNAME)"
        )
    if k.sasl_password_file is None and k.sasl_password is None:
        raise ConfigError(
            f"kafka.sasl_mechanism={k.sasl_mechanism} needs a password: set "
            "kafka.sasl_password_file (a mounted secret) or kafka.sasl_password"
        )
    sasl_password(k)  # the file is there, readable and not empty


def _check_tls(k: KafkaSettings) -> None:
    """TLS files only with a TLS protocol; the CA parses; a client certificate has its key."""
    files = {
        "ssl_cafile": k.ssl_cafile,
        "ssl_certfile": k.ssl_certfile,
        "ssl_keyfile": k.ssl_keyfile,
    }
    if k.security_protocol not in _TLS_PROTOCOLS:
        given = [name for name, path in files.items() if path is not None]
        if given:
            raise ConfigError(
                f"kafka.{given[0]} is set but kafka.security_protocol is "
                f"{k.security_protocol}: use SSL or SASL_SSL for TLS"
            )
        return
    if (k.ssl_certfile is None) != (k.ssl_keyfile is None):
        one, other = (
            ("ssl_certfile", "ssl_keyfile")
            if k.ssl_keyfile is None
            else ("ssl_keyfile", "ssl_certfile")
        )
        raise ConfigError(f"kafka.{one} is set without kafka.{other}: mutual TLS needs both")
    for name, path in files.items():
        if path is not None and not path.is_file():
            raise ConfigError(f"kafka.{name}: no such file {path}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if k.ssl_cafile is not None:
        try:
            context.load_verify_locations(cafile=k.ssl_cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"kafka.ssl_cafile {k.ssl_cafile} holds no usable PEM CA certificate ({exc})"
            ) from None
    if k.ssl_certfile is not None and k.ssl_keyfile is not None:
        try:
            # an encrypted key would make OpenSSL prompt on the terminal: refuse it instead
            context.load_cert_chain(k.ssl_certfile, k.ssl_keyfile, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"kafka.ssl_certfile {k.ssl_certfile} and kafka.ssl_keyfile {k.ssl_keyfile}: "
                f"not a PEM certificate and its unencrypted key ({exc})"
            ) from None


def changelog_topic(settings: KafkaSettings) -> str:
    """The configured changelog topic, ``<group>.state`` by default."""
    return settings.changelog_topic or f"{settings.group_id}.state"


def sasl_password(settings: KafkaSettings) -> str | None:
    """The SASL password: the content of ``kafka.sasl_password_file`` (less one trailing
    newline) when set, else ``kafka.sasl_password``; None when neither is.

    Raises `ConfigError` naming the file (never its content) when it cannot be read or is
    empty.
    """
    path = settings.sasl_password_file
    if path is None:
        return settings.sasl_password.get_secret_value() if settings.sasl_password else None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"kafka.sasl_password_file {path}: cannot read it ({reason})") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigError(f"kafka.sasl_password_file {path} is empty")
    return text


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
    shadow: str | None = Field(
        default=None,
        description="A challenger, `NAME[:VERSION]` of the same registry, run in shadow on "
        "the same micro-batches with its own state: its forecasts go to `kafka.shadow_topic` "
        "and are scored under its own `model` label, the served forecasts are unchanged "
        "(unset: none).",
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
    score_forecasts: bool = Field(
        default=True,
        description="Score every warm forecast against the readings that follow it "
        "(`sensorcast_forecast_*` metrics) and give each forecast its reading's `anomaly`; "
        "each stream then keeps its last horizon forecasts (in memory and in its changelog "
        "record). Needs every target among the features.",
    )
    anomaly_threshold: float = Field(
        default=5.0,
        gt=0,
        description="A reading whose residual from the forecast made for it one step "
        "earlier exceeds this many of its stream's running one-step error scales, in any "
        "target, is flagged (`anomaly.flag`, `sensorcast_anomalies_total`).",
    )
    anomaly_policy: Literal["apply", "replace"] = Field(
        default="apply",
        description="A flagged reading updates the stream's state as it is (`apply`), or "
        "with its flagged targets replaced by their one-step forecast (`replace`: a spike "
        "never enters the state; a real level shift is followed once it stops being "
        "flagged, as the running scale grows).",
    )
    sequences: bool = Field(
        default=True,
        description="Apply the readings a stream has in a row in one micro-batch as one "
        "sequence on the model's time axis: one model call per distinct run length, not "
        "one per reading of the busiest stream (backfills, replays, a few high-rate "
        "streams). The results are the same; `false` applies them round by round. The "
        "`replace` anomaly policy always applies round by round.",
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
        .replace("pydantic.types.", "")
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
