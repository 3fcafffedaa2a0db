"""One root for every error Sensorcast raises; library errors are converted at the edge."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ModelCardError",
    "ModelContractError",
    "RegistryError",
    "SensorcastError",
]


class SensorcastError(Exception):
    """Root of every error raised by Sensorcast."""


class ModelCardError(SensorcastError):
    """A model card is missing, unreadable or invalid."""


class ModelContractError(SensorcastError):
    """An ONNX graph does not honour the step-model contract described by its card.

    Re-export the model with `sensorcast export`, or fix the card so that its features,
    targets, horizon and states match the graph's inputs and outputs.
    """


class RegistryError(SensorcastError):
    """A model or version is not in the registry.

    Check `--registry` (or SENSORCAST_MODEL__REGISTRY) and run `sensorcast models` to list
    what is there.
    """


class ConfigError(SensorcastError):
    """A setting is invalid; the message names it and says what is accepted."""
