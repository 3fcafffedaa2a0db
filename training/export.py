"""Export a trained forecaster as an ONNX step model, check it, and add it to the registry.

The order is fixed: export the graph, check every GRU node computes the reset gate the way
torch does (``linear_before_reset=1``), step both torch and onnxruntime one reading at a
time at batch 1 and at batch N and compare (max abs error <= 1e-5), record golden test
vectors (training inputs and what torch computes for them) and each feature's training
range, then build the card with the measured parity error, and write ``model.onnx`` +
``card.json`` and ``checkpoint.pt`` into the registry's staging folder, where the report
and the plots join them before the folder is renamed into place.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.core.inputs import InputEncoder
from service.golden import GoldenTensor, GoldenVectors, StepFunction
from service.modelcard import (
    INPUT_NAME,
    OUTPUT_NAME,
    DerivedInputs,
    ModelCard,
    Provenance,
    ScalerSet,
    StateSpec,
)
from service.registry import write_model
from training.data import Dataset, Series, Splits
from training.errors import ExportError
from training.models import Forecaster
from training.predict import CHECKPOINT_FILE

__all__ = [
    "GOLDEN_FLOOR",
    "OPSET",
    "PARITY_TOLERANCE",
    "build_card",
    "check_gru_nodes",
    "export_onnx",
    "feature_ranges",
    "golden_vectors",
    "parity_error",
    "save_model",
]

OPSET = 17
PARITY_TOLERANCE = 1e-5
# A graph must reproduce its golden vectors to max(GOLDEN_FLOOR, GOLDEN_MARGIN x the error
# onnxruntime makes on them at export), in scaled units. The floor is far above float32
# round-off over a few recurrent steps, whatever the onnxruntime version or CPU (~1e-6),
# and far below any change worth catching (forecasts are scored in tenths of a std).
GOLDEN_FLOOR = 1e-4
GOLDEN_MARGIN = 10.0
_PACKAGES = ("torch", "onnx", "onnxruntime", "numpy", "pandas", "statsmodels", "sensorcast")


def export_onnx(model: Forecaster) -> onnx.ModelProto:
    """Trace the step signature with dynamic batch and time axes.

    The TorchScript exporter maps nn.LSTM / nn.GRU / nn.RNN onto the ONNX LSTM / GRU / RNN
    operators, which onnxruntime runs as fused kernels; the time-delay MLP becomes slices
    and matmuls.
    """
    model.eval()
    specs = model.state_specs()
    example = (torch.zeros(2, 3, model.config.n_features), *model.init_states(2))
    dynamic: dict[str, dict[int, str]] = {
        INPUT_NAME: {0: "batch", 1: "time"},
        OUTPUT_NAME: {0: "batch", 1: "time"},
    }
    for spec in specs:
        dynamic[spec.name] = {spec.batch_axis: "batch"}
        dynamic[spec.output_name] = {spec.batch_axis: "batch"}
    # torch.onnx.export takes a path (its signature names no file-like object).
    with tempfile.TemporaryDirectory(prefix="sensorcast-export-") as folder:
        path = str(Path(folder) / "model.onnx")
        with warnings.catch_warnings():
            # The tracer warns about batch_first RNNs and shape arithmetic it handles correctly.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                path,
                input_names=[INPUT_NAME, *(s.name for s in specs)],
                output_names=[OUTPUT_NAME, *(s.output_name for s in specs)],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
        graph = onnx.load_model(path)
    onnx.checker.check_model(graph)
    return graph


def check_gru_nodes(graph: onnx.ModelProto) -> int:
    """Every GRU node must have ``linear_before_reset=1`` (torch's formulation); returns the count."""
    count = 0
    for node in graph.graph.node:
        if node.op_type != "GRU":
            continue
        count += 1
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("linear_before_reset", 0) != 1:
            raise ExportError(
                f"GRU node {node.name!r} has linear_before_reset={attrs.get('linear_before_reset', 0)}; "
                "onnxruntime would compute a different cell than torch"
            )
    return count


def parity_error(
    model: Forecaster, graph: onnx.ModelProto, *, steps: int = 24, batch: int = 5, seed: int = 0
) -> float:
    """Max abs difference of forecasts and states, torch vs onnxruntime, stepping one reading
    at a time at batch 1 and at batch `batch`; also against torch's one-pass run of the series."""
    model.eval()
    specs = model.state_specs()
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for b in (1, batch):
        x = rng.standard_normal((b, steps, model.config.n_features)).astype(np.float32)
        t_states = model.init_states(b)
        o_states = [s.numpy() for s in t_states]
        with torch.no_grad():
            whole = model(torch.from_numpy(x), *model.init_states(b))[0].numpy()
            for k in range(steps):
                y_t, *t_states = model(torch.from_numpy(x[:, k : k + 1]), *t_states)
                feeds = {
                    INPUT_NAME: x[:, k : k + 1],
                    **{s.name: v for s, v in zip(specs, o_states, strict=True)},
                }
                y_o, *o_states = session.run(None, feeds)
                worst = max(worst, float(np.abs(y_o - y_t.numpy()).max()))
                worst = max(worst, float(np.abs(y_o[:, 0] - whole[:, k]).max()))
                for a, t in zip(o_states, t_states, strict=True):
                    worst = max(worst, float(np.abs(a - t.numpy()).max()))
    if not worst <= PARITY_TOLERANCE:
        raise ExportError(
            f"onnxruntime differs from torch by {worst:.3g} (tolerance {PARITY_TOLERANCE})"
        )
    return worst


def golden_vectors(
    model: Forecaster,
    graph: onnx.ModelProto,
    scaler: ScalerSet,
    series: list[Series],
    splits: Splits,
    *,
    rows: int = 3,
    steps: int = 16,
    encoder: InputEncoder | None = None,
) -> GoldenVectors:
    """Golden test vectors for the card: `rows` windows of `steps` readings of the training
    part, with the forecasts and final states torch computes for them.

    Row 0 is the first readings of the first stream, from the initial state (the service's
    cold start); the others are windows further into the training part of the next streams
    (the last ends where the training part ends), each starting from the state torch
    reached over the stream's earlier readings. The tolerance is max(GOLDEN_FLOOR,
    GOLDEN_MARGIN x onnxruntime's error on the same vectors, stepping as the service does);
    raises `ExportError` when that error is above GOLDEN_FLOOR. `encoder` is the card's
    (None: inputs are the features), with which the check computes the inputs from the
    vectors' readings, as the service does.
    """
    model.eval()
    parts = [_Part.train(s, splits) for s in series]
    parts = [p for p in parts if len(p.ts)]
    if not parts:
        raise ExportError("no training readings to take the golden vectors from")
    steps = min(steps, max(len(p.ts) for p in parts))
    parts = [p for p in parts if len(p.ts) >= steps]
    specs = model.state_specs()
    windows, state_rows = [], []
    with torch.no_grad():
        for i in range(rows):
            part = parts[i % len(parts)]
            start = 0 if i == 0 else round(i / max(rows - 1, 1) * (len(part.ts) - steps))
            states = model.init_states(1)
            if start:
                prefix = _scaled(scaler, part.inputs[:start])
                _, *states = model(torch.from_numpy(prefix[None]), *states)
            windows.append(part.window(start, steps))
            state_rows.append([s.numpy() for s in states])
        x = np.stack([w.values for w in windows]).astype(np.float32)
        ts = np.stack([w.ts for w in windows])
        inputs = np.stack([w.inputs for w in windows])
        states_in = [
            np.concatenate([r[k] for r in state_rows], axis=spec.batch_axis)
            for k, spec in enumerate(specs)
        ]
        y, *states_out = model(
            torch.from_numpy(_scaled(scaler, inputs)), *(torch.from_numpy(s) for s in states_in)
        )
    mean = np.asarray(scaler.targets.mean, np.float64)
    std = np.asarray(scaler.targets.std, np.float64)
    golden = GoldenVectors(
        x=GoldenTensor.of(x),
        ts=GoldenTensor.of(ts) if encoder is not None and encoder.needs_ts else None,
        states=[GoldenTensor.of(s) for s in states_in],
        y=GoldenTensor.of(y.numpy().astype(np.float64) * std + mean),
        states_out=[GoldenTensor.of(s.numpy()) for s in states_out],
        tolerance=GOLDEN_FLOOR,
        reference=f"torch {torch.__version__}",
    )
    # Real readings reach further than the parity check's random ones (a fault spike is
    # many stds out); onnxruntime must still agree to the floor every graph is held to.
    error = golden.max_error(
        scaler,
        _onnx_step(graph, specs),
        None if encoder is None or encoder.identity else encoder.encode,
    )
    if not error <= GOLDEN_FLOOR:
        raise ExportError(
            f"onnxruntime differs from torch by {error:.3g} on readings of the training data "
            f"(tolerance {GOLDEN_FLOOR})"
        )
    return golden.model_copy(update={"tolerance": max(GOLDEN_FLOOR, GOLDEN_MARGIN * error)})


@dataclass(frozen=True)
class _Part:
    """Readings of one stream: raw values, their timestamps, the model's inputs."""

    values: np.ndarray
    ts: np.ndarray
    inputs: np.ndarray

    @classmethod
    def train(cls, series: Series, splits: Splits) -> _Part:
        """The training part of `series`."""
        keep = splits.part(series.ts, "train")
        return cls(series.values[keep], series.ts[keep], series.inputs[keep])

    def window(self, start: int, steps: int) -> _Part:
        """`steps` readings from `start`."""
        cut = slice(start, start + steps)
        return _Part(self.values[cut], self.ts[cut], self.inputs[cut])


def feature_ranges(dataset: Dataset, splits: Splits) -> list[tuple[float, float]]:
    """Each feature's observed (min, max) over the training part, in card order."""
    table = dataset.table
    rows = table[splits.part(table["ts"].to_numpy(), "train")]
    if rows.empty:
        raise ExportError("no training readings to take the feature ranges from")
    values = rows[dataset.features].to_numpy(np.float64)
    return [
        (float(lo), float(hi))
        for lo, hi in zip(np.nanmin(values, axis=0), np.nanmax(values, axis=0), strict=True)
    ]


def build_card(
    *,
    model: Forecaster,
    name: str,
    version: str,
    description: str,
    features: list[str],
    targets: list[str],
    period: float,
    scaler: Any,
    derived: DerivedInputs | None = None,
    warmup_steps: int,
    data: str,
    fingerprint: str,
    splits: dict[str, Any],
    config: dict[str, Any],
    seed: int,
    metrics: dict[str, float],
    parity: float,
    golden: GoldenVectors | None = None,
    ranges: list[tuple[float, float]] | None = None,
) -> ModelCard:
    return ModelCard(
        name=name,
        version=version,
        kind=model.config.kind,
        head=model.config.head,
        description=description,
        features=features,
        derived=derived or DerivedInputs(),
        targets=targets,
        horizon=model.config.horizon,
        period=period,
        scaler=scaler,
        states=model.state_specs(),
        warmup_steps=warmup_steps,
        provenance=Provenance(
            data=data,
            data_fingerprint=fingerprint,
            splits=splits,
            config=config,
            seed=seed,
            packages=_package_versions(),
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        ),
        metrics=metrics,
        parity_error=parity,
        golden=golden,
        feature_ranges=ranges,
    )


def save_model(card: ModelCard, graph: onnx.ModelProto, model: Forecaster, directory: Path) -> None:
    """Write the graph (card embedded), ``card.json`` and the torch checkpoint into
    `directory`, a folder from `Registry.stage`."""
    write_model(card, graph, directory)
    torch.save(
        {
            "model_config": model.config.to_dict(),
            "state_dict": model.state_dict(),
            "train_config": card.provenance.config,
        },
        Path(directory) / CHECKPOINT_FILE,
    )


def _scaled(scaler: ScalerSet, raw: np.ndarray) -> np.ndarray:
    """Model inputs scaled as the service scales them (float32)."""
    return np.asarray(scaler.features.transform(np.asarray(raw, np.float32)), np.float32)


def _onnx_step(graph: onnx.ModelProto, specs: list[StateSpec]) -> StepFunction:
    """The graph's step signature, run by onnxruntime."""
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [OUTPUT_NAME, *(s.output_name for s in specs)]

    def step(x: np.ndarray, states: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {INPUT_NAME: x, **{s.name: v for s, v in zip(specs, states, strict=True)}}
        y, *out = session.run(names, feeds)
        return y, out

    return step


def _package_versions() -> dict[str, str]:
    out = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out
