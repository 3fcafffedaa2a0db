"""The secured-cluster examples in deploy/ (commented out, since the default stack is
plaintext): every variable is a setting with a valid value, every file they name is where
the Secret, ConfigMap or compose secret puts it, the mounts are optional and read-only, and
docs/deploy.md's least-privilege ACL list names every topic and the group."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import TypeAdapter

from service.config import KafkaSettings
from tests.deploy.deploykit import DEPLOY, REPO, load_yaml, load_yaml_docs, setting_env_names

K8S = DEPLOY / "k8s"
_COMMENTED_SETTING = re.compile(r"^\s*#\s*(SENSORCAST_[A-Z0-9_]+):\s*(\S+)", re.M)
_FILE_SETTINGS = ("SASL_PASSWORD_FILE", "SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE")


def _commented_settings(path: Path) -> dict[str, str]:
    found = dict(_COMMENTED_SETTING.findall(path.read_text()))
    assert found, f"{path} has no commented security example"
    return {name: value.strip('"') for name, value in found.items()}


def _check_values(settings: dict[str, str]) -> None:
    """Each is a setting, and each value its setting's type accepts (the files' existence is
    checked where they are mounted, below)."""
    assert set(settings) <= setting_env_names(), set(settings) - setting_env_names()
    for variable, value in settings.items():
        field = KafkaSettings.model_fields[variable.removeprefix("SENSORCAST_KAFKA__").lower()]
        TypeAdapter(field.annotation).validate_python(value, strict=False)


def _container() -> dict[str, Any]:
    (deployment,) = [d for d in load_yaml_docs(K8S / "deployment.yaml") if d]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container["_volumes"] = deployment["spec"]["template"]["spec"]["volumes"]
    return container


def _generated_keys() -> dict[str, set[str]]:
    """Commented secretGenerator / configMapGenerator of kustomization.yaml, the optional
    (twice commented) files included: name -> keys."""
    lines = [
        re.sub(r"^(\s*)# (- )", r"\1\2", line[2:])
        for line in (K8S / "kustomization.yaml").read_text().splitlines()
        if re.match(r"^# (secretGenerator|configMapGenerator|  )", line)
    ]
    generators = yaml.safe_load("\n".join(lines))
    return {
        g["name"]: {f.split("=", 1)[0] for f in g["files"]}
        for kind in ("secretGenerator", "configMapGenerator")
        for g in generators[kind]
    }


def test_the_k8s_example_is_valid_and_its_files_are_in_the_mounts() -> None:
    settings = _commented_settings(K8S / "configmap.yaml")
    _check_values(settings)
    container = _container()
    volumes = {v["name"]: v for v in container["_volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    generated = _generated_keys()
    for name in _FILE_SETTINGS:
        path = PurePosixPath(settings["SENSORCAST_KAFKA__" + name])
        volume = mounts[str(path.parent)]
        source = volume.get("secret", {}).get("secretName") or volume["configMap"]["name"]
        assert path.name in generated[source], (name, path, source)


def test_the_k8s_credential_mounts_are_optional_and_read_only() -> None:
    container = _container()
    volumes = {v["name"]: v for v in container["_volumes"]}
    secured = [m for m in container["volumeMounts"] if m["mountPath"].startswith("/etc/sensorcast")]
    assert len(secured) == 2
    for mount in secured:
        assert mount["readOnly"] is True
        volume = volumes[mount["name"]]
        source = volume.get("secret") or volume["configMap"]
        assert source["optional"] is True  # a plaintext cluster deploys without them


def test_the_compose_example_is_valid_and_its_files_are_compose_secrets() -> None:
    compose = DEPLOY / "compose.yaml"
    settings = _commented_settings(compose)
    _check_values(settings)
    text = compose.read_text()
    declared = re.search(r"^# secrets:\n((?:#   .*\n)+)", text, re.M)
    assert declared, "compose.yaml declares no commented secrets"
    names = set(re.findall(r"^#   (\w+):$", declared.group(1), re.M))
    for name in ("SASL_PASSWORD_FILE", "SSL_CAFILE"):
        path = PurePosixPath(settings["SENSORCAST_KAFKA__" + name])
        assert path.parent == PurePosixPath("/run/secrets") and path.name in names, path
    # the service and the replay feed both connect to the cluster
    assert text.count("    # secrets: [kafka_password, kafka_ca]") == 2
    assert {"sensorcast", "replay"} <= set(load_yaml(compose)["services"])


def test_the_acl_list_names_every_topic_and_the_group() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    start = text.index("#### Least privilege")
    section = text[start : text.index("\n### ", start)]
    topics = [name for name in KafkaSettings.model_fields if name.endswith("_topic")]
    for name in [*topics, "group_id"]:
        assert f"kafka.{name}" in section, f"the ACL list does not name kafka.{name}"
    assert "kafka.create_topics" in section
