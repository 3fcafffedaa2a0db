"""`sensorcast demo` end to end: broker, service, replay, forecasts; then nothing left running."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service.registry import Registry
from service.testing import add_sensor_lstm

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"

pytestmark = [pytest.mark.slow, pytest.mark.broker]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped registry when it holds sensors-demo, else a small stand-in model."""
    if (REPO_MODELS / "sensors-demo").is_dir():
        return REPO_MODELS
    return add_sensor_lstm(
        tmp_path_factory.mktemp("models"), name="sensors-demo", horizon=4, hidden=16, warmup_steps=3
    ).registry


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class _Demo:
    """`sensorcast demo` as a subprocess; its output lines and its descendants are recorded."""

    def __init__(self, registry: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "service.cli", "demo", "--registry", str(registry)]
        cmd += ["--streams", "40", "--rate", "800", "--http-port", "0", "--rows", "4", *extra]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.descendants: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def watch_until(self, condition: object, timeout: float) -> None:
        """Record descendants until `condition()` holds or the demo exits."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            self.descendants |= _children(self.proc.pid)
            if callable(condition) and condition():
                return
            assert time.monotonic() < deadline, "\n".join(self.lines)
            time.sleep(0.1)

    def finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return code

    def forecasts(self) -> int:
        counts = [
            int(m.group(1).replace(",", ""))
            for m in map(re.compile(r"forecasts ([\d,]+)").search, self.lines)
            if m
        ]
        return max(counts, default=0)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _assert_nothing_left(demo: _Demo) -> None:
    assert len(demo.descendants) >= 2, demo.text  # at least the broker and the service
    left = [pid for pid in demo.descendants if _alive(pid)]
    assert not left, f"processes left running: {left}"


def test_demo_runs_for_its_duration_and_cleans_up(registry: Path, tmp_path: Path) -> None:
    # the served model and a challenger in shadow, in a registry of their own
    models = tmp_path / "models"
    shutil.copytree(registry / "sensors-demo", models / "sensors-demo")
    card = Registry(models).load("sensors-demo").card
    add_sensor_lstm(models, name="challenger", horizon=card.horizon, warmup_steps=3)
    demo = _Demo(models, "--duration", "14", "--challenger", "challenger")
    demo.watch_until(lambda: False, timeout=90)
    assert demo.finish(timeout=30) == 0, demo.text
    assert "starting the embedded broker" in demo.text or "KAFKA_BOOTSTRAP_SERVERS" in os.environ
    assert demo.forecasts() > 500, demo.text
    # warm forecasts scored, as the service's own /metrics count them, for both models
    assert "live accuracy from the service's /metrics" in demo.text, demo.text
    for model in (card.ref, "challenger:1"):
        scored = re.findall(re.escape(model) + r" \(([\d,]+) values scored\)", demo.text)
        assert scored and int(scored[-1].replace(",", "")) > 0, demo.text
    assert "sensor-00000" in demo.text  # the table
    assert "demo stopped after" in demo.lines[-1]
    _assert_nothing_left(demo)


def test_demo_stops_cleanly_on_ctrl_c(registry: Path) -> None:
    demo = _Demo(registry)
    demo.watch_until(lambda: demo.forecasts() > 0, timeout=90)
    demo.proc.send_signal(signal.SIGINT)
    assert demo.finish(timeout=45) == 0, demo.text
    assert "demo stopped after" in demo.lines[-1]
    _assert_nothing_left(demo)


def test_a_service_that_cannot_start_ends_the_demo_with_its_log(registry: Path) -> None:
    env = {**os.environ, "SENSORCAST_KAFKA__MAX_BATCH": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "service.cli", "demo", "--registry", str(registry)]
    result = subprocess.run(
        [*cmd, "--duration", "30", "--http-port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the service exited with status 2" in result.stdout
    assert "SENSORCAST_KAFKA__MAX_BATCH" in result.stdout  # the tail of the service's log
    assert "demo stopped after" in result.stdout
