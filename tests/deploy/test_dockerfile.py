"""deploy/Dockerfile and .dockerignore, read statically (no Docker here): a multi-stage build
whose runtime stage carries no torch, runs unprivileged, serves on the HTTP port and checks
its own health the way the service answers."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from service.config import ServiceSettings
from service.http import HttpServer, Readiness
from service.metrics import ServiceMetrics
from tests.deploy.deploykit import DEPLOY, REPO, setting_env_names


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    out = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _stages() -> list[Stage]:
    instructions = _instructions((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    build_args = {}
    stages: list[Stage] = []
    for keyword, rest in instructions:
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            build_args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: build_args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def _runtime() -> Stage:
    return _stages()[-1]


def _env(stage: Stage) -> dict[str, str]:
    env = {}
    for rest in stage.args("ENV"):
        for item in shlex.split(rest):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def _exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list), text
    return [str(v) for v in value]


def test_multi_stage_on_python_slim() -> None:
    stages = _stages()
    assert [stage.name for stage in stages] == ["builder", "runtime"]
    assert {stage.base for stage in stages} == {"python:3.11-slim"}
    assert any(run.startswith("pip wheel") for run in stages[0].args("RUN"))


def _extras(command: str) -> set[str]:
    """The extras a pip command asks for: ``'sensorcast[confluent]'`` -> {"confluent"}."""
    return {
        extra.strip()
        for group in re.findall(r"\[([^\]]*)\]", command)
        for extra in group.split(",")
    }


def test_runtime_installs_the_project_wheel_without_train_extra() -> None:
    runtime = _runtime()
    installs = [run for run in runtime.args("RUN") if "pip install" in run]
    assert installs, "the runtime stage installs the wheel"
    for run in installs:
        assert "from=builder" in run
        assert "--no-index" in run, "runtime installs only the wheels the builder made"
        # the one extra in the image: the confluent-kafka client, selectable by setting
        assert _extras(run.split("pip install", 1)[1]) <= {"confluent"}
        assert "train" not in run and "torch" not in run.replace("find_spec('torch')", "")
    builder_runs = " ".join(_stages()[0].args("RUN"))
    assert "[train" not in builder_runs and _extras(builder_runs) <= {"confluent"}


def test_the_image_carries_the_confluent_client_and_that_extra_no_torch() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {Requirement(r).name.lower() for r in extras["confluent"]}
    assert names == {"confluent-kafka"}
    (install,) = [run for run in _runtime().args("RUN") if "pip install" in run]
    assert "confluent" in _extras(install)


def test_runtime_dependencies_have_no_torch() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {Requirement(r).name.lower() for r in project["dependencies"]}
    assert "torch" not in names
    assert not any(n.startswith(("torch", "nvidia-")) for n in names)
    train = {Requirement(r).name.lower() for r in project["optional-dependencies"]["train"]}
    assert "torch" in train  # the trainer's extra is where torch belongs


def test_runs_unprivileged() -> None:
    (user,) = _runtime().args("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root user (runAsNonRoot can verify it)"
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_entrypoint_serves_and_stops_on_sigterm() -> None:
    runtime = _runtime()
    (entrypoint,) = runtime.args("ENTRYPOINT")
    (cmd,) = runtime.args("CMD")
    assert _exec_form(entrypoint) == ["sensorcast"]
    assert _exec_form(cmd) == ["serve"]
    assert runtime.args("STOPSIGNAL") == ["SIGTERM"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["sensorcast"] == "service.cli:main"


def test_exposes_the_http_port_and_settings_are_valid() -> None:
    runtime = _runtime()
    env = _env(runtime)
    sensorcast = {k: v for k, v in env.items() if k.startswith("SENSORCAST_")}
    assert set(sensorcast) <= setting_env_names()
    port = int(env.get("SENSORCAST_HTTP__PORT", ServiceSettings().http.port))
    assert runtime.args("EXPOSE") == [str(port)]
    assert port == ServiceSettings().http.port


def test_models_are_copied_to_the_registry_path() -> None:
    runtime = _runtime()
    env = _env(runtime)
    (workdir,) = runtime.args("WORKDIR")
    copies = [c for c in runtime.args("COPY") if "--from" not in c]
    (models,) = [c for c in copies if c.split()[-2] == "models"]
    destination = os.path.normpath(os.path.join(workdir, models.split()[-1]))
    assert destination == env["SENSORCAST_MODEL__REGISTRY"]


def test_copied_sources_exist_and_are_not_ignored() -> None:
    patterns = _dockerignore()
    for stage in _stages():
        for copy in stage.args("COPY"):
            if "--from" in copy:
                continue
            sources = [s for s in copy.split()[:-1] if not s.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), source
                assert not _ignored(source, patterns), f"{source} is in .dockerignore"
    for needed in (
        "service/app.py",
        "service/cli.py",
        "training/cli.py",
        "models/sensors-demo/1/card.json",
        "models/sensors-demo/1/model.onnx",
    ):
        assert not _ignored(needed, patterns), needed


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = _dockerignore()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "service/__pycache__/app.cpython-311.pyc",
        ".pytest_cache/v",
        ".mypy_cache/x",
        ".ruff_cache/x",
        "runs/exp1/log.txt",
        "sensorcast.egg-info/PKG-INFO",
        "models/sensors-demo/1/checkpoint.pt",
    ):
        assert _ignored(path, patterns), path


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also excludes what lies below."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def test_ignore_matcher() -> None:
    assert _ignored("a/b/c.pyc", ["**/*.pyc"])
    assert _ignored("x.pyc", ["**/*.pyc"])
    assert _ignored("tests/unit/t.py", ["tests"])
    assert not _ignored("service/tests.py", ["tests"])
    assert not _ignored("models/m/1/model.onnx", ["models/**/*.png"])
    assert not _ignored("a.txt", ["*.txt", "!a.txt"])


@pytest.mark.parametrize("running", [True, False], ids=["up", "down"])
def test_healthcheck_command_probes_healthz(running: bool) -> None:
    (healthcheck,) = _runtime().args("HEALTHCHECK")
    assert "curl" not in healthcheck and "wget" not in healthcheck
    command = _exec_form(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    server = HttpServer("127.0.0.1", 0, ServiceMetrics(), Readiness()).start()
    port = server.port
    if not running:
        server.stop()
    try:
        env = {**os.environ, "SENSORCAST_HTTP__PORT": str(port)}
        result = subprocess.run(
            [sys.executable, "-c", command[2]], env=env, capture_output=True, timeout=30
        )
    finally:
        if running:
            server.stop()
    assert (result.returncode == 0) is running, result.stderr


def test_builder_context_builds_a_wheel_without_torch(tmp_path: Path) -> None:
    """Build the wheel from exactly what the builder stage copies (offline: no dependencies)."""
    context = tmp_path / "context"
    context.mkdir()
    for copy in _stages()[0].args("COPY"):
        *sources, _destination = copy.split()
        for source in sources:
            if (REPO / source).is_dir():
                shutil.copytree(
                    REPO / source, context / source, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(REPO / source, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("sensorcast-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        requires = [
            Requirement(line.split(":", 1)[1].strip())
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
        console = archive.read(entry_points).decode()
    installed = {
        r.name.lower() for r in requires if r.marker is None or r.marker.evaluate({"extra": ""})
    }
    assert "torch" not in installed
    assert {"onnxruntime", "kafka-python", "prometheus-client"} <= installed
    assert "sensorcast = service.cli:main" in console
    assert "service/http.py" in names and "service/core/engine.py" in names
