"""The trainer commands as functions: train (then evaluate and export), evaluate (re-score a
model on its own data and split, or score it on any period of any data), export."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from service.modelcard import ModelCard
from service.registry import ModelRef, Registry, write_model
from training.config import TrainConfig, load_config, load_saved_config
from training.data import Splits, parse_time
from training.errors import TrainingDataError
from training.evaluate import card_metrics, evaluate, write_report
from training.export import (
    build_card,
    check_gru_nodes,
    export_onnx,
    feature_ranges,
    golden_vectors,
    parity_error,
    save_model,
)
from training.models import Forecaster
from training.plots import plot_forecasts, plot_losses
from training.predict import CHECKPOINT_FILE, load_checkpoint, run_streams
from training.summary import when
from training.train import TrainResult, load_data, prepare_streams, resolve_splits, train

__all__ = ["REPORT_FILE", "evaluate_model", "export_model", "score_model", "train_and_export"]

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
# What a model folder holds beside model.onnx and card.json, made by the training run.
_RUN_FILES = (CHECKPOINT_FILE, REPORT_FILE, "loss.png", "forecast.png")


def train_and_export(
    config: TrainConfig, registry_root: Path, *, overwrite: bool = False, progress: bool = True
) -> ModelRef:
    """Train, score on the held-out parts, export with checks, and write the model folder
    (whole or not at all: it is assembled in the registry's staging folder)."""
    result = train(config, progress=progress)
    report = _report(result.model, result, config)
    if result.early_stopped is not None:
        # The honest validation score: the early-stopped model never trained on the val part.
        # After the refit the val period is in-sample, so the card reports this one instead.
        before = _report(result.early_stopped, result, config)
        report["before_refit"] = before["periods"]
        report["periods"].pop("val", None)
        if "val" in before["periods"]:
            report["periods"] = {"val": before["periods"]["val"], **report["periods"]}
            report["periods"]["val"]["note"] = "early-stopped model, before the refit on train+val"
    report["training"] = {
        "loss": _loss_name(config),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "refit_history": result.refit_history,
    }
    if result.loss_weights is not None:
        report["training"]["loss_weights"] = result.loss_weights.tolist()
    graph = export_onnx(result.model)
    check_gru_nodes(graph)
    parity = parity_error(result.model, graph)
    golden = golden_vectors(
        result.model,
        graph,
        result.scaler,
        result.dataset.series(),
        result.splits,
        encoder=result.dataset.encoder,
    )
    card = build_card(
        model=result.model,
        name=config.name,
        version=config.version,
        description=_describe(config, result),
        features=result.dataset.features,
        targets=result.dataset.targets,
        period=result.dataset.period,
        scaler=result.scaler,
        derived=result.dataset.derived,
        warmup_steps=_warmup(config, result.model),
        data=result.dataset.source,
        fingerprint=result.dataset.fingerprint,
        splits=result.splits.to_dict(),
        config=config.model_dump(mode="json"),
        seed=config.seed,
        metrics=card_metrics(report),
        parity=parity,
        golden=golden,
        ranges=feature_ranges(result.dataset, result.splits),
    )
    registry = Registry(registry_root)
    with registry.stage(card.name, card.version, overwrite=overwrite) as folder:
        save_model(card, graph, result.model, folder)
        _write_artifacts(folder, report, result, result.model, result.history)
    ref = registry.resolve(card.name, card.version)
    log.info("wrote %s to %s (parity error %.2g)", card.ref, ref.directory, parity)
    return ref


def evaluate_model(model_dir: Path) -> dict[str, Any]:
    """Re-score a saved model on the data and split recorded in its card; rewrite the report
    and the forecast plot. The report's ``training`` section (loss history, best epoch) and
    the loss plot are the training run's and are kept. The new files are written beside the
    folder first and each then replaces its old one, so a failure changes nothing."""
    card = ModelCard.read(model_dir)
    model, checkpoint = load_checkpoint(model_dir)
    config = load_saved_config(checkpoint["train_config"])
    result = _rebuild(config, card, model)
    report = _report(model, result, config)
    previous = model_dir / "report.json"
    if previous.is_file():
        with contextlib.suppress(ValueError, OSError, AttributeError):
            training = json.loads(previous.read_text()).get("training")
            if training is not None:
                report["training"] = training
    staging = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.evaluate-", dir=model_dir.parent))
    try:
        _write_artifacts(staging, report, result, model, None)
        for written in staging.iterdir():
            written.replace(model_dir / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def score_model(
    model_dir: Path,
    *,
    data_options: dict[str, Any] | None = None,
    test_start: str | float | None = None,
    test_end: str | float | None = None,
) -> dict[str, Any]:
    """Score a saved model on a period of any data, as training scores it; writes nothing.

    The data is loaded and checked as training loads it, with the card's data options
    overridden by `data_options` (``data``, ``sort``, ``fill``, ...) and the card's
    features and targets; the period is ``[test_start, test_end)`` (default: the card's test
    part; with only `test_start`, up to the end of the data). The torch model is rebuilt from
    checkpoint.pt (onnxruntime matches it to the card's parity error) and scaled with the
    card's scaler. The AR baseline is fitted on the model's training part of this data (none
    when the data lacks it); ARV divides by the training variance, taken from the card's
    scaler unless the data is the very table the model was trained on. The report holds the
    one period ``test`` and, under ``scored``, what was scored.
    """
    card = ModelCard.read(model_dir)
    model, checkpoint = load_checkpoint(model_dir)
    trained = load_saved_config(checkpoint["train_config"])
    config = load_config(
        {
            **trained.model_dump(),
            **(data_options or {}),
            "features": card.features,
            "targets": card.targets,
        }
    )
    dataset = load_data(config)
    recorded = card.provenance.splits
    splits = Splits(recorded["val_start"], recorded["test_start"], recorded["test_end"])
    start = splits.test_start if test_start is None else parse_time(test_start)
    end = parse_time(test_end) if test_end is not None else None
    if test_start is None and test_end is None:
        end = splits.test_end
    if end is not None and not start < end:
        raise TrainingDataError(
            f"the period must start before it ends, got {when(start)} to {when(end)}"
        )
    if start < splits.test_start:
        log.warning(
            "the scored period starts at %s, before the model's test part (%s): the model "
            "trained or was validated on part of it",
            when(start),
            when(splits.test_start),
        )
    same_data = dataset.fingerprint == card.provenance.data_fingerprint
    streams = prepare_streams(dataset.series(), dataset, card.scaler, card.horizon)
    report = evaluate(
        model,
        dataset,
        streams,
        splits,
        card.scaler,
        extra_tests={"scored": (start, end)},
        variance_until=trained.variance_until,
        ar_order=trained.ar_order,
        ar_with_val=trained.refit_epochs > 0,
        variance_from_scaler=not same_data,
    )
    if "scored" not in report["periods"]:
        ts = dataset.table["ts"]
        raise TrainingDataError(
            f"{dataset.source}: no forecast falls in {when(start)} to "
            f"{when(end) if end is not None else 'the end'}; the data runs from "
            f"{when(float(ts.min()))} to {when(float(ts.max()))}"
        )
    report["periods"] = {"test": report["periods"]["scored"]}
    report["scored"] = {
        "model": card.ref,
        "data": dataset.source,
        "data_fingerprint": dataset.fingerprint,
        "same_data_as_training": same_data,
    }
    return report


def export_model(
    model_dir: Path, registry_root: Path, *, name: str | None, version: str, overwrite: bool = False
) -> ModelRef:
    """Re-export a saved checkpoint (under a new name or version, or in place with
    `overwrite`), with all checks. The golden vectors and feature ranges are taken from the
    data recorded in the card; the checkpoint, report and plots are copied unchanged."""
    card = ModelCard.read(model_dir)
    model, checkpoint = load_checkpoint(model_dir)
    result = _rebuild(load_saved_config(checkpoint["train_config"]), card, model)
    graph = export_onnx(model)
    check_gru_nodes(graph)
    parity = parity_error(model, graph)
    golden = golden_vectors(model, graph, card.scaler, result.dataset.series(), result.splits)
    same_data = result.dataset.fingerprint == card.provenance.data_fingerprint
    fields = card.model_dump()
    fields.update(
        name=name or card.name,
        version=version,
        parity_error=parity,
        golden=golden.model_dump(),
        # Ranges from other data than the model was trained on would mislead: keep the card's.
        feature_ranges=feature_ranges(result.dataset, result.splits)
        if same_data
        else card.feature_ranges,
    )
    new_card = ModelCard.model_validate(fields)
    registry = Registry(registry_root)
    with registry.stage(new_card.name, new_card.version, overwrite=overwrite) as folder:
        write_model(new_card, graph, folder)
        for file in _RUN_FILES:
            if (model_dir / file).is_file():
                shutil.copy2(model_dir / file, folder / file)
    return registry.resolve(new_card.name, new_card.version)


# -- helpers ----------------------------------------------------------------------------------


def _report(model: Forecaster, result: TrainResult, config: TrainConfig) -> dict[str, Any]:
    return evaluate(
        model,
        result.dataset,
        result.streams,
        result.splits,
        result.scaler,
        extra_tests=config.extra_tests,
        variance_until=config.variance_until,
        ar_order=config.ar_order,
        ar_with_val=model is result.model and config.refit_epochs > 0,
    )


def _rebuild(config: TrainConfig, card: ModelCard, model: Forecaster) -> TrainResult:
    dataset = load_data(config)
    if dataset.fingerprint != card.provenance.data_fingerprint:
        log.warning("data fingerprint differs from the card's: the data changed since training")
    splits = resolve_splits(config, dataset)
    streams = prepare_streams(dataset.series(), dataset, card.scaler, config.horizon)
    return TrainResult(config, dataset, splits, card.scaler, model, streams)


def _loss_name(config: TrainConfig) -> str:
    name = {"mse": "MSE", "mae": "MAE", "huber": f"Huber (delta {config.huber_delta:g})"}[
        config.loss
    ]
    if config.loss_weights == "persistence":
        return f"{name} relative to persistence (per horizon step and target)"
    return f"{name} (scaled)"


def _warmup(config: TrainConfig, model: Forecaster) -> int:
    """Steps before a forecast is trusted: the burn-in, and for the tdnn a full lag buffer."""
    if model.config.kind == "tdnn":
        return max(config.burn_in, max(model.config.lags) - 1)
    return config.burn_in


def _describe(config: TrainConfig, result: TrainResult) -> str:
    shape = f"{config.layers}x{config.hidden}"
    return (
        f"{config.kind} {shape} on {result.dataset.source} "
        f"({len(result.streams)} stream(s)), horizon {config.horizon}"
    )


def _write_artifacts(
    directory: Path,
    report: dict[str, Any],
    result: TrainResult,
    model: Forecaster,
    history: list[dict[str, float]] | None,
) -> None:
    write_report(report, directory / "report.json")
    if history:
        plot_losses(
            history,
            directory / "loss.png",
            refit=result.refit_history,
            ylabel=_loss_name(result.config),
        )
    stream = result.streams[0]
    forecast = run_streams(model, [stream.x])[0]
    periods = {name: (p["from"], p["to"]) for name, p in report["periods"].items()}
    last = None if len(stream.ts) <= 1000 else 1000
    plot_forecasts(
        stream.ts,
        np.asarray(result.scaler.features.inverse(stream.x))[:, result.dataset.target_index],
        np.asarray(result.scaler.targets.inverse(forecast)),
        periods,
        directory / "forecast.png",
        title=f"{result.config.name} ({result.config.kind}): stream {stream.stream_id}",
        last_steps=last,
    )
