"""``/metrics``, ``/healthz`` and ``/readyz`` on a small threaded `http.server`.

``/healthz`` answers 200 while the process runs. ``/readyz`` answers 200 only when every
readiness condition holds (model loaded, partitions assigned, state restored, broker
reachable) and 503 otherwise, with a JSON body naming each condition.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service.config import HttpSettings
from service.errors import ConfigError
from service.metrics import CONTENT_TYPE, ServiceMetrics

__all__ = ["READINESS_CONDITIONS", "HttpServer", "Readiness", "serve_http"]

log = logging.getLogger(__name__)

READINESS_CONDITIONS = ("model_loaded", "partitions_assigned", "state_restored", "broker_reachable")


class Readiness:
    """Thread-safe readiness conditions; ready when all of them hold."""

    def __init__(self, metrics: ServiceMetrics | None = None) -> None:
        self._lock = threading.Lock()
        self._conditions = dict.fromkeys(READINESS_CONDITIONS, False)
        self._metrics = metrics

    def set(self, condition: str, value: bool) -> None:
        """Set one condition (logged when it changes) and the ready gauge; raises `KeyError`
        for a name not in `READINESS_CONDITIONS`.
        """
        if condition not in self._conditions:
            raise KeyError(f"unknown readiness condition {condition!r}")
        with self._lock:
            changed = self._conditions[condition] != value
            self._conditions[condition] = value
            ready = all(self._conditions.values())
        if changed:
            log.info("readiness %s=%s ready=%s", condition, str(value).lower(), str(ready).lower())
        if self._metrics is not None:
            self._metrics.ready.set(1 if ready else 0)

    def snapshot(self) -> dict[str, bool]:
        """Every condition's current value, copied."""
        with self._lock:
            return dict(self._conditions)

    @property
    def ready(self) -> bool:
        """Whether every condition holds."""
        return all(self.snapshot().values())


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics.render(), CONTENT_TYPE)
        elif path == "/healthz":
            self._send_json(200, {"status": "ok"})
        elif path == "/readyz":
            conditions = self.server.readiness.snapshot()
            ready = all(conditions.values())
            self._send_json(200 if ready else 503, {"ready": ready, **conditions})
        else:
            self._send_json(404, {"error": f"no such endpoint {path}"})

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], metrics: ServiceMetrics, readiness: Readiness
    ) -> None:
        self.metrics = metrics
        self.readiness = readiness
        super().__init__(address, _Handler)


class HttpServer:
    """Serves the endpoints from a background thread; `port` is the bound port."""

    def __init__(self, host: str, port: int, metrics: ServiceMetrics, readiness: Readiness) -> None:
        self._server = _Server((host, port), metrics, readiness)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sensorcast-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port (the one picked when 0 was asked for)."""
        return int(self._server.server_address[1])

    def start(self) -> HttpServer:
        """Serve from a daemon thread; returns self."""
        self._thread.start()
        log.info("http listening host=%s port=%d", self._server.server_address[0], self.port)
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and wait up to 5 s for the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_http(
    settings: HttpSettings, metrics: ServiceMetrics, readiness: Readiness
) -> HttpServer | None:
    """The endpoints started on ``http.host``:``http.port``, or None when ``http.enabled``
    is false. Raises `ConfigError` when the port cannot be bound."""
    if not settings.enabled:
        return None
    try:
        server = HttpServer(settings.host, settings.port, metrics, readiness)
    except OSError as exc:
        raise ConfigError(
            f"http.port: cannot listen on {settings.host}:{settings.port} ({exc.strerror}); "
            "choose another port with SENSORCAST_HTTP__PORT or --http-port"
        ) from exc
    return server.start()
