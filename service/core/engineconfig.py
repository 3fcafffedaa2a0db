"""`EngineConfig`: how the engine treats gaps, bad values, idle streams and capacity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.core.state import StateDType
from service.errors import ConfigError

__all__ = ["EngineConfig"]

# the settings that take one of a few values, and those values
_CHOICES: dict[str, tuple[str, ...]] = {
    "gap_policy": ("reset", "keep"),
    "impute": ("reject", "last"),
    "state_dtype": ("float32", "float16"),
    "out_of_range": ("reject", "clip", "accept"),
    "anomaly_policy": ("apply", "replace"),
}


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
    score_forecasts: bool = True
    """Score each warm forecast against the readings that follow it (`service.core.scoring`);
    off saves each stream's outstanding forecasts (horizon x (horizon + 1) x targets floats)."""
    anomaly_threshold: float = 5.0
    """A reading whose residual from its one-step forecast is more than this many running
    one-step error scales away, in any target, is flagged as an anomaly."""
    anomaly_policy: Literal["apply", "replace"] = "apply"
    """A flagged reading updates the state as it is (apply), or with its flagged targets'
    values replaced by the forecast made for them one step earlier (replace)."""
    sequences: bool = True
    """Apply the readings a stream has in a row in one micro-batch as one sequence on the
    model's time axis (`service.core.packed`): one model call per distinct run length
    rather than one per reading of the busiest stream. Off, or under the ``replace``
    anomaly policy (which needs each reading's forecast before the next is applied), every
    reading takes a round of its own; the results are the same."""

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                names = [repr(a) for a in allowed]
                ways = f"{', '.join(names[:-1])} or {names[-1]}"
                raise ConfigError(f"{name} must be {ways}, got {value!r}")
        for name, ok, rule in (
            ("max_gap_periods", self.max_gap_periods > 0, "> 0"),
            ("ttl_seconds", self.ttl_seconds is None or self.ttl_seconds > 0, "> 0 or unset"),
            ("max_streams", self.max_streams is None or self.max_streams >= 1, ">= 1 or unset"),
            ("initial_capacity", self.initial_capacity >= 1, ">= 1"),
            ("out_of_range_margin", self.out_of_range_margin >= 0, ">= 0"),
            ("history", self.history is None or 0 <= self.history <= 65535, "0 to 65535 or unset"),
            ("anomaly_threshold", self.anomaly_threshold > 0, "> 0"),
            ("clock_recovery", self.clock_recovery >= 0, ">= 0"),
        ):
            if not ok:
                raise ConfigError(f"{name} must be {rule}, got {getattr(self, name)}")
