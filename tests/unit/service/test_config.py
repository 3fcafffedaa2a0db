"""Settings: defaults, file, environment and flags combine in the documented order; a bad
value is one ConfigError naming the setting; the documented reference cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config import (
    KafkaSettings,
    ServiceSettings,
    changelog_topic,
    env_var_name,
    load_settings,
    settings_reference,
)
from service.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
START, END = "<!-- settings:start -->", "<!-- settings:end -->"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("SENSORCAST_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert (s.kafka.input_topic, s.kafka.output_topic, s.kafka.dead_letter_topic) == (
        "sensor-readings",
        "forecasts",
        "sensor-readings.dlq",
    )
    assert s.kafka.group_id == "sensorcast"
    assert s.kafka.commit_interval == 5.0 and s.kafka.create_topics is True
    assert s.http.port == 8000
    assert s.model.registry == Path("models") and s.model.name == "sensors-demo"
    assert s.engine.gap_policy == "reset" and s.engine.ttl_seconds is None
    assert s.log.format == "text"


def test_environment_uses_prefix_and_nested_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENSORCAST_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("SENSORCAST_KAFKA__INPUT_TOPIC", "plant-a")
    monkeypatch.setenv("SENSORCAST_MODEL__NAME", "pumps")
    monkeypatch.setenv("SENSORCAST_HTTP__PORT", "9100")
    monkeypatch.setenv("SENSORCAST_ENGINE__TTL_SECONDS", "3600")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.kafka.input_topic == "plant-a"
    assert s.model.name == "pumps"
    assert s.http.port == 9100
    assert s.engine.ttl_seconds == 3600.0


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    path = tmp_path / f"sensorcast{suffix}"
    if suffix == ".toml":
        path.write_text(
            '[kafka]\nmax_batch = 10\ninput_topic = "from-file"\ngroup_id = "file-group"\n'
            "[http]\nport = 9000\n"
        )
    else:
        path.write_text(
            "kafka:\n  max_batch: 10\n  input_topic: from-file\n  group_id: file-group\n"
            "http:\n  port: 9000\n"
        )
    monkeypatch.setenv("SENSORCAST_KAFKA__MAX_BATCH", "20")
    monkeypatch.setenv("SENSORCAST_KAFKA__INPUT_TOPIC", "from-env")
    s = load_settings(path, {"kafka.max_batch": 30})
    assert s.kafka.max_batch == 30  # flag beats env and file
    assert s.kafka.input_topic == "from-env"  # env beats file
    assert s.kafka.group_id == "file-group"  # file beats default
    assert s.http.port == 9000
    assert s.kafka.output_topic == "forecasts"  # default where nobody says otherwise


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        s.kafka.max_batch = 5  # type: ignore[misc]
    assert isinstance(s, ServiceSettings)


def test_changelog_topic_defaults_to_group_dot_state_and_can_be_set() -> None:
    assert changelog_topic(KafkaSettings(group_id="grp")) == "grp.state"
    assert changelog_topic(KafkaSettings(group_id="g", changelog_topic="st")) == "st"


@pytest.mark.parametrize(
    ("env", "overrides", "needle"),
    [
        (
            {"SENSORCAST_KAFKA__MAX_BATCH": "lots"},
            {},
            "kafka.max_batch (SENSORCAST_KAFKA__MAX_BATCH)",
        ),
        ({}, {"kafka.max_batch": 0}, "kafka.max_batch"),
        ({}, {"engine.gap_policy": "forget"}, "engine.gap_policy"),
        ({}, {"http.port": 70000}, "http.port"),
        ({}, {"log.format": "xml"}, "log.format"),
        ({"SENSORCAST_KAFKA__MAX_BATCHES": "5"}, {}, "unknown setting kafka.max_batches"),
        ({}, {"kafka.bogus": 1}, "unknown setting kafka.bogus"),
    ],
)
def test_bad_value_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], overrides: dict[str, object], needle: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings(None, overrides)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_bad_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\nmax_batch = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_settings(broken)
    with pytest.raises(ConfigError, match="cannot read it"):
        load_settings(tmp_path / "missing.yaml")
    odd = tmp_path / "settings.ini"
    odd.write_text("")
    with pytest.raises(ConfigError, match=r"use a \.toml, \.yaml or \.yml file"):
        load_settings(odd)
    typo = tmp_path / "typo.yaml"
    typo.write_text("kafka:\n  max_batchh: 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting kafka\.max_batchh"):
        load_settings(typo)


def test_reference_lists_every_setting_with_its_variable() -> None:
    text = settings_reference()
    for section, info in ServiceSettings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type)
        for name in model.model_fields:  # type: ignore[attr-defined]
            assert f"`{env_var_name((section, name))}`" in text
    assert "| unset |" in text  # optional settings say so
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert all(line.count(" | ") == 4 for line in rows)  # no stray pipes break the table


def test_documented_reference_is_the_generated_one() -> None:
    """docs/service.md (and README.md once merged) hold exactly `sensorcast settings`."""
    docs = [ROOT / "docs" / "service.md"]
    readme = ROOT / "README.md"
    if readme.exists() and START in readme.read_text():
        docs.append(readme)
    for doc in docs:
        match = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), doc.read_text(), re.S)
        assert match, f"{doc} has no settings reference between the markers"
        assert match.group(1) == settings_reference(), (
            f"{doc} is out of date: paste the output of `sensorcast settings` between the markers"
        )
