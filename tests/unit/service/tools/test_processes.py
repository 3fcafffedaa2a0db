from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path

import pytest

from service.tools.processes import ServeProcess, ServiceExited, log_tail, pick_http_port
from service.tools.screen import Screen


def test_pick_http_port_keeps_a_free_port_and_replaces_a_taken_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = pick_http_port(port)
        assert other != port and other > 0
    assert pick_http_port(port) == port  # free again
    assert pick_http_port(0) > 0


def test_log_tail_reads_the_end(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("a" * 5000 + "\nlast line\n")
    assert log_tail(path, 20).endswith("last line")
    assert len(log_tail(path, 20)) <= 20
    assert log_tail(tmp_path / "missing.log") == "(no log)"


def test_a_service_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    env = {**os.environ, "SENSORCAST_KAFKA__MAX_BATCH": "0"}
    proc = ServeProcess(env, tmp_path / "service.log", http_port=pick_http_port(0))
    with proc, pytest.raises(ServiceExited, match="SENSORCAST_KAFKA__MAX_BATCH"):
        proc.wait_ready(30, threading.Event())
    assert proc.proc.returncode == 2


def test_screen_without_a_terminal_prints_status_lines_only() -> None:
    out = io.StringIO()
    screen = Screen(out, plain_every=3600)
    assert not screen.tty
    screen.show(["header"], ["row"], "status 1")
    screen.show(["header"], ["row"], "status 2")  # too soon: not printed
    screen.message("done")
    assert out.getvalue() == "status 1\ndone\n"
