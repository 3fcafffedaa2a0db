"""`sensorcast serve` as a child process, for the demo: started, awaited on ``/readyz``, stopped.

The child runs in its own session, so Ctrl-C in a terminal reaches only its parent (which
stops it with SIGTERM, letting it flush and commit), and is told to exit should the parent
die. It is configured the way an operator configures it: through ``SENSORCAST_*`` variables.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from service.embedded import die_with_parent, free_port
from service.errors import SensorcastError

__all__ = ["ServeProcess", "ServiceExited", "log_tail", "pick_http_port"]

log = logging.getLogger(__name__)


class ServiceExited(SensorcastError):
    """The service child process stopped or never became ready; the message ends with its log."""


def log_tail(path: Path, n_bytes: int = 3000) -> str:
    """The end of a log file, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n_bytes))
            text = f.read().decode("utf-8", "replace").strip()
    except OSError:
        return "(no log)"
    return text or "(empty log)"


def pick_http_port(wanted: int) -> int:
    """`wanted` if it is free on loopback, else (or for 0) a free port."""
    if wanted:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", wanted))
                return wanted
            except OSError:
                log.info("port %d is taken; using a free one", wanted)
    return free_port()


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class ServeProcess:
    """``python -m service.cli serve`` with `env`, its output appended to `log_path`."""

    def __init__(self, env: Mapping[str, str], log_path: Path, http_port: int) -> None:
        self.log_path = log_path
        self.http_port = http_port
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve"],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        log.info("service started pid=%d log=%s", self.proc.pid, log_path)

    def check(self) -> None:
        """Raise `ServiceExited` if the process has stopped."""
        if self.proc.poll() is not None:
            raise ServiceExited(
                f"the service exited with status {self.proc.returncode}; "
                f"its log ({self.log_path}) ends with:\n{log_tail(self.log_path)}"
            )

    def wait_ready(self, timeout: float, stop: threading.Event) -> None:
        """Return once ``/readyz`` answers 200 (or `stop` is set); raise if it dies or times out."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        while _http_status(url) != 200:
            self.check()
            if time.monotonic() > deadline:
                raise ServiceExited(
                    f"the service was not ready within {timeout:.0f} s; "
                    f"its log ({self.log_path}) ends with:\n{log_tail(self.log_path)}"
                )
            if stop.wait(0.2):
                return

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "service pid=%d did not stop within %.0f s; killing it", self.proc.pid, timeout
                )
                self.proc.kill()
                self.proc.wait()
        log.info("service stopped pid=%d status=%d", self.proc.pid, self.proc.returncode)
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
