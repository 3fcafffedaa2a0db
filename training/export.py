"""Export a trained forecaster as an ONNX step model, check it, and add it to the registry.

The order is fixed: export the graph, check every GRU node computes the reset gate the way
torch does (``linear_before_reset=1``), step both torch and onnxruntime one reading at a
time at batch 1 and at batch N and compare (max abs error <= 1e-5), then build the card with
the measured parity error, and write ``model.onnx`` + ``card.json`` through the registry,
with ``checkpoint.pt``, the report and the plots beside them.
"""

from __future__ import annotations

import io
import warnings
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.modelcard import INPUT_NAME, OUTPUT_NAME, ModelCard, Provenance
from service.registry import ModelRef, Registry
from training.errors import ExportError
from training.models import Forecaster
from training.predict import CHECKPOINT_FILE

__all__ = [
    "OPSET",
    "PARITY_TOLERANCE",
    "build_card",
    "check_gru_nodes",
    "export_onnx",
    "parity_error",
    "save_model",
]

OPSET = 17
PARITY_TOLERANCE = 1e-5
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
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer warns about batch_first RNNs and shape arithmetic it handles correctly.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            buffer,
            input_names=[INPUT_NAME, *(s.name for s in specs)],
            output_names=[OUTPUT_NAME, *(s.output_name for s in specs)],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load_model_from_string(buffer.getvalue())
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
    warmup_steps: int,
    data: str,
    fingerprint: str,
    splits: dict[str, Any],
    config: dict[str, Any],
    seed: int,
    metrics: dict[str, float],
    parity: float,
) -> ModelCard:
    return ModelCard(
        name=name,
        version=version,
        kind=model.config.kind,
        description=description,
        features=features,
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
    )


def save_model(
    card: ModelCard,
    graph: onnx.ModelProto,
    model: Forecaster,
    registry_root: Path,
    *,
    overwrite: bool = False,
) -> ModelRef:
    """Add the graph and card to the registry and save the torch checkpoint beside them."""
    ref = Registry(registry_root).add(card, graph, overwrite=overwrite)
    torch.save(
        {
            "model_config": model.config.to_dict(),
            "state_dict": model.state_dict(),
            "train_config": card.provenance.config,
        },
        ref.directory / CHECKPOINT_FILE,
    )
    return ref


def _package_versions() -> dict[str, str]:
    out = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out
