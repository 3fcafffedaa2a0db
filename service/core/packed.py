"""Model calls over sequences: each stream's readings in a row as one sequence on the time axis.

The step model takes ``x`` as ``[batch, time, n_inputs]`` and loops over time in native
code, so a stream with several readings to apply in a row needs one call, not one per
reading. Sequences of different lengths are *packed*, as a recurrent network's packed
batches are: the streams sorted by length, longest first, the model runs every stream
over the shortest length, then the streams longer than that over the next length, and so
on. There is no padding (a padded step would change the final state), and a set of
sequences costs one call per distinct length; a stream's state is carried from one call
to the next in memory and scattered back to the store after its last one.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np

from service.core.model import StepModel
from service.core.state import StateStore
from service.errors import InferenceError

__all__ = ["PackedCalls", "run_packed"]


class PackedCalls(NamedTuple):
    """What `run_packed` did: the outputs per reading (None when not asked for), and per
    model call its readings and seconds."""

    y: np.ndarray | None
    sizes: list[int]
    seconds: list[float]


def run_packed(
    model: StepModel,
    store: StateStore,
    slots: np.ndarray,
    x: np.ndarray,
    lengths: np.ndarray,
    *,
    outputs: bool = True,
) -> PackedCalls:
    """Run `model` over sequences, one per slot of `slots` (distinct), from the slots' states.

    `x` holds the scaled inputs ``[n, n_inputs]`` slot-major: slot i's `lengths[i]` (>= 1)
    readings in order, after those of the slots before it. The final states are scattered
    back to the store. Returns ``y`` per reading ``[n, horizon, n_targets]`` (scaled, float32,
    the caller's to change) unless `outputs` is False. Raises `InferenceError` when the
    model returns outputs of the wrong shape.
    """
    card = model.card
    horizon, n_targets = card.horizon, card.n_targets
    starts = np.cumsum(lengths) - lengths
    order = np.argsort(-lengths, kind="stable")  # longest first: each call's streams lead
    by_length = lengths[order]
    axes = [spec.batch_axis for spec in card.states]
    states = store.gather(slots[order])
    y = np.empty((len(x), horizon, n_targets), np.float32) if outputs else None
    sizes: list[int] = []
    seconds: list[float] = []
    done = 0  # readings of every stream still running that are applied
    for length in np.unique(by_length).tolist():
        active = int(np.count_nonzero(by_length >= length))
        span = length - done
        at = starts[order[:active], None] + np.arange(done, length)  # [active, span]
        inputs = x[at]
        started = time.perf_counter()
        held = [_leading(s, active, a) for s, a in zip(states, axes, strict=True)]
        out, new = model.step(inputs, held)
        seconds.append(time.perf_counter() - started)
        sizes.append(active * span)
        if out.shape != (active, span, horizon, n_targets):
            raise InferenceError(
                f"{card.ref}: the model returned y of shape {out.shape}, expected "
                f"{(active, span, horizon, n_targets)}"
            )
        if y is not None:
            y[at.reshape(-1)] = out.reshape(-1, horizon, n_targets)
        # the streams of this length end here: their states go back to the store
        ending = int(np.count_nonzero(by_length > length))
        if ending < active:
            store.scatter(
                slots[order[ending:active]],
                [_between(s, ending, active, a) for s, a in zip(new, axes, strict=True)],
            )
        states, done = new, length
    return PackedCalls(y, sizes, seconds)


def _leading(state: np.ndarray, n: int, axis: int) -> np.ndarray:
    """The first `n` streams of a batched `state` (batch axis `axis`), contiguous."""
    if state.shape[axis] == n:
        return state
    return np.ascontiguousarray(_between(state, 0, n, axis))


def _between(state: np.ndarray, start: int, stop: int, axis: int) -> np.ndarray:
    """Streams `start` to `stop` of a batched `state` (a view)."""
    index: tuple[Any, ...] = (slice(None),) * axis + (slice(start, stop),)
    view: np.ndarray = state[index]
    return view
