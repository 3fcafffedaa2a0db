"""The pure core: readings in, forecasts and rejects out. No Kafka, no metrics, no HTTP,
no environment reads; a test drives it with plain lists."""

from __future__ import annotations
