"""The demo's live view: forecasts scored against the simulated truth.

The demo replays a `SimulatedSensors` block (looped, each pass shifted by its span), so the
actual value of any stream at any time is known. Each forecast's next step is compared with
the actual reading it forecast, and with persistence (the last reading, unchanged), which is
the baseline a forecaster has to beat. `render` draws the header and one row per shown
stream: its latest reading, the forecast made one step earlier for that time, and the error.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from service.simulate import SimulatedSensors
from service.tools.tail import ForecastView, format_ts

__all__ = ["Scoreboard"]

_KEEP = 16  # forecasts remembered per shown stream


@dataclass
class _Row:
    ts: float = float("nan")
    # target time -> (next-step forecast per target, warm)
    by_time: dict[float, tuple[list[float], bool]] = field(default_factory=dict)


class _Rate:
    """Events per second over the last refresh interval."""

    def __init__(self) -> None:
        self.count = 0
        self._mark = (time.monotonic(), 0)
        self.per_second = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        then, n = self._mark
        if now - then >= 0.5:
            self.per_second = (self.count - n) / (now - then)
            self._mark = (now, self.count)


class Scoreboard:
    """Thread-safe: the replay thread calls `sent`, the consumer thread `forecast`."""

    def __init__(
        self, sim: SimulatedSensors, targets: list[str], shown: list[str], loop_span: float
    ) -> None:
        self._sim = sim
        self._t0 = float(sim.ts[0])
        self._period = sim.period
        self._span = loop_span
        self._index = {sid: i for i, sid in enumerate(sim.stream_ids)}
        self._features = list(sim.features)
        self.targets = [t for t in targets if t in self._features]
        self._target_cols = [self._features.index(t) for t in self.targets]
        self._shown = {sid: _Row() for sid in shown}
        self._lock = threading.Lock()
        self.sent = _Rate()
        self.received = _Rate()
        self.warm = 0
        self._abs_err = np.zeros(len(self.targets))
        self._abs_err_persist = np.zeros(len(self.targets))
        self._scored = 0

    def actual(self, stream_id: str, ts: float) -> np.ndarray | None:
        """The simulated values of the targets at `ts`, or None for a gap or unknown stream."""
        i = self._index.get(stream_id)
        if i is None:
            return None
        step = round(((ts - self._t0) % self._span) / self._period) % self._sim.values.shape[1]
        if not self._sim.present[i, step]:
            return None
        return np.asarray(self._sim.values[i, step, self._target_cols], dtype=np.float64)

    def on_sent(self, n: int) -> None:
        """Count `n` readings sent (the replay's `on_sent`)."""
        with self._lock:
            self.sent.count += n

    def on_forecast(self, view: ForecastView) -> None:
        """Record a forecast for the table and score its next step against the simulated
        actual value (warm forecasts only).
        """
        if not view.horizon_ts:
            return
        target_ts = view.horizon_ts[0]
        nxt = [view.forecast[t][0] for t in self.targets if t in view.forecast]
        with self._lock:
            self.received.count += 1
            row = self._shown.get(view.stream_id)
            if row is not None:
                row.ts = max(row.ts, view.ts) if row.ts == row.ts else view.ts
                row.by_time[target_ts] = (nxt, view.warm)
                while len(row.by_time) > _KEEP:
                    del row.by_time[min(row.by_time)]
            if not view.warm or len(nxt) != len(self.targets):
                return
            self.warm += 1
            truth, now = (
                self.actual(view.stream_id, target_ts),
                self.actual(view.stream_id, view.ts),
            )
            if truth is None or now is None:
                return
            self._abs_err += np.abs(np.asarray(nxt) - truth)
            self._abs_err_persist += np.abs(now - truth)
            self._scored += 1

    def accuracy(self) -> list[tuple[str, float, float]]:
        """(target, model MAE, persistence MAE) over every scored warm forecast so far."""
        with self._lock:
            if not self._scored:
                return []
            mae = self._abs_err / self._scored
            persist = self._abs_err_persist / self._scored
            return [
                (t, float(m), float(p)) for t, m, p in zip(self.targets, mae, persist, strict=True)
            ]

    def status_line(self) -> str:
        """Readings sent, forecasts received, each with its rate per second, and the
        difference (in flight).
        """
        with self._lock:
            self.sent.tick()
            self.received.tick()
            lag = self.sent.count - self.received.count
            return (
                f"readings sent {self.sent.count:,} ({self.sent.per_second:,.0f}/s)   "
                f"forecasts {self.received.count:,} ({self.received.per_second:,.0f}/s)   "
                f"in flight {max(lag, 0):,}"
            )

    def accuracy_lines(self) -> list[str]:
        """Next-step MAE of the model and of persistence per target, and the model's skill."""
        acc = self.accuracy()
        if not acc:
            return ["next-step accuracy: waiting for warm forecasts"]
        cells = []
        for target, mae, persist in acc:
            skill = f"{1.0 - mae / persist:+.0%}" if persist > 0 else "n/a"
            cells.append(f"{target} {mae:.3f} vs {persist:.3f} ({skill})")
        return [
            f"next-step MAE over {self._scored:,} warm forecasts, model vs persistence (skill):",
            "  " + "   ".join(cells),
        ]

    def table(self, width: int = 100) -> list[str]:
        """One row per shown stream: latest reading, the forecast made a step earlier, error."""
        n_targets = max(1, min(len(self.targets), (width - 34) // 31))
        targets = self.targets[:n_targets]
        lead = f"{'':<14} {'':<19}"
        names = lead + "".join(f" | {t[:28]:^28}" for t in targets)
        head = f"{'stream':<14} {'time (UTC)':<19}" + "".join(
            f" | {'actual':>8} {'forecast':>9} {'error':>8}" for _ in targets
        )
        lines = [names, head, "-" * len(head)]
        with self._lock:
            rows = [(sid, row.ts, dict(row.by_time)) for sid, row in self._shown.items()]
        for sid, ts, by_time in rows:
            if ts != ts:  # no forecast yet
                lines.append(f"{sid:<14} {'waiting':<19}")
                continue
            actual = self.actual(sid, ts)
            made = by_time.get(ts)
            cells = []
            for k in range(len(targets)):
                a = f"{actual[k]:.2f}" if actual is not None else "gap"
                if made is None:
                    f, e = "-", ""
                else:
                    f = f"{made[0][k]:.2f}" + ("" if made[1] else "*")
                    e = f"{made[0][k] - actual[k]:+.2f}" if actual is not None else ""
                cells.append(f" | {a:>8} {f:>9} {e:>8}")
            lines.append(f"{sid:<14} {format_ts(ts):<19}" + "".join(cells))
        lines.append(
            "forecast: made one step earlier for this time;  * made before the stream was warm"
        )
        return lines
