"""The served model: loaded from the registry into a stream engine configured by the settings."""

from __future__ import annotations

import logging

from service.config import EngineSettings, ServiceSettings
from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.errors import ConfigError
from service.metrics import ServiceMetrics
from service.registry import LoadedModel, Registry, parse_model_spec

__all__ = ["engine_config", "load_engine"]

log = logging.getLogger(__name__)


def engine_config(settings: EngineSettings) -> EngineConfig:
    """The engine's configuration from the ``engine.*`` settings."""
    e = settings
    return EngineConfig(
        max_gap_periods=e.max_gap_periods,
        gap_policy=e.gap_policy,
        impute=e.impute,
        ttl_seconds=e.ttl_seconds,
        max_streams=e.max_streams,
        state_dtype=e.state_dtype,
        out_of_range=e.out_of_range,
        out_of_range_margin=e.out_of_range_margin,
        clock_recovery=e.clock_recovery,
        history=e.history,
        score_forecasts=e.score_forecasts,
        anomaly_threshold=e.anomaly_threshold,
        anomaly_policy=e.anomaly_policy,
        sequences=e.sequences,
    )


def _engine(settings: ServiceSettings, loaded: LoadedModel) -> StreamEngine:
    """`loaded` on onnxruntime as ``model.*`` says, in an engine configured by ``engine.*``."""
    m = settings.model
    model = OnnxStepModel.from_loaded(
        loaded, intra_op_threads=m.intra_op_threads, spinning=m.spinning
    )
    return StreamEngine(model, engine_config(settings.engine))


def load_shadow(settings: ServiceSettings) -> StreamEngine | None:
    """The challenger `model.shadow` in an engine of its own (None when unset); raises as
    `load_engine` does."""
    m = settings.model
    if m.shadow is None:
        return None
    registry = Registry(m.registry)
    challenger = registry.resolve(*parse_model_spec(m.shadow))
    served = registry.resolve(m.name, m.version)
    if (challenger.name, challenger.version) == (served.name, served.version):
        raise ConfigError(
            f"model.shadow={m.shadow} is the served model {served.name}:{served.version}; "
            "a challenger is another model or version"
        )
    loaded = registry.load(challenger.name, challenger.version)
    engine = _engine(settings, loaded)
    log.info(
        "challenger loaded model=%s kind=%s (in shadow: forecasts to kafka.shadow_topic)",
        loaded.card.ref,
        loaded.card.kind,
    )
    return engine


def load_engine(settings: ServiceSettings, metrics: ServiceMetrics) -> StreamEngine:
    """The model ``model.name``/``model.version`` from ``model.registry`` in a new engine.

    Raises `RegistryError`, `ModelCardError` or `ModelContractError` when it cannot be served.
    """
    m, e = settings.model, settings.engine
    loaded = Registry(m.registry).load(m.name, m.version)
    card = loaded.card
    if card.feature_ranges is None and e.out_of_range != "accept":
        log.warning(
            "model card has no feature_ranges: readings are not checked against the "
            "training range (engine.out_of_range=%s has no effect); re-export the model",
            e.out_of_range,
        )
    engine = _engine(settings, loaded)
    metrics.set_model(card.name, card.version, card.kind, engine.fingerprint.hex())
    log.info(
        "model loaded model=%s kind=%s features=%d horizon=%d dir=%s",
        card.ref,
        card.kind,
        card.n_features,
        card.horizon,
        loaded.ref.directory,
    )
    return engine
