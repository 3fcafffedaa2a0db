"""Seeded synthetic sensor streams: daily cycles, drift, noise, faults and gaps.

Used by the trainer's ``synthetic`` dataset and by the replay and demo tools. Pure numpy.

Every random draw is a counter-based hash of ``(seed, stream index, channel, step)``, so
stream ``i``'s series depends only on ``(seed, i)`` (a run with fewer streams, or fewer
steps, is a prefix of a larger one) and 100,000 streams are generated in one vectorised
pass.

The daily cycle follows the wall clock (``ts`` modulo one day), so its length in steps is
``86400 / period``. The default ``period`` of 300 s gives 288 readings per day: short enough
for a recurrent model to see whole cycles in training, long enough to look like sensor data.

Each stream has three features driven by a shared daily "load" profile:

- ``temp`` (deg C): a per-stream base and amplitude, slow linear drift plus a random walk;
- ``pressure`` (kPa): lags the load by a quarter day, with its own random walk;
- ``vibration`` (mm/s): grows with load, multiplicative noise, occasional spikes.

Faults: spikes (one-step outliers on temperature and vibration) and stuck sensors (every
feature holds its value for a few steps). Gaps: runs of steps with no reading at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_PERIOD", "SENSOR_FEATURES", "SimulatedSensors", "simulate", "stream_id"]

SENSOR_FEATURES: tuple[str, ...] = ("temp", "pressure", "vibration")
DEFAULT_PERIOD = 300.0
_DAY = 86_400.0

# Fault and gap rates per stream-step; lengths in steps.
_SPIKE_RATE = 0.002
_STUCK_RATE = 0.001
_STUCK_MAX = 12
_GAP_RATE = 0.002
_GAP_MAX = 6

# Channels of the hash: one per independent random draw.
_CH_PARAM = 0
_CH_NOISE = 100
_CH_WALK = 200
_CH_SPIKE = 300
_CH_STUCK = 400
_CH_GAP = 500

_U64 = np.uint64
_MASK = (1 << 64) - 1


def stream_id(index: int) -> str:
    """The id of stream `index`: ``sensor-00017``."""
    return f"sensor-{index:05d}"


@dataclass(frozen=True)
class SimulatedSensors:
    """A block of simulated readings: ``values[stream, step, feature]`` at ``ts[step]``."""

    stream_ids: list[str]
    ts: np.ndarray
    values: np.ndarray
    present: np.ndarray
    features: tuple[str, ...]

    @property
    def period(self) -> float:
        """Seconds between steps (`DEFAULT_PERIOD` for a single step)."""
        return float(self.ts[1] - self.ts[0]) if len(self.ts) > 1 else DEFAULT_PERIOD

    def readings(self) -> Iterator[tuple[str, float, dict[str, float]]]:
        """Readings in time order, streams interleaved within a step, gaps skipped."""
        n_streams = len(self.stream_ids)
        for k in range(len(self.ts)):
            ts = float(self.ts[k])
            rows = self.values[:, k, :].tolist()
            present = self.present[:, k]
            for s in range(n_streams):
                if present[s]:
                    yield self.stream_ids[s], ts, dict(zip(self.features, rows[s], strict=True))


def simulate(
    n_streams: int,
    n_steps: int,
    *,
    seed: int = 0,
    start_ts: float = 1_700_000_000.0,
    period: float = DEFAULT_PERIOD,
    gaps: bool = True,
    faults: bool = True,
) -> SimulatedSensors:
    """Simulate `n_streams` sensors for `n_steps` readings each, `period` seconds apart."""
    if n_streams < 0 or n_steps < 0:
        raise ValueError(f"n_streams and n_steps must be >= 0, got {n_streams}, {n_steps}")
    if period <= 0:
        raise ValueError(f"period must be > 0, got {period}")
    streams = np.arange(n_streams, dtype=np.uint64)[:, None]  # [S, 1]
    steps = np.arange(n_steps, dtype=np.uint64)[None, :]  # [1, T]
    ts = start_ts + period * np.arange(n_steps, dtype=np.float64)
    temp, pressure, vibration = _signals(seed, streams, steps, ts, start_ts)

    if faults:
        spike = _uniform(seed, streams, _CH_SPIKE, steps) < _SPIKE_RATE
        temp = np.where(spike, temp + 15.0, temp)
        vibration = np.where(spike, vibration * 5.0, vibration)
    values = np.stack([temp, pressure, vibration], axis=-1).astype(np.float32)
    if faults:
        source = _stuck_source(seed, streams, steps)
        values = np.take_along_axis(values, source[:, :, None], axis=1)

    present = np.ones((n_streams, n_steps), dtype=bool)
    if gaps:
        present = ~_runs(seed, streams, steps, _CH_GAP, _GAP_RATE, _GAP_MAX)[0]
    return SimulatedSensors(
        stream_ids=[stream_id(i) for i in range(n_streams)],
        ts=ts,
        values=np.ascontiguousarray(values),
        present=present,
        features=SENSOR_FEATURES,
    )


def _signals(
    seed: int, streams: np.ndarray, steps: np.ndarray, ts: np.ndarray, start_ts: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fault-free ``temp``, ``pressure`` and ``vibration`` of every (stream, step): [S, T]."""

    def param(k: int, lo: float, hi: float) -> np.ndarray:
        """A per-stream constant, uniform in [lo, hi): shape [S, 1]."""
        return lo + (hi - lo) * _uniform(seed, streams, _CH_PARAM + k, np.zeros_like(streams))

    def normal(channel: int) -> np.ndarray:
        return _normal(seed, streams, channel, steps)

    def walk(channel: int, scale: float) -> np.ndarray:
        return np.cumsum(normal(channel) * scale, axis=1)

    day = 2 * np.pi * ((ts % _DAY) / _DAY)[None, :]  # [1, T]
    phase = param(0, -0.5, 0.5)
    load = 0.5 + 0.5 * np.sin(day + phase)  # [S, T] in [0, 1]
    days = ((ts - start_ts) / _DAY)[None, :]

    temp = (
        param(1, 30.0, 70.0)
        + param(2, 2.0, 8.0) * (load - 0.5) * 2
        + param(3, -1.0, 1.0) * days
        + walk(_CH_WALK, 0.02)
        + normal(_CH_NOISE) * param(4, 0.1, 0.4)
    )
    pressure = (
        param(5, 98.0, 104.0)
        + param(6, 0.3, 1.2) * np.sin(day + phase - np.pi / 2)
        + walk(_CH_WALK + 1, 0.01)
        + normal(_CH_NOISE + 1) * 0.05
    )
    vibration = (param(7, 0.5, 2.0) + param(8, 1.0, 4.0) * load) * np.exp(
        normal(_CH_NOISE + 2) * 0.1
    )
    return temp, pressure, vibration


# -- counter-based randomness -----------------------------------------------------------------


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective scramble of 64-bit words."""
    z = z + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    out: np.ndarray = z ^ (z >> _U64(31))
    return out


def _hash(seed: int, streams: np.ndarray, channel: int, steps: np.ndarray) -> np.ndarray:
    """Step ``k`` of a splitmix64 sequence keyed by (seed, stream, channel)."""
    key = _mix(np.full((1, 1), seed & _MASK, dtype=np.uint64))
    key = _mix(_mix(key ^ streams) ^ _U64(channel))
    return _mix(key + steps * _U64(0x9E3779B97F4A7C15))


def _uniform(seed: int, streams: np.ndarray, channel: int, steps: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), one per (stream, step)."""
    return (_hash(seed, streams, channel, steps) >> _U64(11)).astype(np.float64) * (2.0**-53)


def _normal(seed: int, streams: np.ndarray, channel: int, steps: np.ndarray) -> np.ndarray:
    """Approximately standard normals: the sum of four 16-bit uniforms of one hash, centred.

    (Irwin-Hall with n=4, scaled to unit variance; bounded at +-3.46, which suits sensor
    noise and is several times cheaper than Box-Muller.)
    """
    h = _hash(seed, streams, channel, steps)
    mask = _U64(0xFFFF)
    total = (h & mask) + ((h >> _U64(16)) & mask) + ((h >> _U64(32)) & mask) + (h >> _U64(48))
    unit: np.ndarray = total.astype(np.float32) * np.float32(1 / 65536.0) - np.float32(2.0)
    return unit * np.float32(np.sqrt(3.0))


def _runs(
    seed: int, streams: np.ndarray, steps: np.ndarray, channel: int, rate: float, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Runs of 1..max_len steps starting at random onsets: (inside-a-run mask, run start).

    Only the past decides whether a step is inside a run, so shorter runs are prefixes.
    """
    onset = _uniform(seed, streams, channel, steps) < rate
    length = 1 + (_hash(seed, streams, channel + 1, steps) % _U64(max_len)).astype(np.int64)
    t = np.broadcast_to(steps.astype(np.int64), onset.shape)
    last = np.maximum.accumulate(np.where(onset, t, -1), axis=1)
    run_len = np.take_along_axis(length, np.maximum(last, 0), axis=1)
    inside = (last >= 0) & (t - last < run_len)
    return inside, last


def _stuck_source(seed: int, streams: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """For each (stream, step), the step whose values it shows: itself, or a stuck run's start."""
    inside, start = _runs(seed, streams, steps, _CH_STUCK, _STUCK_RATE, _STUCK_MAX)
    t = np.broadcast_to(steps.astype(np.int64), inside.shape)
    return np.where(inside, start, t)
