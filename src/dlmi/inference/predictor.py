"""One interface over the two backends: the exported ONNX files (onnxruntime) or the checkpoints (PyTorch).

A predictor takes float32 batches (N,1,H,W) in 0–1 and returns probabilities as numpy arrays:
``classify`` → (N,K), ``segment`` → (N,1,H,W), ``two_stage`` → (class probs, mask probs, gated). Both
backends run the same modules (:mod:`dlmi.runtime.graphs`, :class:`dlmi.runtime.two_stage.TwoStage`), so
their outputs agree to float rounding: the class probabilities temperature-scaled
(:mod:`dlmi.runtime.calibration`), and, through ``classify_uncertain`` / ``two_stage_uncertain``, the
per-image ``uncertainty`` and ``mask_disagreement`` (:mod:`dlmi.runtime.uncertainty`; ``None`` from an
export older than them).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlmi.datasets.base import normal_index
from dlmi.digest import file_digest
from dlmi.errors import DlmiError
from dlmi.runtime.gating import Gate
from dlmi.runtime.providers import clamp_threads, open_session, torch_device

BACKENDS = ("onnx", "torch")


def check_threshold(threshold: float | None, option: str = "--threshold") -> float | None:
    """A lesion threshold the user gave (``dlmi predict --threshold``, ``load_predictor(threshold=)``),
    checked: a probability from 0 to 1. A pixel is lesion where its probability is above it, so 1 means
    nothing is lesion. ``None`` (the segmenter's own threshold) passes."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:  # also refuses NaN
        raise DlmiError(f"{option} must be between 0 and 1 (a probability; 1: nothing is lesion), "
                        f"got {threshold}")
    return threshold


@dataclass
class ModelInfo:
    """What the loaded models need from the images and what they say."""

    classes: list[str] = field(default_factory=list)
    normal_class: str | None = None
    classifier_size: int | None = None
    segmenter_size: int | None = None
    threshold: float = 0.5
    sources: dict[str, str] = field(default_factory=dict)
    normal_threshold: float | None = None  # an ensemble's gate: P(normal) at least this (None: arg-max)
    min_lesion_pixels: int = 0  # an ensemble's gate: fewer lesion pixels (at the model's size) is normal
    temperature: float = 1.0  # the class head's, applied inside the models (dlmi.runtime.calibration)
    dataset: str | None = None  # the dataset the models were trained on (the DICOM SEG's segment codes)

    @property
    def normal_index(self) -> int | None:
        return normal_index(self.classes, self.normal_class)

    def gate(self) -> Gate:
        """The gate these models apply (:class:`dlmi.runtime.gating.Gate`); needs a normal class."""
        if self.normal_index is None:
            raise DlmiError(f"the classifier has no normal class (classes {self.classes}) to gate with")
        return Gate(self.normal_index, self.normal_threshold, self.min_lesion_pixels, self.threshold)


class Predictor(ABC):
    """Runs the classifier, the segmenter, or the two-stage pipeline on numpy batches."""

    backend: str
    info: ModelInfo

    @property
    @abstractmethod
    def running_on(self) -> str:
        """Where the computation actually runs (onnxruntime's session providers, or the torch device)."""

    def classify(self, images: np.ndarray) -> np.ndarray:
        """(N,1,Sc,Sc) → class probabilities (N,K)."""
        return self.classify_uncertain(images)[0]

    @abstractmethod
    def classify_uncertain(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N,1,Sc,Sc) → class probabilities (N,K), uncertainty (N,) (``None``: the file has none)."""

    @abstractmethod
    def segment(self, images: np.ndarray) -> np.ndarray:
        """(N,1,H,W) → lesion probabilities (N,1,H,W)."""

    def two_stage(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N,1,S,S) at the segmenter's size → class probs (N,K), gated mask probs (N,1,S,S), gated (N,)."""
        return self.two_stage_uncertain(images)[:3]  # type: ignore[return-value]

    @abstractmethod
    def two_stage_uncertain(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                 np.ndarray | None, np.ndarray | None]:
        """:meth:`two_stage` and the uncertainty (N,) and mask disagreement (N,) (``None``: the file has
        none)."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies these models' outputs (backend and file digests), to tell a re-run's settings."""


def _check_modes(info: ModelInfo, where: str, *, aided: bool) -> None:
    if info.segmenter_size is None and (aided or info.classifier_size is None):
        raise DlmiError(f"{where}: no segmenter (U-Net) to predict masks with")
    if aided and info.classifier_size is None:
        raise DlmiError(f"{where}: --aided needs a classifier as well as the U-Net")
    if aided and info.normal_index is None:
        raise DlmiError(f"{where}: the classifier has no normal class (classes {info.classes}) to gate with")


# --- onnxruntime ---------------------------------------------------------------------------------------


class OnnxPredictor(Predictor):
    """An export folder's files (``classifier.onnx``, ``unet.onnx``, ``two_stage.onnx``) in onnxruntime."""

    backend = "onnx"

    def __init__(self, folder: str | os.PathLike[str], *, provider: str = "auto", aided: bool = False,
                 tile: bool = False, threads: int | None = None, precision: str = "fp32") -> None:
        from dlmi.export.files import file_name
        from dlmi.export.metadata import CLASSIFIER, SEGMENTER, TWO_STAGE, read_checked_metadata

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DlmiError(f"{self.folder}: no such folder of exported models; write one with "
                            f"`dlmi export onnx --classifier RUN --segmenter RUN --out {self.folder}`")
        if aided:
            needed = [CLASSIFIER, SEGMENTER] if tile else [TWO_STAGE]
        elif tile or (self.folder / file_name(SEGMENTER, precision)).is_file():
            needed = [SEGMENTER]
        elif (self.folder / file_name(CLASSIFIER, precision)).is_file():
            needed = [CLASSIFIER]  # a classifier alone: classes and probabilities, no masks
        else:
            raise DlmiError(
                f"{self.folder / file_name(SEGMENTER, precision)}: not found, and no "
                f"{file_name(CLASSIFIER, precision)} either; write them with `dlmi export onnx "
                "--segmenter RUN` (masks) or `--classifier RUN` (classes)"
            )
        self.paths = {kind: self.folder / file_name(kind, precision) for kind in needed}
        for path in self.paths.values():
            if not path.is_file():
                mode = ("--aided --tile" if tile else "--aided") if aided else "prediction without --aided"
                sources = "--classifier RUN --segmenter RUN" if aided else "--segmenter RUN"
                flag = {"fp16": " --fp16", "int8": " --int8"}.get(precision, "")
                raise DlmiError(
                    f"{path}: not found; {mode} needs it (write it with `dlmi export onnx {sources}{flag}`)"
                )
        checked = {kind: read_checked_metadata(path, kind) for kind, path in self.paths.items()}
        with_classes = [c for c in checked.values() if c.classes]
        with_masks = [c for c in checked.values() if c.segmenter_size is not None]
        self.info = ModelInfo(
            classes=with_classes[0].classes if with_classes else [],
            normal_class=with_classes[0].normal_class if with_classes else None,
            classifier_size=next((c.classifier_size for c in checked.values() if c.classifier_size), None),
            segmenter_size=with_masks[0].segmenter_size if with_masks else None,
            threshold=float(with_masks[0].threshold) if with_masks else 0.5,
            sources={k: str(p) for k, p in self.paths.items()},
            normal_threshold=next((c.normal_threshold for c in with_classes
                                   if c.normal_threshold is not None), None),
            min_lesion_pixels=max((c.min_lesion_pixels for c in with_masks), default=0),
            temperature=with_classes[0].temperature if with_classes else 1.0,
        )
        _check_modes(self.info, str(self.folder), aided=aided)
        self.optional_outputs = {kind: c.optional_outputs for kind, c in checked.items()}
        self.sessions = {kind: open_session(path, provider, threads) for kind, path in self.paths.items()}

    @property
    def running_on(self) -> str:
        providers = sorted({s.get_providers()[0] for s in self.sessions.values()})
        return "onnxruntime " + ", ".join(providers)

    def _run(self, kind: str, images: np.ndarray, outputs: Sequence[str]) -> list[np.ndarray]:
        session = self.sessions.get(kind)
        if session is None:
            raise DlmiError(f"{self.folder}: this predictor was not opened for {kind}")
        return session.run(list(outputs), {"image": np.ascontiguousarray(images, dtype=np.float32)})

    def _optional(self, kind: str) -> list[str]:
        return list(self.optional_outputs.get(kind, ()))

    def classify_uncertain(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        from dlmi.export.metadata import CLASSIFIER

        outputs = self._run(CLASSIFIER, images, ["probs", *self._optional(CLASSIFIER)])
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def segment(self, images: np.ndarray) -> np.ndarray:
        from dlmi.export.metadata import SEGMENTER

        return self._run(SEGMENTER, images, ["probs"])[0]

    def two_stage_uncertain(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                 np.ndarray | None, np.ndarray | None]:
        from dlmi.export.metadata import EXPECTED_OUTPUTS, TWO_STAGE

        names = [*EXPECTED_OUTPUTS[TWO_STAGE], *self._optional(TWO_STAGE)]
        found = dict(zip(names, self._run(TWO_STAGE, images, names), strict=True))
        return (found["class_probs"], found["mask_probs"], found["gated"].astype(bool),
                found.get("uncertainty"), found.get("mask_disagreement"))

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.backend, "files": {p.name: file_digest(p) for p in self.paths.values()}}


# --- PyTorch -------------------------------------------------------------------------------------------


def _manifest_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints an export folder's ``export.json`` names; one line on a malformed file."""
    from dlmi.export.metadata import EXPORT_MANIFEST, read_manifest

    manifest = read_manifest(folder)
    where = folder / EXPORT_MANIFEST
    if not isinstance(manifest, dict):
        raise DlmiError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    checkpoints = []
    for role in ("classifier", "segmenter"):
        entry = manifest.get(role)
        if entry is None:
            continue
        checkpoint = entry.get("checkpoint") if isinstance(entry, dict) else None
        if not isinstance(checkpoint, str) or not checkpoint:
            raise DlmiError(f"{where}: {role!r} must be null or an object whose 'checkpoint' is a file path")
        checkpoints.append(Path(checkpoint))
    if not checkpoints:
        raise DlmiError(f"{where}: names no classifier or segmenter checkpoint")
    return checkpoints


def _torch_sources(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Checkpoints or run folders; an export folder stands for the checkpoints its ``export.json`` names
    (a joint model's export names its one checkpoint twice, as classifier and segmenter: once here)."""
    sources: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and (path / "export.json").is_file() and not (path / "best.pt").is_file():
            named = _manifest_checkpoints(path)
            sources += [c for i, c in enumerate(named) if c not in named[:i]]
        else:
            sources.append(path)
    return sources


CLASSIFIER_ROLE, SEGMENTER_ROLE = "classifier", "segmenter"


def _roles(trained: Any) -> tuple[str, ...]:
    """What a trained model serves as: a joint model (or an ensemble of them) is classifier and segmenter."""
    if trained.task == "joint":
        return (CLASSIFIER_ROLE, SEGMENTER_ROLE)
    return (CLASSIFIER_ROLE,) if trained.task == "classification" else (SEGMENTER_ROLE,)


def _files_of(trained: Any) -> dict[str, Path]:
    """The files a trained model's outputs depend on, by name: its checkpoint, and an ensemble's members'."""
    files = {trained.task: trained.checkpoint}
    for number, member in enumerate(getattr(trained, "members", [])):
        files[f"{trained.task} member {number}"] = member.checkpoint
    return files


class TorchPredictor(Predictor):
    """The PyTorch checkpoints (run folders, ensemble folders or ``.pt`` files) in eager mode,
    ``torch.inference_mode()``: a classifier and a segmenter, or one joint model (or ensemble)."""

    backend = "torch"

    def __init__(self, paths: Sequence[str | os.PathLike[str]], *, provider: str = "auto",
                 aided: bool = False, threads: int | None = None) -> None:
        import torch

        from dlmi.runtime.graphs import ClassifierGraph, JointOutput, SegmenterGraph
        from dlmi.runtime.pairing import check_pair
        from dlmi.runtime.trained import load_trained
        from dlmi.runtime.two_stage import build_pipeline

        self.device = torch_device(provider)
        if threads:
            torch.set_num_threads(int(threads))
        by_role: dict[str, Any] = {}
        for path in _torch_sources(paths):
            trained = load_trained(path, map_location="cpu")
            for role in _roles(trained):
                if role in by_role:
                    raise DlmiError(f"{trained.checkpoint}: a second {role}; give one classifier and one "
                                    f"segmenter, or one joint model (the first is "
                                    f"{by_role[role].checkpoint})")
                by_role[role] = trained
        cls, seg = by_role.get(CLASSIFIER_ROLE), by_role.get(SEGMENTER_ROLE)
        joint = seg is not None and seg.task == "joint"
        if cls is not None and seg is not None and cls is not seg:
            check_pair(cls.meta, seg.meta, classifier_name=str(cls.checkpoint),
                       segmenter_name=str(seg.checkpoint))
        loaded = list({id(t): t for t in by_role.values()}.values())
        self.files = {name: path for t in loaded for name, path in _files_of(t).items()}
        self.checkpoints = {t.task: t.checkpoint for t in loaded}
        gate_meta = seg.meta if joint else {}
        self.info = ModelInfo(
            classes=cls.classes if cls else [],
            normal_class=cls.meta.get("normal_class") if cls else None,
            classifier_size=cls.image_size if cls else None,
            segmenter_size=seg.image_size if seg else None,
            threshold=seg.threshold if seg else 0.5,
            sources={t.task: str(t.checkpoint) for t in loaded},
            normal_threshold=gate_meta.get("normal_threshold"),
            min_lesion_pixels=int(gate_meta.get("min_lesion_pixels") or 0),
            temperature=cls.temperature if cls else 1.0,
            dataset=(seg or cls).meta.get("dataset") if (seg or cls) else None,
        )
        where = ", ".join(str(p) for p in paths) or "--models"
        _check_modes(self.info, where, aided=aided)

        def net(trained: Any, output: int) -> Any:
            return JointOutput(trained.model, output) if trained.task == "joint" else trained.model

        self.classifier = self.segmenter = None
        if cls is not None:
            self.classifier = ClassifierGraph(net(cls, JointOutput.CLASSES), temperature=cls.temperature,
                                              reference=cls.normal_index).to(self.device).eval()
        if seg is not None:
            self.segmenter = SegmenterGraph(net(seg, JointOutput.MASK)).to(self.device).eval()
        self.pipeline = None
        if seg is not None and (joint or cls is not None) and self.info.normal_index is not None:
            self.pipeline = build_pipeline(seg, None if joint else cls)
            self.pipeline = self.pipeline.to(self.device).eval() if self.pipeline is not None else None

    @property
    def running_on(self) -> str:
        return f"torch {self.device}"

    def _run(self, module: Any, images: np.ndarray) -> list[np.ndarray]:
        import torch

        if module is None:
            raise DlmiError("the loaded checkpoints do not include the model this prediction needs")
        with torch.inference_mode():
            outputs = module(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device))
        return [o.cpu().numpy() for o in outputs]

    def classify_uncertain(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        _, probs, uncertainty = self._run(self.classifier, images)
        return probs, uncertainty

    def segment(self, images: np.ndarray) -> np.ndarray:
        return self._run(self.segmenter, images)[1]

    def two_stage_uncertain(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                 np.ndarray | None, np.ndarray | None]:
        probs, masks, gated, uncertainty, disagreement = self._run(self.pipeline, images)
        return probs, masks, gated.astype(bool), uncertainty, disagreement

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.backend, "files": {name: file_digest(p) for name, p in self.files.items()}}


def open_predictor(
    models: Sequence[str | os.PathLike[str]],
    *,
    backend: str = "onnx",
    provider: str = "auto",
    aided: bool = False,
    tile: bool = False,
    threads: int | None = None,
    fp16: bool = False,
    int8: bool = False,
) -> Predictor:
    """A predictor for ``models``: one export folder (``onnx``; its ``*_fp16.onnx`` files with ``fp16``, its
    ``*_int8.onnx`` files with ``int8``), or run folders / checkpoints / an export folder whose
    ``export.json`` names its checkpoints (``torch``)."""
    if fp16 and int8:
        raise DlmiError("--fp16 and --int8 choose different files: give one of them")
    threads = clamp_threads(threads)
    if backend not in BACKENDS:
        raise DlmiError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    models = list(models) or ["exported"]
    if backend == "onnx":
        if len(models) != 1:
            raise DlmiError(f"--backend onnx takes one --models folder (the export's), got {len(models)}")
        return OnnxPredictor(models[0], provider=provider, aided=aided, tile=tile, threads=threads,
                             precision="fp16" if fp16 else "int8" if int8 else "fp32")
    if fp16 or int8:
        flag = "--fp16" if fp16 else "--int8"
        raise DlmiError(f"{flag} runs the exported *_{flag[2:]}.onnx files: it needs --backend onnx")
    return TorchPredictor(models, provider=provider, aided=aided, threads=threads)
