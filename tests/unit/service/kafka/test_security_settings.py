"""The security settings: bad combinations and unusable files fail in one line naming the
setting; the password is masked in every repr, dump and error, comes from a file first, and
reaches the clients as it was given."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from service.config import KafkaSettings, load_settings, sasl_password
from service.errors import ConfigError
from service.testing.tls import Certificates, make_certificates

PASSWORD = "Pw-unit-9d2e4b"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SENSORCAST_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _sasl(**more: Any) -> dict[str, Any]:
    return {
        "kafka.security_protocol": "SASL_SSL",
        "kafka.sasl_mechanism": "SCRAM-SHA-512",
        "kafka.sasl_username": "svc",
        "kafka.sasl_password": PASSWORD,
        **more,
    }


def _refused(overrides: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, overrides)
    message = str(caught.value)
    assert "\n" not in message
    # nothing in the error, its chain or its traceback shows the password
    assert PASSWORD not in "".join(traceback.format_exception(caught.value))
    return message


def test_defaults_are_plaintext_with_hostname_checks_on() -> None:
    k = KafkaSettings()
    assert k.security_protocol == "PLAINTEXT" and k.ssl_check_hostname is True
    assert (k.sasl_mechanism, k.sasl_username, k.sasl_password, k.sasl_password_file) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"kafka.security_protocol": "SASL_SSL"},
            r"kafka.security_protocol=SASL_SSL needs kafka.sasl_mechanism",
        ),
        (_sasl(**{"kafka.sasl_username": None}), r"SCRAM-SHA-512 needs kafka.sasl_username"),
        (_sasl(**{"kafka.sasl_password": None}), r"needs a password: set kafka.sasl_password_file"),
        (
            {"kafka.sasl_mechanism": "PLAIN"},
            r"kafka.sasl_mechanism is set but kafka.security_protocol is PLAINTEXT",
        ),
        (
            {"kafka.security_protocol": "SSL", "kafka.sasl_password": PASSWORD},
            r"kafka.sasl_password is set but kafka.security_protocol is SSL",
        ),
        (
            {"kafka.ssl_cafile": "/etc/hostname"},
            r"kafka.ssl_cafile is set but kafka.security_protocol is PLAINTEXT: use SSL",
        ),
        (
            {"kafka.security_protocol": "SSL", "kafka.ssl_cafile": "/no/such/ca.pem"},
            r"kafka.ssl_cafile: no such file /no/such/ca.pem",
        ),
    ],
)
def test_bad_combinations_fail_in_one_line(overrides: dict[str, Any], expected: str) -> None:
    assert expected in _refused(overrides)


def test_a_ca_file_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    message = _refused({"kafka.security_protocol": "SSL", "kafka.ssl_cafile": str(ca)})
    assert f"kafka.ssl_cafile {ca} holds no usable PEM CA certificate" in message


def test_mutual_tls_needs_a_certificate_and_its_own_key(certs: Certificates) -> None:
    tls = {"kafka.security_protocol": "SSL", "kafka.ssl_cafile": str(certs.ca)}
    assert "kafka.ssl_certfile is set without kafka.ssl_keyfile" in _refused(
        {**tls, "kafka.ssl_certfile": str(certs.client_cert)}
    )
    assert "kafka.ssl_keyfile is set without kafka.ssl_certfile" in _refused(
        {**tls, "kafka.ssl_keyfile": str(certs.client_key)}
    )
    mismatched = {
        **tls,
        "kafka.ssl_certfile": str(certs.client_cert),
        "kafka.ssl_keyfile": str(certs.server_key),
    }
    assert "not a PEM certificate and its unencrypted key" in _refused(mismatched)
    good = load_settings(None, {**tls, **mismatched, "kafka.ssl_keyfile": str(certs.client_key)})
    assert good.kafka.ssl_keyfile == certs.client_key


def test_an_encrypted_key_is_refused_without_a_prompt(certs: Certificates, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key-password"),
        )
    )
    message = _refused(
        {
            "kafka.security_protocol": "SSL",
            "kafka.ssl_certfile": str(certs.client_cert),
            "kafka.ssl_keyfile": str(encrypted),
        }
    )
    assert "its unencrypted key" in message


def test_the_password_is_masked_in_repr_dump_and_effective_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(None, _sasl())
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    assert PASSWORD not in settings.model_dump_json() and PASSWORD not in repr(settings.kafka)
    assert sasl_password(settings.kafka) == PASSWORD

    for name, value in _sasl().items():
        monkeypatch.setenv("SENSORCAST_" + name.upper().replace(".", "__"), value)
    assert main(["settings", "--effective"]) == 0
    shown = capsys.readouterr().out
    assert PASSWORD not in shown
    assert json.loads(shown)["kafka"]["sasl_password"] == "**********"


def test_a_password_of_another_type_is_taken_as_text_and_never_shown(tmp_path: Path) -> None:
    config = tmp_path / "sensorcast.yaml"
    config.write_text(
        "kafka:\n  security_protocol: SASL_SSL\n  sasl_mechanism: PLAIN\n"
        "  sasl_username: svc\n  sasl_password: 918273645\n  max_batch: nope\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "kafka.max_batch" in str(caught.value)
    assert "918273645" not in "".join(traceback.format_exception(caught.value))
    config.write_text(config.read_text().replace("  max_batch: nope\n", ""))
    assert sasl_password(load_settings(config).kafka) == "918273645"


def test_the_password_file_wins_and_loses_one_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-the-file\n")
    k = load_settings(None, _sasl(**{"kafka.sasl_password_file": str(secret)})).kafka
    assert sasl_password(k) == "from-the-file"
    secret.write_text("  spaces kept \r\n")
    assert sasl_password(k) == "  spaces kept "
    only_file = _sasl(**{"kafka.sasl_password": None, "kafka.sasl_password_file": str(secret)})
    assert sasl_password(load_settings(None, only_file).kafka) == "  spaces kept "


def test_a_password_file_that_is_missing_or_empty_fails_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert f"kafka.sasl_password_file {missing}: cannot read it" in _refused(
        _sasl(**{"kafka.sasl_password_file": str(missing)})
    )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert f"kafka.sasl_password_file {empty} is empty" in _refused(
        _sasl(**{"kafka.sasl_password_file": str(empty)})
    )
