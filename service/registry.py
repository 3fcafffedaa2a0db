"""The model registry: ``models/<name>/<version>/{model.onnx, card.json}``.

Versions are strings ordered part by part (``1.10`` after ``1.9``; numeric parts before
text parts), and ``latest`` resolves to the highest. A model spec on the command line is
``name`` or ``name:version``.

A model folder appears whole or not at all: `Registry.stage` assembles it in a hidden
sibling folder (``.<version>.tmp-<random>``) and renames it into place once everything is
written; a failure at any step removes it. Folders whose names start with a dot are never
models, so listings and ``latest`` skip them.

Loading checks that ``card.json``, the card embedded in the graph and the graph agree, that
the graph honours the step-model contract, and that it reproduces the card's golden vectors.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from service.errors import (
    InferenceError,
    ModelCardError,
    ModelContractError,
    RegistryError,
    SensorcastError,
)
from service.modelcard import CARD_FILE, MODEL_FILE, ModelCard, validate_onnx

__all__ = [
    "LATEST",
    "LoadedModel",
    "ModelRef",
    "Registry",
    "SurveyEntry",
    "check_golden",
    "load_model_dir",
    "parse_model_spec",
    "version_key",
    "write_model",
]

log = logging.getLogger(__name__)

LATEST = "latest"


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key: numeric parts compare as numbers and sort before text parts."""
    parts = re.split(r"[.\-_+]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``"sensors-demo"`` -> (name, "latest"); ``"sensors-demo:2"`` -> (name, "2")."""
    name, _, version = spec.partition(":")
    if not name:
        raise RegistryError(f"model spec {spec!r} has no name; use NAME or NAME:VERSION")
    return name, version or LATEST


@dataclass(frozen=True)
class ModelRef:
    """Where one version of a model lives."""

    name: str
    version: str
    directory: Path

    @property
    def onnx_path(self) -> Path:
        """The version's ONNX graph file."""
        return self.directory / MODEL_FILE

    @property
    def card_path(self) -> Path:
        """The version's model card file."""
        return self.directory / CARD_FILE

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class LoadedModel:
    """A card with its validated ONNX graph, serialised (what onnxruntime takes).

    `golden_error` is the graph's largest error on the card's golden vectors, None when the
    card has none (the graph is then unchecked).
    """

    ref: ModelRef
    card: ModelCard
    onnx_bytes: bytes
    golden_error: float | None = None


@dataclass(frozen=True)
class SurveyEntry:
    """One version folder as `Registry.survey` found it: loaded, or the reason it cannot be."""

    ref: ModelRef
    loaded: LoadedModel | None
    problem: str | None


def _visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders that can be models or versions: dot-folders are staging and trash."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]


class Registry:
    """A folder of models, each a folder of versions."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        """Names of the models with at least one version, sorted."""
        return sorted(p.name for p in _visible_dirs(self.root) if self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        """Versions of `name` that hold a model file, lowest first."""
        found = [p.name for p in _visible_dirs(self.root / name) if (p / MODEL_FILE).is_file()]
        return sorted(found, key=version_key)

    def resolve(self, name: str, version: str = LATEST) -> ModelRef:
        """Where `name` at `version` (`LATEST`: the highest) lives; raises `RegistryError`
        naming what the registry holds when there is no such model or version.
        """
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise RegistryError(
                f"no model {name!r} in registry {self.root} (models there: {known})"
            )
        if version == LATEST:
            version = versions[-1]
        elif version not in versions:
            raise RegistryError(
                f"model {name!r} has no version {version!r} in {self.root} "
                f"(versions: {', '.join(versions)})"
            )
        return ModelRef(name, version, self.root / name / version)

    def resolve_spec(self, spec: str) -> ModelRef:
        """`resolve` a ``NAME`` or ``NAME:VERSION`` spec; raises `RegistryError` as it does."""
        return self.resolve(*parse_model_spec(spec))

    def load(self, name: str, version: str = LATEST) -> LoadedModel:
        """Resolve, read the card and the graph, and check they agree with each other."""
        ref = self.resolve(name, version)
        return load_model_dir(ref)

    def survey(self) -> list[SurveyEntry]:
        """Every version folder holding a model file or a card, each loaded and checked.

        A folder that fails is listed with the reason and never stops the others.
        """
        entries = []
        for folder in sorted(_visible_dirs(self.root)):
            found = [
                p
                for p in _visible_dirs(folder)
                if (p / MODEL_FILE).exists() or (p / CARD_FILE).exists()
            ]
            for directory in sorted(found, key=lambda p: version_key(p.name)):
                ref = ModelRef(folder.name, directory.name, directory)
                try:
                    entries.append(SurveyEntry(ref, load_model_dir(ref), None))
                except SensorcastError as exc:
                    entries.append(SurveyEntry(ref, None, str(exc)))
        return entries

    def add(self, card: ModelCard, model: onnx.ModelProto, *, overwrite: bool = False) -> ModelRef:
        """Write `model` (with `card` embedded) and ``card.json`` as ``<name>/<version>/``,
        whole or not at all (see `stage`)."""
        with self.stage(card.name, card.version, overwrite=overwrite) as folder:
            write_model(card, model, folder)
        return ModelRef(card.name, card.version, self.root / card.name / card.version)

    @contextlib.contextmanager
    def stage(self, name: str, version: str, *, overwrite: bool = False) -> Iterator[Path]:
        """Yield an empty hidden folder beside ``<name>/<version>/`` to assemble a model in.

        When the block ends, the folder is renamed to ``<name>/<version>`` (replacing the
        old one when `overwrite`); if the block or the rename raises, the folder is removed
        with everything in it, so nothing half-written is ever listed. Raises
        `RegistryError` before the block runs when the version exists and `overwrite` is
        false.
        """
        target = self.root / name / version
        if not overwrite and _occupied(target):
            raise RegistryError(
                f"{name}:{version} already exists in {self.root}; "
                "choose another version or pass --overwrite"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{version}.tmp-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            yield staging
            _publish(staging, target, overwrite=overwrite)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                target.parent.rmdir()  # only when empty: a new name leaves no folder behind
            raise


def _occupied(directory: Path) -> bool:
    return directory.is_dir() and any(directory.iterdir())


def _publish(staging: Path, target: Path, *, overwrite: bool) -> None:
    """Rename `staging` to `target`; an old `target` is moved aside first and removed after."""
    if _occupied(target):
        if not overwrite:
            raise RegistryError(
                f"{target} appeared while the model was being written; "
                "choose another version or pass --overwrite"
            )
        old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
        target.rename(old)
        try:
            staging.rename(target)
        except OSError:
            old.rename(target)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    staging.replace(target)  # an empty folder in the way is replaced


def write_model(card: ModelCard, model: onnx.ModelProto, directory: Path) -> None:
    """Check `model` against `card` (the contract and the golden vectors), embed the card
    and write ``model.onnx`` and ``card.json`` into `directory`."""
    validate_onnx(card, model)
    card.embed(model)
    data = model.SerializeToString()
    check_golden(card, data)
    (Path(directory) / MODEL_FILE).write_bytes(data)
    card.write(Path(directory))


def check_golden(card: ModelCard, onnx_bytes: bytes) -> float | None:
    """Run the graph on the card's golden vectors, in one call and one reading at a time.

    Returns the largest error, or None when the card has no golden vectors. Raises
    `ModelContractError` when the graph does not reproduce them within the card's tolerance.
    """
    golden = card.golden
    if golden is None:
        return None
    # Imported here: service.core.model imports this module (for LoadedModel).
    from service.core.inputs import InputEncoder
    from service.core.model import OnnxStepModel

    model = OnnxStepModel(card, onnx_bytes)
    encode = None if card.derived.empty else InputEncoder(card.features, card.derived).encode
    try:
        error = golden.max_error(card.scaler, model.step, encode)
    except InferenceError as exc:
        raise ModelContractError(
            f"{card.ref}: the graph fails on its golden vectors: {exc}"
        ) from exc
    if not error <= golden.tolerance:
        raise ModelContractError(
            f"{card.ref}: the graph does not reproduce the golden vectors in its card "
            f"(max abs error {error:.3g}, tolerance {golden.tolerance:.3g}, scaled units): it "
            "computes something other than what was exported and tested; re-export the model "
            "with `sensorcast export` (or restore the model.onnx and card.json written together)"
        )
    return error


def load_model_dir(ref: ModelRef) -> LoadedModel:
    """Load one model folder, checking the card, the embedded card and the graph agree, and
    that the graph reproduces the card's golden vectors."""
    card = ModelCard.read(ref.card_path)
    try:
        data = ref.onnx_path.read_bytes()
        model = onnx.load_model_from_string(data)
    except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError, Exception) as exc:
        raise ModelCardError(f"{ref.onnx_path}: cannot read the ONNX model ({exc})") from exc
    embedded = ModelCard.from_onnx(model, source=str(ref.onnx_path))
    if embedded != card:
        raise ModelCardError(
            f"{ref.directory}: card.json and the card embedded in model.onnx differ; "
            "re-export the model or restore the matching card.json"
        )
    if (card.name, card.version) != (ref.name, ref.version):
        raise ModelCardError(
            f"{ref.directory}: the card says {card.ref} but the folder is {ref.name}/{ref.version}"
        )
    validate_onnx(card, model)
    error = check_golden(card, data)
    if error is None:
        log.warning(
            "model=%s has no golden vectors in its card: the graph is served unchecked; "
            "re-export it with `sensorcast export` to add them",
            card.ref,
        )
    return LoadedModel(ref, card, data, error)
