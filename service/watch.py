"""Hot swap: a newer version of the served model, found in the registry while serving.

With ``model.version = latest`` a `ModelWatcher` thread looks in the registry every
``model.watch_interval`` seconds. A version newer than the served one is loaded and verified
beside it, in the watcher's thread: the card and the graph must agree, the graph must honour
the step-model contract and reproduce the card's golden vectors (`service.registry`), and
the engine must be able to serve it (`StreamEngine.check_replacement`). The loop then takes
the ready model between two micro-batches (`take`) and swaps it in; every stream is
re-warmed by it from its kept readings before its next reading (`service.core.engine`).

A version that fails is not served: the running model goes on, the failure is logged and
counted (``sensorcast_model_swaps_total{outcome="failed"}``), and the version is tried again
only when its files change (a folder may still be being copied in).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from service.config import ModelSettings
from service.core.engine import StreamEngine
from service.core.model import OnnxStepModel
from service.errors import SensorcastError
from service.metrics import ServiceMetrics
from service.registry import LATEST, ModelRef, Registry

__all__ = ["ModelWatcher", "ReadyModel"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadyModel:
    """A loaded, verified model waiting to be swapped in."""

    ref: ModelRef
    model: OnnxStepModel


def _signature(ref: ModelRef) -> tuple[tuple[int, int], ...]:
    """What identifies the files of a version folder as they are now (sizes and times)."""
    out = []
    for path in (ref.onnx_path, ref.card_path):
        try:
            stat = path.stat()
            out.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            out.append((-1, -1))
    return tuple(out)


class ModelWatcher:
    """Looks for a newer version of the served model; see the module doc."""

    def __init__(
        self,
        settings: ModelSettings,
        serving: str,
        check: Callable[[OnnxStepModel], None],
        metrics: ServiceMetrics,
    ) -> None:
        """`serving` is the served version; `check` raises `SensorcastError` for a model the
        engine cannot serve."""
        self._settings = settings
        self._serving = serving
        self._check = check
        self._metrics = metrics
        self._failed: dict[str, tuple[tuple[int, int], ...]] = {}  # version -> its files then
        self._ready: ReadyModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    @staticmethod
    def wanted(settings: ModelSettings) -> bool:
        """Whether the settings ask for watching: the latest version, a positive interval."""
        return settings.version == LATEST and settings.watch_interval > 0

    @classmethod
    def serving(
        cls, settings: ModelSettings, engine: StreamEngine, metrics: ServiceMetrics
    ) -> ModelWatcher | None:
        """A started watcher for newer versions than `engine`'s model, when `wanted`."""
        if not cls.wanted(settings):
            return None
        return cls(settings, engine.card.version, engine.check_replacement, metrics).start()

    def start(self) -> ModelWatcher:
        """Start looking, every ``model.watch_interval`` seconds."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop looking (a load in progress finishes first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def take(self) -> ReadyModel | None:
        """The model to swap in now, if one is ready (then it is the served one)."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def _run(self) -> None:
        while not self._stop.wait(self._settings.watch_interval):
            try:
                self.look()
            except Exception:  # the watcher must never take the service down
                log.exception(
                    "model watch failed; looking again in %.0f s", self._settings.watch_interval
                )

    def look(self) -> ReadyModel | None:
        """One look in the registry: the newer version loaded and verified, when there is one
        that did not fail with the files it has now; it is also made ready for `take`."""
        m = self._settings
        try:
            ref = Registry(m.registry).resolve(m.name, LATEST)
        except SensorcastError as exc:
            log.warning("model watch: %s", exc)
            return None
        if ref.version == self._serving or self._failed.get(ref.version) == _signature(ref):
            return None
        signature = _signature(ref)
        try:
            loaded = Registry(m.registry).load(m.name, ref.version)
            model = OnnxStepModel.from_loaded(
                loaded, intra_op_threads=m.intra_op_threads, spinning=m.spinning
            )
            self._check(model)
        except SensorcastError as exc:
            self._failed[ref.version] = signature
            self._metrics.model_swaps.labels(outcome="failed").inc()
            log.error(
                "model swap refused model=%s serving=%s error=%s; it is tried again when its "
                "files change",
                ref,
                self._serving,
                exc,
            )
            return None
        ready = ReadyModel(ref, model)
        with self._lock:
            self._ready = ready
        self._serving = ref.version
        return ready
