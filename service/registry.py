"""The model registry: ``models/<name>/<version>/{model.onnx, card.json}``.

Versions are strings ordered part by part (``1.10`` after ``1.9``; numeric parts before
text parts), and ``latest`` resolves to the highest. A model spec on the command line is
``name`` or ``name:version``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import onnx

from service.errors import ModelCardError, RegistryError
from service.modelcard import CARD_FILE, MODEL_FILE, ModelCard, validate_onnx

__all__ = ["LATEST", "LoadedModel", "ModelRef", "Registry", "parse_model_spec", "version_key"]

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
        return self.directory / MODEL_FILE

    @property
    def card_path(self) -> Path:
        return self.directory / CARD_FILE

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class LoadedModel:
    """A card with its validated ONNX graph, serialised (what onnxruntime takes)."""

    ref: ModelRef
    card: ModelCard
    onnx_bytes: bytes


class Registry:
    """A folder of models, each a folder of versions."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        """Versions of `name` that hold a model file, lowest first."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if (p / MODEL_FILE).is_file()]
        return sorted(found, key=version_key)

    def resolve(self, name: str, version: str = LATEST) -> ModelRef:
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
        return self.resolve(*parse_model_spec(spec))

    def load(self, name: str, version: str = LATEST) -> LoadedModel:
        """Resolve, read the card and the graph, and check they agree with each other."""
        ref = self.resolve(name, version)
        return load_model_dir(ref)

    def add(self, card: ModelCard, model: onnx.ModelProto, *, overwrite: bool = False) -> ModelRef:
        """Write `model` (with `card` embedded) and ``card.json`` as ``<name>/<version>/``."""
        validate_onnx(card, model)
        directory = self.root / card.name / card.version
        if (directory / MODEL_FILE).exists() and not overwrite:
            raise RegistryError(
                f"{card.ref} already exists in {self.root}; choose another version or pass --overwrite"
            )
        directory.mkdir(parents=True, exist_ok=True)
        card.embed(model)
        onnx.save_model(model, directory / MODEL_FILE)
        card.write(directory)
        return ModelRef(card.name, card.version, directory)


def load_model_dir(ref: ModelRef) -> LoadedModel:
    """Load one model folder, checking the card, the embedded card and the graph agree."""
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
    return LoadedModel(ref, card, data)
