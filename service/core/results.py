"""What the engine hands back: one call's result (columnar or as objects) and running totals."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.core.readings import DropReason, Forecast, ForecastBatch, Reading, Reject, RejectReason
from service.core.scoring import ScoreSums

__all__ = ["BatchResult", "EngineResult", "EngineStats"]


@dataclass(kw_only=True)
class _Outcome:
    """What any engine call did besides its forecasts, rejects and drops.

    `round_sizes`/`round_seconds` have one entry per model call.
    """

    round_sizes: list[int] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)
    resets: int = 0
    gaps: int = 0
    """Readings that came after a gap longer than ``max_gap_periods`` (reset or not)."""
    clock_resets: int = 0
    """Streams whose clock was set back by `EngineConfig.clock_recovery` (state reset)."""
    evicted: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    rewarms: dict[str, int] = field(default_factory=dict)
    """Streams re-warmed before their reading, by reason (`service.core.state.REWARM_REASONS`)."""
    rewarm_seconds: float = 0.0
    """Seconds the re-warms' model calls took."""
    scores: ScoreSums | None = None
    """The pairs scored and the anomalies counted, by partition (None: not scored)."""


@dataclass
class EngineResult(_Outcome):
    """What one `process` call did, as objects."""

    forecasts: list[Forecast] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    drops: list[tuple[Reading, DropReason]] = field(default_factory=list)


@dataclass
class BatchResult(_Outcome):
    """What one `process_batch` call did; rejects and drops name rows of the batch.

    `reject_rows[i]` is the row of `rejects[i]`; `drops` holds ``(row, reason)`` pairs.
    """

    forecasts: ForecastBatch
    rejects: list[Reject] = field(default_factory=list)
    reject_rows: list[int] = field(default_factory=list)
    drops: list[tuple[int, DropReason]] = field(default_factory=list)


@dataclass
class EngineStats:
    """Cumulative counters since the engine started (for metrics)."""

    readings: int = 0
    forecasts: int = 0
    rejects: dict[RejectReason, int] = field(default_factory=dict)
    drops: dict[DropReason, int] = field(default_factory=dict)
    resets: int = 0
    gaps: int = 0
    clock_resets: int = 0
    evicted: int = 0
    expired: int = 0
    rounds: int = 0
    model_seconds: float = 0.0

    def add(self, result: EngineResult | BatchResult, readings: int) -> None:
        """Count one call's `result`, which applied `readings` readings."""
        self.readings += readings
        self.forecasts += len(result.forecasts)
        for reject in result.rejects:
            self.rejects[reject.reason] = self.rejects.get(reject.reason, 0) + 1
        for _, reason in result.drops:
            self.drops[reason] = self.drops.get(reason, 0) + 1
        self.resets += result.resets
        self.gaps += result.gaps
        self.clock_resets += result.clock_resets
        self.evicted += len(result.evicted)
        self.expired += len(result.expired)
        self.rounds += len(result.round_sizes)
        self.model_seconds += sum(result.round_seconds)
