"""Export trained checkpoints to ONNX: ``classifier.onnx``, ``unet.onnx`` and the one-file ``two_stage.onnx``.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based exporter, PyTorch's default
since 2.9) at opset 18. Batch is dynamic everywhere; the U-Net's height and width are dynamic too (it pads
to a multiple of 16 inside, with shape arithmetic and no branch). The classifier and the two-stage graph
take a fixed S×S image (the classifier ends in a linear layer of a fixed width).

Every file passes ``onnx.checker.check_model(full_check=True)`` and a parity check against PyTorch
(:mod:`dlmi.export.parity`) before anything is written; a failure writes nothing and raises a
:class:`DlmiError`. Files are written atomically, and ``export.json`` records the sources, the parity
numbers and the versions; ``MODEL_CARD.md`` (:mod:`dlmi.export.model_card`) is written after it.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from dlmi.atomic import write_atomic
from dlmi.datasets.base import normal_index as class_index
from dlmi.digest import file_digest
from dlmi.errors import DlmiError
from dlmi.export.files import ALL_FILE_NAMES, file_name
from dlmi.export.metadata import (
    CLASSIFIER,
    EXPORT_MANIFEST,
    SEGMENTER,
    TWO_STAGE,
    build_metadata,
    dataset_segment_codes,
    set_metadata,
)
from dlmi.export.model_card import write_manifest_and_card
from dlmi.export.parity import ParityResult, check_parity
from dlmi.runtime.calibration import calibrated_on, temperature_of
from dlmi.runtime.graphs import AsHalf, ClassifierGraph, SegmenterGraph
from dlmi.runtime.pairing import check_pair
from dlmi.runtime.two_stage import TwoStage

OPSET = 18
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
INPUT_NAME = "image"


def to_onnx(
    module: nn.Module,
    example: torch.Tensor,
    *,
    dynamic_axes: dict[int, str],
    output_names: Sequence[str],
) -> onnx.ModelProto:
    """``module`` (whose forward takes one ``image`` tensor) as a checked ONNX model."""
    module = module.eval()
    dims = {axis: torch.export.Dim(name) for axis, name in dynamic_axes.items()}
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=OPSET, verbose=False,
                input_names=[INPUT_NAME], output_names=list(output_names),
                dynamic_shapes={INPUT_NAME: dims}, optimize=True,
            )
    except Exception as exc:  # the exporter's errors are pages long: keep the first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DlmiError(f"ONNX export of {type(module).__name__} failed: {first}") from exc
    model = program.model_proto
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass
class Source:
    """One trained network to export: its model in eval mode, its checkpoint meta and file."""

    model: nn.Module
    meta: dict[str, Any]
    checkpoint: Path
    training: dict[str, Any] | None = None

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def pair(self) -> tuple[dict[str, Any], str]:
        return self.meta, str(self.checkpoint)


def load_source(path: str | os.PathLike[str], task: str) -> Source:
    """The best checkpoint of a run folder, or a ``.pt`` file, checked to be a ``task`` model."""
    from dlmi.runtime.trained import load_trained

    trained = load_trained(path)
    if task == "segmentation" and trained.task == "joint":
        pass  # a joint model (or an ensemble of them) exports its mask, its classes and its own gate
    elif trained.task != task:
        option = "--classifier" if task == "classification" else "--segmenter"
        raise DlmiError(
            f"{trained.checkpoint}: {option} needs a {task} run, this one is a {trained.task} run"
        )
    meta = {**trained.meta, "input_normalisation": input_normalisation(trained.model)}
    return Source(model=trained.model.float().eval(), meta=meta, checkpoint=trained.checkpoint,
                  training=training_progress(trained))


def input_normalisation(model: nn.Module) -> dict[str, Any] | None:
    """The normalisation a network applies to its 0–1 grey input inside its graph (an ImageNet encoder's,
    :mod:`dlmi.models.resnet_unet_torch`), or ``None`` where it takes the 0–1 values as they are."""
    for module in model.modules():
        found = getattr(module, "input_normalisation", None)
        if isinstance(found, dict):
            return dict(found)
    return None


def training_progress(trained: Any) -> dict[str, Any] | None:
    """``{"epochs_done", "epochs_planned", "complete"}`` of the run(s) behind a trained model: the epoch of
    each run's ``last.pt`` against its ``config.json``'s epochs (an ensemble: its least trained member).
    ``None`` for a bare checkpoint, which says nothing of the plan."""
    from dlmi.runtime.checkpoint import load_checkpoint
    from dlmi.training.config import TrainConfig
    from dlmi.training.folder.run_folder import RunFolder

    runs = [m.run_dir for m in getattr(trained, "members", None) or [trained]]
    progress = []
    for run_dir in runs:
        if run_dir is None:
            return None
        folder = RunFolder(Path(run_dir))
        if not folder.config.is_file() or not folder.last.is_file():
            return None
        planned = TrainConfig.load(folder.config).epochs
        done = load_checkpoint(folder.last).get("epoch")
        if not isinstance(done, int):
            raise DlmiError(f"{folder.last}: records no epoch; not a checkpoint written by dlmi train")
        progress.append((done, planned))
    done, planned = min(progress, key=lambda p: p[0] - p[1])
    return {"epochs_done": done, "epochs_planned": planned, "complete": done >= planned}


def normal_index(classifier: Source) -> int:
    classes = list(classifier.meta.get("classes") or [])
    index = class_index(classes, classifier.meta.get("normal_class"))
    if index is None:
        raise DlmiError(
            f"{classifier.checkpoint}: the classifier has no normal class (classes {classes}), "
            "so it cannot gate the U-Net in two_stage.onnx"
        )
    return index


@dataclass
class Exported:
    """One exported file, ready to be written."""

    kind: str
    precision: str
    name: str
    model: onnx.ModelProto
    parity: ParityResult


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how each file compared with PyTorch."""

    out: Path
    files: list[Path] = field(default_factory=list)
    parity: list[ParityResult] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {p} ({p.stat().st_size / 2**20:.1f} MiB)" for p in self.files]
        lines += [r.describe() for r in self.parity]
        lines += [f"removed stale {p} (not part of this export)" for p in self.removed]
        return "\n".join(lines)


def _inputs(rng: np.random.Generator, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    return [rng.random(shape, dtype=np.float32) for shape in shapes]


def _segmenter_shapes(size: int) -> list[tuple[int, ...]]:
    """Two batches at two sizes: S×S, and one whose sides are not multiples of 16 (the U-Net pads)."""
    return [(2, 1, size, size), (1, 1, size + 19, max(size // 2 + 5, 1))]


def _export_one(
    kind: str,
    precision: str,
    graph: nn.Module,
    reference: nn.Module,
    *,
    size: int,
    dynamic_axes: dict[int, str],
    parity_shapes: Sequence[tuple[int, ...]],
    tolerance: float,
    metadata: dict[str, str],
) -> Exported:
    output_names = list(graph.output_names)  # type: ignore[arg-type]
    example = torch.rand(2, 1, size, size)
    model = to_onnx(graph, example, dynamic_axes=dynamic_axes, output_names=output_names)
    set_metadata(model, metadata)
    name = file_name(kind, precision)
    inputs = _inputs(np.random.default_rng(0), parity_shapes)
    from dlmi.runtime.ensemble import ClassifierEnsemble, JointEnsemble

    averaged = any(isinstance(m, ClassifierEnsemble | JointEnsemble) for m in reference.modules())
    # The mask disagreement counts pixels on either side of the threshold: float rounding may move one
    # across it (a step of about 1 / pixels in Dice), so it is reported, not held to the tolerance.
    report_only = (("logits",) if averaged else ()) + ("mask_disagreement",)
    parity = check_parity(name, reference, model.SerializeToString(), inputs, tolerance=tolerance,
                          precision=precision, output_names=output_names, report_only=report_only)
    return Exported(kind, precision, name, model, parity)


def export_onnx(
    classifier: str | os.PathLike[str] | None = None,
    segmenter: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "exported",
    *,
    fp16: bool = False,
    tolerance: float = FP32_TOLERANCE,
    fp16_tolerance: float = FP16_TOLERANCE,
) -> ExportReport:
    """Export a classifier and/or a segmenter (run folders or ``.pt`` files); with both, the two-stage graph.

    Writes ``classifier.onnx``, ``unet.onnx``, ``two_stage.onnx`` (and ``*_fp16.onnx`` with ``fp16``) and
    ``export.json`` into ``out``, after every file passed its parity check.
    """
    if classifier is None and segmenter is None:
        raise DlmiError("nothing to export: give --classifier and/or --segmenter (run folders or .pt files)")
    cls = load_source(classifier, "classification") if classifier is not None else None
    seg = load_source(segmenter, "segmentation") if segmenter is not None else None
    joint = seg is not None and seg.meta.get("task") == "joint"
    if joint and cls is not None:
        raise DlmiError(f"{seg.checkpoint}: a joint model gates with its own class head; drop --classifier")
    if cls is not None and seg is not None and not joint:
        check_pair(cls.meta, seg.meta, classifier_name=str(cls.checkpoint),
                   segmenter_name=str(seg.checkpoint))
    if joint:
        return _export_joint(seg, Path(out), fp16=fp16, tolerance=tolerance, fp16_tolerance=fp16_tolerance)
    gate_index = normal_index(cls) if (cls is not None and seg is not None) else None
    precisions = ["fp32", "fp16"] if fp16 else ["fp32"]

    exported: list[Exported] = []
    for precision in precisions:
        tol = tolerance if precision == "fp32" else fp16_tolerance

        def net(source: Source, precision: str = precision) -> nn.Module:
            return AsHalf(source.model) if precision == "fp16" else source.model

        if cls is not None:
            outputs = list(ClassifierGraph.output_names)
            classes = list(cls.meta.get("classes") or [])
            head = {"temperature": temperature_of(cls.meta),
                    "reference": class_index(classes, cls.meta.get("normal_class"))}
            exported.append(_export_one(
                CLASSIFIER, precision, ClassifierGraph(net(cls), **head), ClassifierGraph(cls.model, **head),
                size=cls.image_size, dynamic_axes={0: "batch"},
                parity_shapes=[(n, 1, cls.image_size, cls.image_size) for n in (1, 3)],
                tolerance=tol,
                metadata=build_metadata(CLASSIFIER, inputs=[INPUT_NAME], outputs=outputs, precision=precision,
                                        classifier=cls.pair),
            ))
        if seg is not None:
            outputs = list(SegmenterGraph.output_names)
            exported.append(_export_one(
                SEGMENTER, precision, SegmenterGraph(net(seg)), SegmenterGraph(seg.model),
                size=seg.image_size, dynamic_axes={0: "batch", 2: "height", 3: "width"},
                parity_shapes=_segmenter_shapes(seg.image_size), tolerance=tol,
                metadata=build_metadata(SEGMENTER, inputs=[INPUT_NAME], outputs=outputs, precision=precision,
                                        segmenter=seg.pair),
            ))
        if cls is not None and seg is not None:
            assert gate_index is not None
            sizes = {"normal_index": gate_index, "classifier_size": cls.image_size,
                     "segmenter_size": seg.image_size, "threshold": float(seg.meta.get("threshold", 0.5)),
                     "temperature": temperature_of(cls.meta)}
            outputs = list(TwoStage.output_names)
            exported.append(_export_one(
                TWO_STAGE, precision,
                TwoStage(net(cls), net(seg), **sizes), TwoStage(cls.model, seg.model, **sizes),
                size=seg.image_size, dynamic_axes={0: "batch"},
                parity_shapes=[(3, 1, seg.image_size, seg.image_size)], tolerance=tol,
                metadata=build_metadata(TWO_STAGE, inputs=[INPUT_NAME], outputs=outputs, precision=precision,
                                        classifier=cls.pair, segmenter=seg.pair),
            ))

    return _write(exported, Path(out), cls, seg)


def _export_joint(joint: Source, out: Path, *, fp16: bool, tolerance: float,
                  fp16_tolerance: float) -> ExportReport:
    """A joint model's three files: its class head, its mask, and the gated two-stage graph (one pass)."""
    from dlmi.runtime.graphs import JointOutput
    from dlmi.runtime.two_stage import JointPipeline, joint_pipeline_options

    size = joint.image_size
    pipeline_options = joint_pipeline_options(joint.meta, normal_index(joint))
    exported: list[Exported] = []
    for precision in ["fp32", "fp16"] if fp16 else ["fp32"]:
        tol = tolerance if precision == "fp32" else fp16_tolerance
        net = AsHalf(joint.model) if precision == "fp16" else joint.model

        def meta(kind: str, outputs: Sequence[str], precision: str = precision) -> dict[str, str]:
            return build_metadata(kind, inputs=[INPUT_NAME], outputs=list(outputs), precision=precision,
                                  classifier=joint.pair if kind != SEGMENTER else None,
                                  segmenter=joint.pair if kind != CLASSIFIER else None)

        head = {"temperature": pipeline_options["temperature"], "reference": pipeline_options["normal_index"]}
        exported.append(_export_one(
            CLASSIFIER, precision, ClassifierGraph(JointOutput(net, JointOutput.CLASSES), **head),
            ClassifierGraph(JointOutput(joint.model, JointOutput.CLASSES), **head),
            size=size, dynamic_axes={0: "batch"}, parity_shapes=[(n, 1, size, size) for n in (1, 3)],
            tolerance=tol, metadata=meta(CLASSIFIER, ClassifierGraph.output_names)))
        exported.append(_export_one(
            SEGMENTER, precision, SegmenterGraph(JointOutput(net, JointOutput.MASK)),
            SegmenterGraph(JointOutput(joint.model, JointOutput.MASK)),
            size=size, dynamic_axes={0: "batch", 2: "height", 3: "width"},
            parity_shapes=_segmenter_shapes(size), tolerance=tol,
            metadata=meta(SEGMENTER, SegmenterGraph.output_names)))
        exported.append(_export_one(
            TWO_STAGE, precision, JointPipeline(net, **pipeline_options),
            JointPipeline(joint.model, **pipeline_options), size=size, dynamic_axes={0: "batch"},
            parity_shapes=[(3, 1, size, size)], tolerance=tol,
            metadata=meta(TWO_STAGE, TwoStage.output_names)))
    return _write(exported, out, joint, joint)


def _write(exported: list[Exported], out: Path, cls: Source | None, seg: Source | None) -> ExportReport:
    """Write every file after all passed their parity checks, drop stale ones, then ``export.json``."""
    failed = [e.parity for e in exported if not e.parity.passed]
    if failed:
        raise DlmiError("; ".join(r.describe() for r in failed) + " — nothing was written")

    if out.exists() and not out.is_dir():
        raise DlmiError(f"{out}: exists and is not a folder")
    report = ExportReport(out=out)
    for item in exported:
        data = item.model.SerializeToString()
        report.files.append(write_atomic(out / item.name, lambda handle, data=data: handle.write(data)))
        report.parity.append(item.parity)
    written = {e.name for e in exported}
    for name in ALL_FILE_NAMES:
        stale = out / name
        if name not in written and stale.is_file():
            stale.unlink()
            report.removed.append(stale)
    digests = {e.name: file_digest(out / e.name) for e in exported}
    manifest = _manifest(exported, cls, seg, digests)
    write_manifest_and_card(out, manifest)  # export.json, then MODEL_CARD.md
    sources = {"classifier": cls, "segmenter": seg} if seg is not cls else {"joint model": seg}
    for role, source in sources.items():
        if source is not None and source.training is not None and not source.training["complete"]:
            done, planned = source.training["epochs_done"], source.training["epochs_planned"]
            report.warnings.append(
                f"the {role} run {source.checkpoint.parent} stopped after {done} of {planned} epochs "
                f"(interrupted?); exported as it is, and {out / EXPORT_MANIFEST} says 'complete': false"
            )
    return report


def _manifest(exported: Sequence[Exported], cls: Source | None, seg: Source | None,
              digests: dict[str, str]) -> dict[str, Any]:
    import onnxruntime

    from dlmi import __version__

    def source(s: Source | None) -> dict[str, Any] | None:
        if s is None:
            return None
        entry = {"checkpoint": str(s.checkpoint), "sha256": file_digest(s.checkpoint),
                 "run_dir": s.meta.get("run_dir"), "training": s.training, "meta": s.meta}
        if s.meta.get("members"):  # a fold ensemble: its ensemble.json and each member's weights
            entry["members"] = [{"checkpoint": str(m), "sha256": file_digest(m)} for m in s.meta["members"]]
        return entry

    with_classes = cls if cls is not None else seg
    assert with_classes is not None
    trainings = [s.training for s in (cls, seg) if s is not None]
    joint = seg is not None and seg.meta.get("task") == "joint"
    class_head = cls if cls is not None else seg if joint else None
    return {
        "classes": [str(c) for c in with_classes.meta.get("classes") or []],
        "normal_class": with_classes.meta.get("normal_class"),
        # the class head's temperature, applied inside the graphs (dlmi.runtime.calibration); 1.0 and
        # calibrated_on null where none was fitted (or the export has no class head)
        "temperature": temperature_of(class_head.meta) if class_head is not None else 1.0,
        "calibrated_on": calibrated_on(class_head.meta) if class_head is not None else None,
        "complete": None if None in trainings else all(t["complete"] for t in trainings),
        "dlmi_version": __version__,
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": OPSET,
        "versions": {
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        },
        "classifier": source(cls),
        "segmenter": source(seg),
        "files": {
            e.name: {"kind": e.kind, "precision": e.precision, "sha256": digests[e.name],
                     "parity": e.parity.to_json()} for e in exported
        },
        # what a DICOM SEG of the masks shows (dlmi predict --dicom-seg): the dataset plugin's segment codes
        "segment": dataset_segment_codes((seg or with_classes).meta.get("dataset")).to_json(),
    }
