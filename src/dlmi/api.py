"""The notebook front door: the main job in a few calls, the same functions the ``dlmi`` commands run.

::

    import dlmi
    cls = dlmi.train_classifier(dataset="synthetic", image_size=64, epochs=1, out="runs/cls")
    seg = dlmi.train_segmenter(dataset="synthetic", image_size=32, base_channels=4, epochs=1, aid=cls,
                               out="runs/seg")
    report = dlmi.evaluate(seg)                       # report.lesion_dice.value / .low / .high
    dlmi.export_onnx(classifier=cls, segmenter=seg, out="exported")
    result = dlmi.load_predictor("exported", aided=True).predict(image)   # .mask, .probs, .gated

Paths may be ``str`` or :class:`pathlib.Path`; wherever a dataset name is taken, a
:class:`~dlmi.datasets.base.DatasetSource` object is accepted too (data in memory needs no plugin). Keyword
arguments mirror the command-line options; ``None`` means the command's default. Torch is imported when a
function runs, not when ``dlmi`` is imported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlmi.arguments import checked
from dlmi.errors import DlmiError

if TYPE_CHECKING:
    from dlmi.datasets.base import DatasetSource
    from dlmi.export.onnx_export import ExportReport
    from dlmi.inference.folder import PredictSummary
    from dlmi.inference.predictor import Predictor
    from dlmi.inference.shards import MergeSummary

PathLike = str | os.PathLike[str]

# The registry source recorded for a DatasetSource object handed to this module (``dlmi plugins`` shows it).
SESSION_SOURCE = "Python session (dlmi.api)"

CLASSIFICATION, SEGMENTATION, JOINT = "classification", "segmentation", "joint"
_COMMAND = {CLASSIFICATION: "classifier", SEGMENTATION: "segmenter", JOINT: "joint"}


# --- datasets --------------------------------------------------------------------------------------------


def dataset_name(dataset: str | DatasetSource) -> str:
    """The registered name to train on: ``dataset`` itself, or a DatasetSource object registered for it.

    A source object is registered under its ``name`` for this Python process (a later object of the same
    name replaces it). An object equal to what a plugin's name already builds is that name; any other
    object whose name a plugin holds is refused, naming the plugin.
    """
    if isinstance(dataset, str):
        return dataset
    from dlmi.datasets.base import DatasetSource
    from dlmi.plugins import get_plugins

    if not isinstance(dataset, DatasetSource):
        raise DlmiError(f"dataset must be a registered name or a DatasetSource object (name, classes, "
                        f"normal_class, has_masks, needs_data_dir, samples, load), "
                        f"got {type(dataset).__name__}")
    name = dataset.name
    if not isinstance(name, str) or not name:
        raise DlmiError(f"{type(dataset).__name__}: a DatasetSource needs a non-empty .name, got {name!r}")
    registry = get_plugins().datasets
    if name in registry:
        entry = registry.get(name)
        if entry.source == SESSION_SOURCE:
            registry.forget([name])
        elif _builds_the_same(entry.create, dataset):
            return name
        else:
            raise DlmiError(f"dataset {name!r} is registered by {entry.source}; give your "
                            f"{type(dataset).__name__} another .name (e.g. {name + '-mine'!r})")
    registry.register(name, lambda: dataset, source=SESSION_SOURCE,
                      description=f"{type(dataset).__name__} object from a Python session")
    return name


def _builds_the_same(factory: Any, source: object) -> bool:
    """Whether ``factory()`` makes an object of ``source``'s type with the same settings."""
    try:
        made = factory()
        return type(made) is type(source) and bool(vars(made) == vars(source))
    except Exception:  # settings that cannot be compared (arrays, …) are not the same
        return False


# --- training --------------------------------------------------------------------------------------------


def _train(task: str, settings: dict[str, Any], *, resume: PathLike | None, folds: int | None) -> Path:
    """Start, resume or fold-train a run of ``task``; ``settings`` are TrainConfig fields (None = default)."""
    from dlmi.training.config import TrainConfig

    settings = {k: v for k, v in settings.items() if v is not None}
    if "dataset" in settings:
        settings["dataset"] = dataset_name(settings["dataset"])
    for key in ("out", "data_dir", "aid", "split"):
        if key in settings:
            settings[key] = os.fspath(settings[key])
    if task == JOINT and resume is None:
        settings.setdefault("scheduler", "poly")  # the joint recipe's schedule (a resumed run keeps its own)
    if folds is not None:
        from dlmi.training.folds import train_folds

        if settings.get("fold") is not None or resume is not None:
            raise DlmiError("--folds trains every fold (and resumes by itself): drop --fold/--resume")
        _require(settings, hint="")
        return train_folds(TrainConfig(task=task, **settings), folds)
    if resume is not None:
        return _resume(task, Path(resume), settings)
    _require(settings)
    from dlmi.training.start import train

    return train(TrainConfig(task=task, **settings))


def _require(settings: Mapping[str, Any], hint: str = " (or --resume RUN_DIR)") -> None:
    for required in ("dataset", "out"):
        if not settings.get(required):
            raise DlmiError(f"--{required} is required{hint}")


def _resume(task: str, run_dir: Path, overrides: dict[str, Any]) -> Path:
    from dlmi.training.config import TrainConfig
    from dlmi.training.folder.run_folder import RunFolder
    from dlmi.training.start import resume_training

    saved = TrainConfig.load(RunFolder(run_dir).config)
    if saved.task != task:
        command = _COMMAND.get(saved.task, "segmenter")
        raise DlmiError(f"{run_dir}: is a {saved.task} run; resume it with "
                        f"`dlmi train {command} --resume {run_dir}`")
    if "out" in overrides and Path(overrides["out"]).resolve() != run_dir.resolve():
        raise DlmiError(f"--out {overrides['out']}: --resume continues {run_dir} in place; drop --out")
    overrides.pop("out", None)
    return resume_training(run_dir, **overrides)


# The keywords of the three functions are TrainConfig's settings of their task, in its order
# (tests/test_train_options.py checks them against ``dlmi.training.config.task_settings``).


@checked
def train_classifier(
    *, dataset: str | DatasetSource | None = None, out: PathLike | None = None,
    data_dir: PathLike | None = None, model: str | None = None, model_options: dict[str, Any] | None = None,
    base_channels: int | None = None, loss: str | None = None,
    image_size: int | None = None, epochs: int | None = None, batch_size: int | None = None,
    optimizer: str | None = None, lr: float | None = None, weight_decay: float | None = None,
    grad_clip: float | None = None, scheduler: str | None = None, class_balance: str | None = None,
    augment: bool | None = None, best_metric: str | None = None, device: str | None = None,
    deterministic: bool | None = None, seed: int | None = None, workers: int | None = None,
    split: PathLike | None = None, fold: int | None = None, quiet: bool | None = None,
    precision: str | None = None, channels_last: bool | None = None, compile: bool | None = None,
    cache: str | None = None, sync_bn: bool | None = None, warmup_epochs: int | None = None,
    ema: float | None = None, augment_recipe: str | None = None,
    folds: int | None = None, resume: PathLike | None = None,
) -> Path:
    """Train a classifier (``dlmi train classifier``); returns the run folder (or, with ``folds``, the
    ensemble folder). ``resume=RUN`` continues an interrupted run."""
    settings = {k: v for k, v in locals().items() if k not in ("folds", "resume")}
    return _train(CLASSIFICATION, settings, resume=resume, folds=folds)


@checked
def train_segmenter(
    *, dataset: str | DatasetSource | None = None, out: PathLike | None = None,
    data_dir: PathLike | None = None, model: str | None = None, model_options: dict[str, Any] | None = None,
    base_channels: int | None = None, loss: str | None = None,
    aid: PathLike | None = None,
    image_size: int | None = None, epochs: int | None = None, batch_size: int | None = None,
    optimizer: str | None = None, lr: float | None = None, weight_decay: float | None = None,
    grad_clip: float | None = None, scheduler: str | None = None, class_balance: str | None = None,
    augment: bool | None = None, best_metric: str | None = None, device: str | None = None,
    deterministic: bool | None = None, seed: int | None = None, workers: int | None = None,
    split: PathLike | None = None, fold: int | None = None, quiet: bool | None = None,
    precision: str | None = None, channels_last: bool | None = None, compile: bool | None = None,
    cache: str | None = None, sync_bn: bool | None = None, warmup_epochs: int | None = None,
    ema: float | None = None, augment_recipe: str | None = None,
    resume: PathLike | None = None,
) -> Path:
    """Train a segmenter (``dlmi train segmenter``), classifier-aided when ``aid`` names a classifier run;
    returns the run folder."""
    settings = {k: v for k, v in locals().items() if k != "resume"}
    return _train(SEGMENTATION, settings, resume=resume, folds=None)


@checked
def train_joint(
    *, dataset: str | DatasetSource | None = None, out: PathLike | None = None,
    data_dir: PathLike | None = None, model: str | None = None, model_options: dict[str, Any] | None = None,
    base_channels: int | None = None, loss: str | None = None,
    image_size: int | None = None, epochs: int | None = None, batch_size: int | None = None,
    optimizer: str | None = None, lr: float | None = None, weight_decay: float | None = None,
    grad_clip: float | None = None, scheduler: str | None = None, class_balance: str | None = None,
    augment: bool | None = None, best_metric: str | None = None, device: str | None = None,
    deterministic: bool | None = None, seed: int | None = None, workers: int | None = None,
    split: PathLike | None = None, fold: int | None = None, quiet: bool | None = None,
    precision: str | None = None, channels_last: bool | None = None, compile: bool | None = None,
    cache: str | None = None, sync_bn: bool | None = None, warmup_epochs: int | None = None,
    ema: float | None = None, augment_recipe: str | None = None,
    class_loss_weight: float | None = None, deep_supervision: bool | None = None,
    folds: int | None = None, resume: PathLike | None = None,
) -> Path:
    """Train a joint model (``dlmi train joint``: ``unet-mt``, its class head the gate; scheduler ``poly``
    unless told); with ``folds=K``, K fold models and ``ensemble.json`` in ``out``. Returns the run (or
    ensemble) folder."""
    settings = {k: v for k, v in locals().items() if k not in ("folds", "resume")}
    return _train(JOINT, settings, resume=resume, folds=folds)


# --- evaluation ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """One headline number with its 95 % bootstrap interval (``None`` where no image counts)."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    definition: str = ""

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Estimate:
        return cls(entry.get("value"), entry.get("low"), entry.get("high"), int(entry.get("n") or 0),
                   str(entry.get("definition", "")))

    def __str__(self) -> str:
        if self.value is None:
            return f"n/a (n={self.n})"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


@dataclass(frozen=True)
class MaskScores:
    """The segmentation numbers of one variant (``unaided`` or ``aided``: the masks ``dlmi predict`` writes
    without and with ``--aided``)."""

    variant: str
    n_images: int
    n_lesion_images: int
    miou_seed: Estimate
    lesion_dice: Estimate
    lesion_iou: Estimate
    empty_truth_false_positive_rate: Estimate

    @classmethod
    def from_dict(cls, variant: str, summary: Mapping[str, Any]) -> MaskScores:
        return cls(variant, int(summary["n_images"]), int(summary["n_lesion_images"]),
                   *(Estimate.from_dict(summary[k]) for k in
                     ("miou_seed", "lesion_dice", "lesion_iou", "empty_truth_false_positive_rate")))


@dataclass(frozen=True)
class EvaluationReport:
    """What :func:`evaluate` found: typed headline numbers over the full result (``to_dict()``).

    The mask numbers (``lesion_dice``, ``lesion_iou``, ``miou_seed``) are those of the pipeline that ships:
    the ``aided`` variant when the run is gated by a classifier, else ``unaided``; every variant is in
    ``variants``. ``accuracy`` is the run's own classifier (a classifier run, or a joint model's head);
    ``aid_accuracy`` the gating classifier's. With ``side="all"``, ``sides`` holds one report per side.
    """

    result: dict[str, Any] = field(repr=False)
    sides: dict[str, EvaluationReport] = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> EvaluationReport:
        if result.get("side") == "all":
            return cls(result, {side: cls(one) for side, one in result["sides"].items()})
        return cls(result)

    def to_dict(self) -> dict[str, Any]:
        """The full result, as ``eval-SIDE.json`` holds it (a copy)."""
        import copy

        return copy.deepcopy(self.result)

    def markdown(self) -> str:
        """The Markdown tables ``dlmi evaluate`` prints."""
        from dlmi.evaluation import markdown_report

        return "\n".join(markdown_report(r.result) for r in (self.sides or {"": self}).values())

    @property
    def side(self) -> str:
        return str(self.result.get("side") or self.result["context"]["side"])

    @property
    def task(self) -> str | None:
        return self.result["context"]["task"] if "context" in self.result else None

    @property
    def n_images(self) -> int | None:
        return self.result["context"]["n_images"] if "context" in self.result else None

    @property
    def files(self) -> dict[str, str]:
        """``{"json": …, "markdown": …}`` where the report was written (empty when it was not)."""
        return dict(self.result.get("files", {}))

    @property
    def variants(self) -> dict[str, MaskScores]:
        summaries = self.result.get("segmentation", {}).get("variants", {})
        return {name: MaskScores.from_dict(name, s) for name, s in summaries.items()}

    @property
    def shipped_variant(self) -> str | None:
        variants = self.result.get("segmentation", {}).get("variants", {})
        return next((v for v in ("aided", "unaided") if v in variants), None)

    def _mask(self, metric: str) -> Estimate | None:
        variant = self.shipped_variant
        if variant is None:
            return None
        return Estimate.from_dict(self.result["segmentation"]["variants"][variant][metric])

    def _class(self, section: str, metric: str) -> Estimate | None:
        summary = self.result.get(section)
        return Estimate.from_dict(summary[metric]) if summary and metric in summary else None

    @property
    def lesion_dice(self) -> Estimate | None:
        return self._mask("lesion_dice")

    @property
    def lesion_iou(self) -> Estimate | None:
        return self._mask("lesion_iou")

    @property
    def miou_seed(self) -> Estimate | None:
        return self._mask("miou_seed")

    @property
    def accuracy(self) -> Estimate | None:
        return self._class("classification", "accuracy")

    @property
    def detect_accuracy(self) -> Estimate | None:
        return self._class("classification", "detect_accuracy")

    @property
    def aid_accuracy(self) -> Estimate | None:
        return self._class("aid_classification", "accuracy")


@checked
def evaluate(
    run: PathLike, *, aid: PathLike | None = None, split: PathLike | None = None, side: str = "test",
    data_dir: PathLike | None = None, checkpoint: str = "best", batch_size: int = 16, workers: int = 0,
    device: str = "auto", resamples: int = 2000, seed: int = 0, panels: bool = True, write: bool = True,
    review: bool = True,
) -> EvaluationReport:
    """Evaluate a run folder (``dlmi evaluate RUN``) on ``side`` of its split: writes ``eval-SIDE.json`` /
    ``.md`` and figures into it (``write=False``: nothing written) and returns the typed report. With
    ``review`` (and ``write``), the test side's review page too: ``review-test.html`` (docs/review.md)."""
    from dlmi.evaluation import evaluate_run

    def review_page(evaluator: Any, one: str, result: dict[str, Any]) -> None:
        from dlmi.review_page.evaluated import from_evaluation, page_path
        from dlmi.review_page.html import write_page

        if one == "test" and write and review:
            page = write_page(from_evaluation(evaluator, one), page_path(evaluator.inputs.out_dir, one),
                              log=lambda message: None)
            result.setdefault("files", {})["review"] = str(page)

    result = evaluate_run(run, aid=aid, split=split, side=side, data_dir=data_dir, checkpoint=checkpoint,
                          batch_size=batch_size, workers=workers, device=device, resamples=resamples,
                          seed=seed, panels=panels, write=write, on_side=review_page)
    return EvaluationReport.from_result(result)


# --- export ----------------------------------------------------------------------------------------------


@checked
def export_onnx(
    *, classifier: PathLike | None = None, segmenter: PathLike | None = None, out: PathLike = "exported",
    fp16: bool = False, tolerance: float | None = None, fp16_tolerance: float | None = None,
) -> ExportReport:
    """Export runs (or ``.pt`` files) to ONNX (``dlmi export onnx``): ``classifier.onnx``, ``unet.onnx`` and,
    with both, ``two_stage.onnx``, each parity-checked; returns what was written (``report.files``)."""
    from dlmi.export import onnx_export

    tolerances = {k: v for k, v in (("tolerance", tolerance), ("fp16_tolerance", fp16_tolerance))
                  if v is not None}
    return onnx_export.export_onnx(classifier, segmenter, out, fp16=fp16, **tolerances)


# --- prediction ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One image's prediction, at the image's own size.

    ``mask``: bool (H, W) lesion mask (``None`` for a classifier alone); ``mask_probs``: its float32
    probabilities before the threshold; ``probs``: class probabilities (K,) in the order of ``classes``
    (``None`` without a classifier); ``gated``: whether the classifier said *normal* and emptied the mask
    (``None`` unless aided); ``uncertainty`` and ``mask_disagreement``: how much the votes behind the
    prediction disagree (:mod:`dlmi.runtime.uncertainty`; ``None`` where the model gives none).
    """

    mask: np.ndarray | None
    mask_probs: np.ndarray | None
    probs: np.ndarray | None
    classes: tuple[str, ...]
    gated: bool | None
    uncertainty: float | None = None
    mask_disagreement: float | None = None

    @property
    def label(self) -> str | None:
        """The most probable class, or ``None`` without a classifier."""
        return None if self.probs is None else self.classes[int(np.argmax(self.probs))]


def as_grey(image: np.ndarray, name: str = "image") -> np.ndarray:
    """An image array as uint8 (H, W) grey, read the way an image file is (``name``: how errors call it).

    (H, W), (H, W, 1), RGB (H, W, 3) or RGBA (H, W, 4). uint8 as it is; bool as 0/255; floats within 0–1 as
    intensities (×255); any other range (16-bit, Hounsfield, …) stretched from its min to its max, like a
    16-bit file. Anything else (complex, object or text arrays, ragged lists) is one :class:`DlmiError`:
    this is the one check of an image array.
    """
    from PIL import Image

    from dlmi.imageio import stretch_to_grey, to_grey

    if isinstance(image, str | os.PathLike):
        raise DlmiError(f"{name}: expected a numpy array, got the path {os.fspath(image)!r:.80} (read the "
                        f"file first, or predict a folder with `dlmi predict`)")
    try:
        array = np.asarray(image)
    except ValueError:  # numpy refuses rows of different lengths
        raise DlmiError(f"{name}: a ragged {type(image).__name__} (rows of different lengths), not an (H, W) "
                        f"array") from None
    if array.dtype != bool and not np.issubdtype(array.dtype, np.integer) \
            and not np.issubdtype(array.dtype, np.floating):
        raise DlmiError(f"{name}: expected an array of numbers (bool, integer or float), got dtype "
                        f"{array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] in (3, 4):
        if array.dtype != np.uint8:
            array = as_grey_channels(array)
        else:
            return to_grey(Image.fromarray(array, "RGB" if array.shape[2] == 3 else "RGBA"))
    if array.ndim != 2:
        raise DlmiError(f"{name}: expected an array of shape (H, W) or (H, W, C) with C in 1, 3, 4, got "
                        f"{array.shape}")
    if array.size == 0:
        raise DlmiError(f"{name}: an empty array of shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise DlmiError(f"{name}: the array holds NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(array.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    return stretch_to_grey(values)  # a constant array is mid-grey, as a constant 16-bit file reads


def as_grey_channels(array: np.ndarray) -> np.ndarray:
    """A non-uint8 colour array as one channel: the mean of its colour channels (alpha dropped)."""
    return array[:, :, :3].astype(np.float64).mean(axis=2)


class ImagePredictor:
    """Predicts one image array at a time with the loaded models (the exported files or the checkpoints).

    The same preprocessing, gate and resize-back as ``dlmi predict``: the image is resized to the
    segmenter's size, the mask probabilities are resized back (bilinear) and cut at the threshold.
    """

    def __init__(self, backend: Predictor, *, aided: bool, threshold: float | None = None) -> None:
        from dlmi.inference.predictor import check_threshold

        check_threshold(threshold, "threshold")
        info = backend.info
        self.backend = backend
        self.aided = aided
        self.threshold = float(threshold if threshold is not None else info.threshold)
        self.classes = tuple(info.classes)

    @property
    def running_on(self) -> str:
        return self.backend.running_on

    def predict(self, image: np.ndarray) -> Prediction:
        """Predict one image: numpy (H, W) or (H, W, C); see :func:`as_grey` for the values accepted."""
        from dlmi.inference.folder import spread_of
        from dlmi.runtime.preprocess import model_input, resize_probabilities

        grey = as_grey(image)
        height, width = grey.shape
        info = self.backend.info
        if info.segmenter_size is None:  # a classifier alone: classes, no mask
            assert info.classifier_size is not None
            batch_probs, uncertainty = self.backend.classify_uncertain(
                model_input(grey, info.classifier_size)[None])
            return Prediction(None, None, batch_probs[0], self.classes, None,
                              *spread_of(0, uncertainty, None))
        batch = model_input(grey, info.segmenter_size)[None]
        probs: np.ndarray | None = None
        gated: bool | None = None
        spread: tuple[float | None, float | None] = (None, None)
        if self.aided:
            class_probs, mask_probs, gated_batch, uncertainty, disagreement = \
                self.backend.two_stage_uncertain(batch)
            probs, gated = class_probs[0], bool(gated_batch[0])
            spread = spread_of(0, uncertainty, disagreement)
        else:
            mask_probs = self.backend.segment(batch)
        full = resize_probabilities(mask_probs[0, 0], height, width)
        classes = self.classes if probs is not None else ()
        return Prediction(full > self.threshold, full, probs, classes, gated, *spread)

    def predict_batch(self, arrays: Sequence[np.ndarray], batch_size: int = 8) -> list[dict[str, Any]]:
        """Predict a list of image arrays of any sizes (each as :meth:`predict` takes it), ``batch_size`` at
        a time: the records ``dlmi predict`` writes in predictions.json, with ``index`` (the position in
        ``arrays``) for ``file`` and ``mask`` the bool (H, W) mask itself (no overlay); ``None`` masks for a
        classifier alone. A bad array is one :class:`DlmiError` naming its index (``arrays[3]: …``)."""
        from dlmi.inference.folder import predict_arrays

        if isinstance(arrays, np.ndarray | str | bytes) or not isinstance(arrays, Sequence | Iterable):
            shape = f" of shape {arrays.shape}" if isinstance(arrays, np.ndarray) else ""
            raise DlmiError(f"arrays: expected a list of image arrays, got a {type(arrays).__name__}{shape} "
                            "(wrap one image in a list: [image])")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DlmiError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        greys = [as_grey(array, f"arrays[{index}]") for index, array in enumerate(arrays)]
        return predict_arrays(self.backend, greys, aided=self.aided, threshold=self.threshold,
                              batch_size=batch_size)


def _looks_trained(path: Path) -> bool:
    """A checkpoint or a run folder (PyTorch), as opposed to an export folder (ONNX)."""
    if path.suffix == ".pt":
        return True
    return path.is_dir() and any((path / name).is_file() for name in ("best.pt", "last.pt", "ensemble.json"))


@checked
def load_predictor(
    models: PathLike | Sequence[PathLike] = "exported", *, aided: bool = False, backend: str | None = None,
    provider: str = "auto", threads: int | None = None, fp16: bool = False, threshold: float | None = None,
) -> ImagePredictor:
    """A predictor of image arrays (``dlmi predict`` for one array): an export folder (onnxruntime), or run
    folders / ``.pt`` files (PyTorch; give the classifier and the segmenter for ``aided``). ``backend``
    defaults to ``torch`` for run folders and checkpoints, ``onnx`` otherwise."""
    from dlmi.inference.predictor import check_threshold, open_predictor

    check_threshold(threshold, "threshold")  # before the models are opened
    paths = [Path(models)] if isinstance(models, str | os.PathLike) else [Path(m) for m in models]
    if backend is None:
        backend = "torch" if any(_looks_trained(p) for p in paths) else "onnx"
    opened = open_predictor(paths, backend=backend, provider=provider, aided=aided, threads=threads,
                            fp16=fp16)
    return ImagePredictor(opened, aided=aided, threshold=threshold)


@checked
def predict(
    folder: PathLike, models: PathLike | Sequence[PathLike] = "exported", *, out: PathLike = "predictions",
    aided: bool = False, backend: str | None = None, provider: str = "auto", batch_size: int = 8,
    threshold: float | None = None, tile: bool = False, overwrite: bool = False, threads: int | None = None,
    fp16: bool = False, int8: bool = False, exclude: Sequence[str] = (), overlays: bool = True,
    num_shards: int | None = None, shard_index: int | None = None, engine: str = "local",
    address: str | None = None, actors: int | None = None, gpus_per_actor: float = 0.0, quiet: bool = False,
    dicom_seg: bool = False, dicom_sr: bool = False,
) -> PredictSummary:
    """``dlmi predict FOLDER``: every image under ``folder`` into ``out`` (masks, overlays, the tables);
    ``num_shards``/``shard_index``: this run's shard only (``predictions-I-of-N.csv/json``; join them with
    :func:`merge_predictions`). ``engine="ray"`` runs it on Ray (``address``: a running cluster, else a
    local one; ``folder`` may then be a text file listing paths or URIs). ``backend`` as in
    :func:`load_predictor`; lines go to stderr unless ``quiet``. ``dicom_seg`` / ``dicom_sr``: each DICOM
    input's DICOM Segmentation / Comprehensive SR too (``dlmi predict --dicom-seg/--dicom-sr``).
    Returns what was done (``.predicted``, ``.failed``, ``.csv``, ``.json``)."""
    import sys

    from dlmi.inference.folder import PredictSettings, predict_folder
    from dlmi.inference.predictor import check_threshold, open_predictor
    from dlmi.inference.ray_engine import engine_runner
    from dlmi.inference.shards import check_shard

    check_threshold(threshold, "threshold")
    check_shard(num_shards, shard_index)
    paths = [Path(models)] if isinstance(models, str | os.PathLike) else [Path(m) for m in models]
    if backend is None:
        backend = "torch" if any(_looks_trained(p) for p in paths) else "onnx"
    opener = {"models": paths, "backend": backend, "provider": provider, "aided": aided, "tile": tile,
              "threads": threads, "fp16": fp16, "int8": int8}
    run = engine_runner(engine, folder, address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                        opener=opener) or predict_folder
    opened = open_predictor(**opener)
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    settings = PredictSettings(aided=aided, tile=tile, threshold=threshold, batch_size=batch_size,
                               overwrite=overwrite, exclude=patterns, overlays=overlays,
                               threads=threads, num_shards=num_shards, shard_index=shard_index,
                               dicom_seg=dicom_seg, dicom_sr=dicom_sr)

    def log(message: str) -> None:
        if not quiet:
            print(f"dlmi: {message}", file=sys.stderr)

    return run(folder, out, opened, settings, log=log, progress=None if not quiet else _silent)


def _silent(done: int, failed: int, total: int) -> None:
    """A progress callback that says nothing."""


@checked
def merge_predictions(out: PathLike) -> MergeSummary:
    """``dlmi predict merge OUT``: the shards' tables in ``out`` joined into predictions.csv / .json (one
    :class:`DlmiError` naming the shard when one is missing or disagrees on the models or settings)."""
    from dlmi.inference.shards import merge_shards

    return merge_shards(out, log=lambda message: None)


__all__ = [
    "EvaluationReport", "Estimate", "ImagePredictor", "MaskScores", "Prediction", "as_grey", "dataset_name",
    "evaluate", "export_onnx", "load_predictor", "merge_predictions", "predict", "train_classifier",
    "train_joint", "train_segmenter",
]


# --- review ----------------------------------------------------------------------------------------------


def review(pred_dir: PathLike, *, truth: PathLike | None = None, out: PathLike | None = None,
           flags: PathLike | None = None, quiet: bool = False) -> Path:
    """``dlmi review PRED_DIR``: one self-contained HTML page (default ``PRED_DIR/review.html``, its pictures
    in ``review-files/`` beside it) to look through a ``dlmi predict`` output image by image; ``truth``: a
    folder of true masks (Dice, IoU, the confusion matrix); ``flags``: a flags CSV the page exported, marked
    on the new page. Returns the page's path (docs/review.md)."""
    import sys

    from dlmi.review_page.build import PAGE_NAME, from_predictions
    from dlmi.review_page.flags import read_flags
    from dlmi.review_page.html import write_page

    def log(message: str) -> None:
        if not quiet:
            print(f"dlmi: {message}", file=sys.stderr)

    marks = read_flags(flags) if flags is not None else None
    data = from_predictions(pred_dir, truth_dir=truth, flags=marks)
    return write_page(data, Path(out) if out is not None else Path(pred_dir) / PAGE_NAME, log=log)
