"""Evaluating a training run folder: every number of ``docs/metrics.md`` for one side of its split.

``evaluate_run("runs/unet", side="test")`` loads the run's best checkpoint (and the aid classifier when
``aid`` is given or the run was trained with one), predicts the side's images, and returns a JSON-able dict;
it also writes ``eval-<side>.json``, ``eval-<side>.md`` and the figures into the run folder (atomically).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dlmi.atomic import write_json_atomic, write_text_atomic
from dlmi.datasets.base import DatasetSource, Sample, list_samples, load_sample, normal_index
from dlmi.errors import DlmiError
from dlmi.evaluation.figures import PanelRow, confusion_matrix_png, panels_png, reliability_png
from dlmi.evaluation.predict import SidePredictions, predict_side
from dlmi.evaluation.report import markdown_report
from dlmi.metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, check_resamples, scored_mean
from dlmi.metrics.classification import ClassificationScores
from dlmi.metrics.segmentation import SegmentationScores, iou
from dlmi.runtime.device import resolve_device
from dlmi.training.config import TrainConfig

SIDES = ("train", "val", "test")
EVAL_SIDES = (*SIDES, "all")
PANEL_SIDES = ("train", "test")


@dataclass
class EvaluationInputs:
    """Everything an evaluation reads: the models, the data source and each side's samples."""

    trained: Any
    aid: Any | None
    source: DatasetSource
    dataset: str
    data_dir: Path | None
    split_file: Path
    sides: dict[str, list[Sample]]
    out_dir: Path

    @property
    def task(self) -> str:
        return self.trained.task

    @property
    def normal_index(self) -> int | None:
        return normal_index(self.source.classes, self.source.normal_class)


def _config_path(run_dir: Path | None) -> Path | None:
    """The run's ``config.json``, where the folder has one."""
    return run_dir / "config.json" if run_dir is not None and (run_dir / "config.json").is_file() else None


def read_run_config(trained: Any) -> tuple[TrainConfig | None, Path | None]:
    """The training settings of a loaded run (``TrainConfig.load`` of its ``config.json``) and that file.

    An ensemble folder has no ``config.json``: it reads its first member's, less the fold that member held
    out. A bare checkpoint has none (``None, None``).
    """
    path = _config_path(trained.run_dir)
    if path is not None:
        return TrainConfig.load(path), path
    members = getattr(trained, "members", None)
    path = _config_path(members[0].run_dir) if members else None
    if path is None:
        return None, None
    return dataclasses.replace(TrainConfig.load(path), fold=None), path


def _recorded_path(value: str, run_dir: Path | None, what: str, config_path: Path | None) -> Path:
    """A path recorded in a run's config: as written (relative to the current folder), else beside the run."""
    path = Path(value)
    if path.exists():
        return path
    if run_dir is not None and not path.is_absolute():
        for base in (run_dir, run_dir.parent):
            if (base / path).exists():
                return base / path
    where = f"{config_path}: " if config_path else ""
    raise DlmiError(f"{where}the recorded {what} {value} does not exist here; pass it explicitly")


def load_inputs(
    run_dir: str | Path,
    *,
    aid: str | Path | None = None,
    split: str | Path | None = None,
    data_dir: str | Path | None = None,
    checkpoint: str = "best",
    device: str = "auto",
) -> EvaluationInputs:
    """Load the run's model (and aid), its dataset, and its split's samples per side."""
    from dlmi.plugins import get_dataset
    from dlmi.runtime.trained import load_trained

    torch_device = resolve_device(device)
    trained = load_trained(run_dir, checkpoint_name=f"{checkpoint}.pt", map_location=torch_device)
    folder = trained.run_dir
    config, config_path = read_run_config(trained)
    fold = config.fold if config is not None else None
    dataset = str((config.dataset if config is not None else None) or trained.meta.get("dataset") or "")
    if not dataset:
        raise DlmiError(f"{trained.checkpoint}: cannot tell which dataset the run used")
    source = get_dataset(dataset)

    if data_dir is not None:
        data_path: Path | None = Path(data_dir)
    elif config is not None and config.data_dir:
        data_path = _recorded_path(str(config.data_dir), folder, "data folder", config_path)
    else:
        data_path = None
    if getattr(source, "needs_data_dir", True) and data_path is None:
        raise DlmiError(f"{trained.checkpoint}: dataset {dataset!r} needs --data-dir "
                        "(none recorded in the run)")

    if split is not None:
        split_file = Path(split)
    elif folder is not None and (folder / "split.json").is_file():
        split_file = folder / "split.json"
    else:
        raise DlmiError(f"{trained.checkpoint}: no split.json beside the checkpoint; pass --split FILE")
    from dlmi.splits import load_split, split_samples

    split_obj = load_split(split_file)
    samples = list_samples(source, data_path)
    if split_obj.folds and fold is None:
        # An ensemble over the folds: its members trained on every development image, so there is no
        # held-out val side (its settings were chosen on out-of-fold predictions, see ensemble.json).
        sides = {"train": list(split_samples(split_obj, samples, "train")), "val": [],
                 "test": list(split_samples(split_obj, samples, "test"))}
    else:
        sides = {side: list(split_samples(split_obj, samples, side, fold=fold))
                 for side in SIDES}

    aid_model = None
    aid_path = aid if aid is not None else (config.aid if config is not None else None)
    if aid_path is not None:
        if trained.task != "segmentation":
            raise DlmiError(f"--aid {aid_path}: an aid applies to a segmentation run, "
                            f"not a {trained.task} run")
        if aid is None:
            aid_path = _recorded_path(str(aid_path), folder, "aid classifier", config_path)
        aid_model = load_trained(aid_path, map_location=torch_device)
        if aid_model.task != "classification":
            raise DlmiError(f"{aid_model.checkpoint}: the aid must be a classifier, "
                            f"not a {aid_model.task} run")
        from dlmi.runtime.pairing import check_pair

        check_pair(aid_model.meta, {"dataset": dataset, "classes": list(source.classes),
                                    "normal_class": source.normal_class},
                   classifier_name=f"--aid {aid_model.checkpoint}", segmenter_name=str(trained.checkpoint))
        if aid_model.normal_index is None:
            raise DlmiError(f"{aid_model.checkpoint}: the aid classifier has no normal class to gate with")
    if trained.task in ("segmentation", "joint") and not source.has_masks:
        raise DlmiError(f"dataset {dataset!r} has no masks; a segmentation run cannot be scored on it")

    out_dir = folder if folder is not None else trained.checkpoint.parent
    return EvaluationInputs(trained=trained, aid=aid_model, source=source, dataset=dataset,
                            data_dir=data_path, split_file=split_file, sides=sides, out_dir=out_dir)


class Evaluator:
    """Evaluates the sides of one run, predicting each side at most once."""

    def __init__(self, inputs: EvaluationInputs, *, batch_size: int = 16, workers: int = 0,
                 device: str = "auto", resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> None:
        self.inputs = inputs
        self.batch_size = batch_size
        self.workers = workers
        self.device = resolve_device(device)
        self.bootstrap = {"resamples": resamples, "seed": seed}
        self._predictions: dict[str, SidePredictions] = {}

    # --- predictions -------------------------------------------------------------------------------------
    def _predict(self, samples: Sequence[Sample]) -> SidePredictions:
        inputs = self.inputs
        if inputs.task == "classification":
            return predict_side(inputs.source, samples, classifier=inputs.trained, batch_size=self.batch_size,
                                workers=self.workers, device=self.device)
        return predict_side(inputs.source, samples, segmenter=inputs.trained, classifier=inputs.aid,
                            batch_size=self.batch_size, workers=self.workers, device=self.device)

    def predictions(self, side: str) -> SidePredictions:
        if side not in self._predictions:
            self._predictions[side] = self._predict(self.inputs.sides[side])
        return self._predictions[side]

    # --- post-processing ---------------------------------------------------------------------------------
    def postprocess_rule(self) -> dict[str, Any]:
        """The post-processing the evaluated masks went through: the model's own rule, as ``dlmi predict``
        applies it (:func:`dlmi.runtime.two_stage.pipeline_rule`). Evaluation chooses nothing of its own, so
        every variant it reports is a pipeline that prediction runs."""
        from dlmi.runtime.two_stage import pipeline_rule

        return pipeline_rule(self.inputs.trained, self.inputs.aid)

    def _variant_masks(self, preds: SidePredictions) -> dict[str, np.ndarray]:
        assert preds.masks is not None
        variants = {"unaided": preds.masks}
        if preds.gated is not None:
            variants["aided"] = preds.aided_masks()
        return variants

    # --- one side ----------------------------------------------------------------------------------------
    def context(self, side: str) -> dict[str, Any]:
        inputs = self.inputs
        trained = inputs.trained
        ctx: dict[str, Any] = {
            "run": str(trained.run_dir or trained.checkpoint),
            "checkpoint": str(trained.checkpoint),
            "task": trained.task,
            "model": trained.meta.get("model"),
            "dataset": inputs.dataset,
            "data_dir": str(inputs.data_dir) if inputs.data_dir else None,
            "split_file": str(inputs.split_file),
            "side": side,
            "n_images": len(inputs.sides[side]),
            "image_size": trained.image_size,
            "masks_scored_at": f"{trained.image_size}x{trained.image_size} px (true masks resized, nearest)"
            if trained.task != "classification" else None,
            "aid": None,
        }
        if inputs.aid is not None:
            ctx["aid"] = {"run": str(inputs.aid.run_dir or inputs.aid.checkpoint),
                          "checkpoint": str(inputs.aid.checkpoint), "image_size": inputs.aid.image_size}
        return ctx

    def evaluate_side(self, side: str) -> dict[str, Any]:
        if side not in SIDES:
            raise DlmiError(f"unknown side {side!r}; expected one of {', '.join(EVAL_SIDES)}")
        inputs = self.inputs
        if not inputs.sides[side]:
            raise DlmiError(f"{inputs.split_file}: the split has no {side} images")
        preds = self.predictions(side)
        result: dict[str, Any] = {"kind": "dlmi evaluation", "context": self.context(side)}
        classes = list(inputs.source.classes)
        if inputs.task == "classification":
            scores = ClassificationScores(inputs.trained.classes or classes, inputs.trained.normal_index)
            scores.update(preds.class_logits, preds.labels)
            result["classification"] = scores.summary(**self.bootstrap)
        else:
            result["segmentation"] = self._segmentation(preds, classes)
            if inputs.task == "joint":  # the joint network's own class head (its gate)
                scores = ClassificationScores(inputs.trained.classes or classes, inputs.trained.normal_index)
                scores.update(preds.class_logits, preds.labels)
                result["classification"] = scores.summary(**self.bootstrap)
            if inputs.aid is not None:
                scores = ClassificationScores(inputs.aid.classes, inputs.aid.normal_index)
                scores.update(preds.class_logits, preds.labels)
                result["aid_classification"] = scores.summary(**self.bootstrap)
        calibration = self._calibration(preds)
        if calibration is not None:
            result["calibration"] = calibration
        from dlmi import __version__

        result["dlmi_version"] = __version__
        result["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        return result

    def _calibration(self, preds: SidePredictions) -> dict[str, Any] | None:
        """ECE, Brier score and NLL of the class head (the run's, or the aid's) before and after its
        temperature (:mod:`dlmi.metrics.calibration`), with bootstrap intervals and reliability bins."""
        from dlmi.metrics.calibration import calibration_report
        from dlmi.runtime.calibration import calibrated_on

        inputs = self.inputs
        head = inputs.trained if inputs.task in ("classification", "joint") else inputs.aid
        if head is None or preds.class_logits is None or not len(preds.labels):
            return None
        report = calibration_report(preds.class_logits, preds.labels, head.temperature, **self.bootstrap)
        who = {"classification": "classifier", "joint": "joint model's class head"}.get(inputs.task,
                                                                                       "aid classifier")
        return {"model": who, "calibrated_on": calibrated_on(head.meta), **report}

    def _segmentation(self, preds: SidePredictions, classes: list[str]) -> dict[str, Any]:
        variants: dict[str, Any] = {}
        scored: dict[str, SegmentationScores] = {}
        for variant, masks in self._variant_masks(preds).items():
            scores = SegmentationScores(classes, self.inputs.normal_index)
            scores.update(masks, preds.true_masks, preds.labels, keys=preds.keys)
            variants[variant] = scores.summary(**self.bootstrap)
            scored[variant] = scores
        out: dict[str, Any] = {"variants": variants, "postprocess": self.postprocess_rule()}
        if "aided" in scored:
            out["aid_effect"] = self._aid_effect(scored["unaided"], scored["aided"])
        return out

    def _aid_effect(self, plain: SegmentationScores, aided: SegmentationScores) -> dict[str, Any]:
        """Aided minus unaided, per image, with paired intervals (both scored on the same images)."""
        lesion = plain.lesion_images()
        iou_gain = aided.per_image_iou() - plain.per_image_iou()
        dice_gain = aided.per_image_dice() - plain.per_image_dice()
        what = "mean over {} of (aided − unaided) per-image {}; paired bootstrap over images"
        return {
            "miou_seed": scored_mean(iou_gain, what.format("all images", "IoU"), **self.bootstrap),
            "lesion_dice": scored_mean(dice_gain[lesion], what.format("lesion images", "Dice"),
                                       **self.bootstrap),
        }

    # --- figures -----------------------------------------------------------------------------------------
    def panel_samples(self) -> list[tuple[str, Sample]]:
        """The first sample (by key) of each class on the train and test sides."""
        picked = []
        for side in PANEL_SIDES:
            for label, name in enumerate(self.inputs.source.classes):
                of_class = sorted((s for s in self.inputs.sides[side] if s.label == label),
                                  key=lambda s: s.key)
                if of_class:
                    picked.append((f"{side} · {name}", of_class[0]))
        return picked

    def write_panels(self) -> Path | None:
        """The seed's qualitative panels: train/test × class — image, truth, prediction, aided prediction."""
        picked = self.panel_samples()
        if not picked or self.inputs.task == "classification":
            return None
        preds = self._predict([s for _, s in picked])
        size = self.inputs.trained.image_size
        rows = []
        from dlmi.datasets.loader import resize_image

        for i, (title, sample) in enumerate(picked):
            image, _ = load_sample(self.inputs.source, sample)
            truth = preds.true_masks[i]
            mask = preds.masks[i]
            predictions = [(f"prediction (IoU {iou(mask, truth)[0]:.2f})", mask)]
            if preds.gated is not None:
                aided = preds.aided_masks()[i]
                said = (self.inputs.aid or self.inputs.trained).classes[int(preds.class_logits[i].argmax())]
                predictions.append((f"aided (aid: {said}; IoU {iou(aided, truth)[0]:.2f})", aided))
            rows.append(PanelRow(f"{title}\n{sample.key}", resize_image(image, size), truth, predictions))
        where = self.inputs.trained.run_dir or self.inputs.trained.checkpoint
        title = f"{self.inputs.dataset}, {size} px — {where}"
        return panels_png(rows, self.inputs.out_dir / "panels.png", title)

    def write_side(self, result: dict[str, Any]) -> dict[str, str]:
        """Write ``eval-<side>.json`` / ``.md`` (and the confusion matrix PNG) into the run folder."""
        ctx = result["context"]
        side = ctx["side"]
        out = self.inputs.out_dir
        figures = dict(result.get("figures") or {})
        summary = result.get("classification") or result.get("aid_classification")
        if summary is not None:
            who = "classifier" if "classification" in result else "aid classifier"
            name = f"confusion-{side}.png" if "classification" in result else f"aid-confusion-{side}.png"
            confusion_matrix_png(
                np.array(summary["confusion_matrix"]["matrix"]), summary["classes"], out / name,
                f"{who}: {ctx['dataset']}, {side} side ({ctx['n_images']} images), "
                f"{(ctx['aid'] or ctx)['image_size']} px")
            figures["confusion_matrix"] = str(out / name)
        calibration = result.get("calibration")
        if calibration is not None:
            name = f"reliability-{side}.png"
            before, after = calibration["before"], calibration["after"]
            reliability_png(
                [(f"before scaling (ECE {before['ece']['value']:.3f})", before["reliability"]),
                 (f"after, T = {calibration['temperature']:.3g} (ECE {after['ece']['value']:.3f})",
                  after["reliability"])], out / name,
                f"{calibration['model']}: {ctx['dataset']}, {side} side ({ctx['n_images']} images)")
            figures["reliability"] = str(out / name)
        result["figures"] = figures
        json_path, md_path = out / f"eval-{side}.json", out / f"eval-{side}.md"
        write_json_atomic(json_path, result)
        write_text_atomic(md_path, markdown_report(result))
        return {"json": str(json_path), "markdown": str(md_path)}


def evaluate_run(
    run_dir: str | Path,
    aid: str | Path | None = None,
    split: str | Path | None = None,
    side: str = "test",
    *,
    data_dir: str | Path | None = None,
    checkpoint: str = "best",
    batch_size: int = 16,
    workers: int = 0,
    device: str = "auto",
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    panels: bool = True,
    write: bool = True,
    on_side: Callable[[Evaluator, str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a run folder on ``side`` (``train``, ``val``, ``test`` or ``all``) and return the result.

    With ``side="all"`` the result is ``{"side": "all", "sides": {"train": ..., "val": ..., "test": ...}}``
    (sides without images are left out). ``write`` puts ``eval-<side>.json`` / ``.md`` and the figures into
    the run folder; ``panels`` draws the seed's qualitative panels (segmentation runs). ``on_side`` is called
    with the evaluator, each side and its result (``dlmi evaluate`` writes the side's review page there).
    """
    if side not in EVAL_SIDES:
        raise DlmiError(f"unknown side {side!r}; expected one of {', '.join(EVAL_SIDES)}")
    if checkpoint not in ("best", "last"):
        raise DlmiError(f"unknown checkpoint {checkpoint!r}; expected best or last")
    if batch_size < 1:
        raise DlmiError(f"batch size must be at least 1, got {batch_size}")
    check_resamples(resamples)
    inputs = load_inputs(run_dir, aid=aid, split=split, data_dir=data_dir, checkpoint=checkpoint,
                         device=device)
    evaluator = Evaluator(inputs, batch_size=batch_size, workers=workers, device=device,
                             resamples=resamples, seed=seed)
    sides = [s for s in SIDES if inputs.sides[s]] if side == "all" else [side]
    panel_path = evaluator.write_panels() if (write and panels) else None
    results = {}
    for one in sides:
        result = evaluator.evaluate_side(one)
        if panel_path is not None:
            result["figures"] = {"panels": str(panel_path)}
        if write:
            result["files"] = evaluator.write_side(result)
        if on_side is not None:
            on_side(evaluator, one, result)
        results[one] = result
    if side == "all":
        return {"side": "all", "sides": results}
    return results[side]
