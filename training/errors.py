"""Errors raised by the trainer; each is a `SensorcastError`, so the CLI prints one line."""

from __future__ import annotations

from service.errors import SensorcastError

__all__ = ["ExportError", "TrainingConfigError", "TrainingDataError"]


class TrainingDataError(SensorcastError):
    """The training table is unreadable or inconsistent.

    The message names the file, the column or the stream and the repair option that fixes
    it where one exists (``--sort``, ``--dedupe``, ``--fill``).
    """


class TrainingConfigError(SensorcastError):
    """A training or model option is out of range or inconsistent with the data."""


class ExportError(SensorcastError):
    """The exported graph failed a check (parity with torch, GRU attributes, the contract)."""
