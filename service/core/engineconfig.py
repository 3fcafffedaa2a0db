"""`EngineConfig`: how the engine treats gaps, bad values, idle streams and capacity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.core.state import StateDType
from service.errors import ConfigError

__all__ = ["EngineConfig"]


@dataclass(frozen=True)
class EngineConfig:
    """How the engine treats gaps, bad values, idle streams and capacity."""

    max_gap_periods: float = 10.0
    """A gap longer than this many card periods triggers the gap policy."""
    gap_policy: Literal["reset", "keep"] = "reset"
    impute: Literal["reject", "last"] = "reject"
    """Missing or non-finite feature values: reject the reading, or use the stream's last value."""
    ttl_seconds: float | None = None
    """Streams not seen for this long (wall clock, the `now` given to `process`) expire."""
    max_streams: int | None = None
    """Capacity cap; beyond it the least recently used streams are evicted (at least 1/128 of
    the cap at a time, which amortises the search for them)."""
    state_dtype: StateDType = "float32"
    initial_capacity: int = 1024
    out_of_range: Literal["reject", "clip", "accept"] = "reject"
    """A value beyond the card's training range by more than `out_of_range_margin` training
    standard deviations: reject the reading, clip the value to that bound, or accept it."""
    out_of_range_margin: float = 10.0
    clock_recovery: int = 2
    """Consecutive readings continuing a stream's clock from before a jump ahead of more than
    the gap limit that set the clock back (the jump was a bad timestamp); 0: never."""
    history: int | None = None
    """Applied readings each stream keeps to re-warm its state for another model; None: the
    card's warm-up steps."""

    def __post_init__(self) -> None:
        if not self.max_gap_periods > 0:
            raise ConfigError(f"max_gap_periods must be > 0, got {self.max_gap_periods}")
        if self.gap_policy not in ("reset", "keep"):
            raise ConfigError(f"gap_policy must be 'reset' or 'keep', got {self.gap_policy!r}")
        if self.impute not in ("reject", "last"):
            raise ConfigError(f"impute must be 'reject' or 'last', got {self.impute!r}")
        if self.ttl_seconds is not None and not self.ttl_seconds > 0:
            raise ConfigError(f"ttl_seconds must be > 0 or unset, got {self.ttl_seconds}")
        if self.max_streams is not None and self.max_streams < 1:
            raise ConfigError(f"max_streams must be >= 1 or unset, got {self.max_streams}")
        if self.state_dtype not in ("float32", "float16"):
            raise ConfigError(f"state_dtype must be float32 or float16, got {self.state_dtype!r}")
        if self.initial_capacity < 1:
            raise ConfigError(f"initial_capacity must be >= 1, got {self.initial_capacity}")
        if self.out_of_range not in ("reject", "clip", "accept"):
            raise ConfigError(
                f"out_of_range must be 'reject', 'clip' or 'accept', got {self.out_of_range!r}"
            )
        if not self.out_of_range_margin >= 0:
            raise ConfigError(f"out_of_range_margin must be >= 0, got {self.out_of_range_margin}")
        if self.history is not None and not 0 <= self.history <= 65535:
            raise ConfigError(f"history must be 0 to 65535 or unset, got {self.history}")
        if self.clock_recovery < 0:
            raise ConfigError(f"clock_recovery must be >= 0, got {self.clock_recovery}")
