"""The card factory: valid model cards built in code, every field a keyword argument."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from service.modelcard import ModelCard, Provenance, Scaler, ScalerSet, StateSpec

__all__ = ["make_card"]


def make_card(
    *,
    name: str = "tiny",
    version: str = "1",
    kind: str = "rnn",
    description: str = "built in code for tests",
    features: Sequence[str] = ("temp", "load"),
    targets: Sequence[str] = ("temp",),
    horizon: int = 3,
    period: float = 60.0,
    scaler: ScalerSet | None = None,
    states: Sequence[StateSpec] = (),
    warmup_steps: int = 2,
    seed: int = 0,
    provenance: Provenance | None = None,
    metrics: Mapping[str, float] | None = None,
    parity_error: float | None = None,
    feature_ranges: Sequence[tuple[float, float]] | None = None,
) -> ModelCard:
    """A valid card built in code; `period` is in seconds.

    Without `scaler`, column ``j`` gets mean ``10 * (j + 1)`` and std ``2 + j``, so
    de-normalising is exercised. Without `provenance`, the card says it was built in code
    and records `seed`. Raises pydantic's ``ValidationError`` for an invalid combination.
    """
    return ModelCard(
        name=name,
        version=version,
        kind=kind,
        description=description,
        features=list(features),
        targets=list(targets),
        horizon=horizon,
        period=period,
        scaler=scaler if scaler is not None else _scaler(len(features), len(targets)),
        states=list(states),
        warmup_steps=warmup_steps,
        provenance=provenance if provenance is not None else _built_in_code(seed),
        metrics=dict(metrics or {}),
        parity_error=parity_error,
        feature_ranges=None if feature_ranges is None else list(feature_ranges),
    )


def _scaler(n_features: int, n_targets: int) -> ScalerSet:
    def columns(n: int) -> Scaler:
        return Scaler(mean=[10.0 * (j + 1) for j in range(n)], std=[2.0 + j for j in range(n)])

    return ScalerSet(features=columns(n_features), targets=columns(n_targets))


def _built_in_code(seed: int) -> Provenance:
    return Provenance(
        data="code",
        data_fingerprint="none",
        splits={},
        config={},
        seed=seed,
        packages={},
        created="1970-01-01T00:00:00Z",
    )
