"""Sensorcast: live recurrent forecasts for sensor streams.

The online side. It never imports torch or the trainer, so the production image carries
neither. `service.modelcard` is the contract shared with `training`.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
