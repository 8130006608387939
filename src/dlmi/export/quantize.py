"""int8 ONNX files for CPUs: static quantization of an export folder's fp32 files, checked against them.

``classifier_int8.onnx``, ``unet_int8.onnx`` and ``two_stage_int8.onnx`` are made from the fp32 files by
onnxruntime's static quantization in QDQ format: weights int8, symmetric, per output channel; activations
uint8, per tensor, their ranges calibrated (min-max) by running the fp32 model on training-side images. The
input stays float32 in 0–1 (the normalisation is unchanged: the first QuantizeLinear sits inside the graph),
and so do the outputs; the convolutions, linear layers and what lies between them (:data:`QUANTIZED_OPS`)
run in int8; the layers that compute the logits, the softmax, sigmoid and the gate stay float (rounding the
logits to 256 levels is what would flip a close call). onnxruntime's CPU provider fuses each QDQ pattern
into an integer kernel (``QLinearConv``, ``MatMulInteger``...), which is where the speed comes from.

Nothing is written unless the int8 files agree with the fp32 ones on held-out (val-side) images: the mask
Dice between the two at least :data:`MIN_MASK_DICE` (over all the images' pixels together; the mean and the
worst per-image Dice are reported too — one image whose class flips moves the mean by 1/N), and the same
class on at least :data:`MIN_CLASS_AGREEMENT` of the images. The agreement and the model-time
speed ratio (fp32 time ÷ int8 time, same images, same threads) are stored in each file's metadata and in
``export.json``.

Images: by default the training and the validation side of the segmenter's run (its ``split.json``,
dataset and data folder from ``config.json``; the classifier's run when there is no segmenter), or any two
folders of images (``calibration_dir``, ``check_dir``).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from dlmi.atomic import write_atomic
from dlmi.digest import file_digest
from dlmi.errors import DlmiError
from dlmi.export.files import file_name
from dlmi.export.metadata import (
    CLASSIFIER,
    EXPORT_MANIFEST,
    SEGMENTER,
    TWO_STAGE,
    read_metadata,
    set_metadata,
)
from dlmi.export.model_card import write_manifest_and_card

INT8 = "int8"
MIN_MASK_DICE = 0.98
MIN_CLASS_AGREEMENT = 0.99
CALIBRATION_IMAGES = 64
CHECK_IMAGES = 200
BATCH = 8
TIMING_REPEATS = 3
# The convolutions and linear layers, and the operators between them (so the activations stay int8 from one
# convolution to the next instead of being dequantized and quantized again); the heads (softmax, sigmoid),
# the gate and the U-Net's padding and cropping stay float.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "MaxPool", "Concat")


@dataclass
class ImageSet:
    """Greyscale uint8 images (their own sizes) and where they came from."""

    description: str
    images: list[np.ndarray]


@dataclass
class Agreement:
    """How one int8 file compares with its fp32 file on the check images, and how much faster it runs."""

    file: str
    source: str
    images: int
    class_agreement: float | None = None
    gate_agreement: float | None = None
    mask_dice: float | None = None
    mask_dice_mean: float | None = None
    mask_dice_worst: float | None = None
    fp32_seconds: float = 0.0
    int8_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def speed_ratio(self) -> float:
        return self.fp32_seconds / self.int8_seconds if self.int8_seconds > 0 else float("nan")

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["speed_ratio"] = round(self.speed_ratio, 3)
        data["passed"] = self.passed
        return data

    def describe(self) -> str:
        parts = []
        if self.class_agreement is not None:
            parts.append(f"same class {self.class_agreement:.1%}")
        if self.gate_agreement is not None:
            parts.append(f"same gate {self.gate_agreement:.1%}")
        if self.mask_dice is not None:
            parts.append(f"mask Dice vs fp32 {self.mask_dice:.4f} (per image: mean "
                         f"{self.mask_dice_mean:.4f}, worst {self.mask_dice_worst:.4f})")
        verdict = "ok" if self.passed else "FAILED: " + "; ".join(self.failures)
        return (f"{self.file}: int8 check {verdict} ({self.images} images: {', '.join(parts)}; model time "
                f"fp32 {self.fp32_seconds:.3f} s, int8 {self.int8_seconds:.3f} s, {self.speed_ratio:.2f}x)")


@dataclass
class Int8Report:
    """What :func:`quantize_export` wrote and how each file compared with fp32."""

    out: Path
    calibration: str
    check: str
    files: list[Path] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"int8 calibration: {self.calibration}", f"int8 check: {self.check}"]
        lines += [a.describe() for a in self.agreements]
        lines += [f"wrote {p} ({p.stat().st_size / 2**20:.1f} MiB)" for p in self.files]
        return "\n".join(lines)


# --- images ---------------------------------------------------------------------------------------------


def _spread(count: int, limit: int) -> list[int]:
    """Up to ``limit`` indices spread evenly over ``range(count)`` (all of them when ``count <= limit``)."""
    if count <= limit:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, limit)})


def folder_images(folder: str | os.PathLike[str], limit: int) -> ImageSet:
    """Up to ``limit`` images under ``folder`` (recursively, as ``dlmi predict`` finds them)."""
    from dlmi.discovery import find_images
    from dlmi.imageio import read_grey

    folder = Path(folder)
    files = find_images(folder)
    if not files:
        raise DlmiError(f"{folder}: no images to calibrate or check int8 files with")
    chosen = [files[i] for i in _spread(len(files), limit)]
    return ImageSet(f"{len(chosen)} of {len(files)} images under {folder}",
                    [read_grey(folder / f) for f in chosen])


def _run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DlmiError(f"{path}: not found; give --calibration-dir and --check-dir instead") from None
    except json.JSONDecodeError as exc:
        raise DlmiError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not data.get("dataset"):
        raise DlmiError(f"{path}: no dataset recorded; give --calibration-dir and --check-dir instead")
    return data


def run_side_images(run_dir: str | os.PathLike[str], side: str, limit: int,
                    data_dir: str | os.PathLike[str] | None = None) -> ImageSet:
    """Up to ``limit`` images of one side (train, val, test) of a training run's split — of its own fold
    when it trained on one. For a fold ensemble: the sides of its first member (``fold-0``)."""
    from dlmi.datasets.base import list_samples, load_sample
    from dlmi.plugins import get_dataset
    from dlmi.runtime.ensemble import is_ensemble, read_manifest
    from dlmi.splits import load_split, split_samples

    run_dir = Path(run_dir)
    if is_ensemble(run_dir):
        run_dir = run_dir / str(read_manifest(run_dir)["members"][0])
    split_path = run_dir / "split.json"
    if not split_path.is_file():
        raise DlmiError(f"{split_path}: not found; give --calibration-dir and --check-dir instead")
    config = _run_config(run_dir)
    source = get_dataset(str(config["dataset"]))
    folder = Path(data_dir) if data_dir is not None else (
        Path(config["data_dir"]) if config.get("data_dir") else None)
    if getattr(source, "needs_data_dir", True) and (folder is None or not folder.is_dir()):
        raise DlmiError(f"{run_dir}: its data folder {folder} is not here; give --data-dir "
                        "(or --calibration-dir and --check-dir)")
    fold = config.get("fold")
    samples = split_samples(load_split(split_path), list_samples(source, folder), side,
                            fold=int(fold) if fold is not None else None)
    if not samples:
        raise DlmiError(f"{split_path}: the {side} side is empty; give --calibration-dir and --check-dir")
    chosen = [samples[i] for i in _spread(len(samples), limit)]
    return ImageSet(f"{len(chosen)} of the {len(samples)} {side}-side images of {run_dir} "
                    f"({config['dataset']})", [load_sample(source, s)[0] for s in chosen])


# --- quantizing and checking ----------------------------------------------------------------------------


def _inputs(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """(N, 1, S, S) float32 model inputs, preprocessed exactly as ``dlmi predict`` does."""
    from dlmi.runtime.preprocess import model_input

    return np.stack([model_input(image, size) for image in images]).astype(np.float32)


def _batches(inputs: np.ndarray) -> list[np.ndarray]:
    return [inputs[i:i + BATCH] for i in range(0, len(inputs), BATCH)]


def _session(path_or_bytes: Path | bytes, threads: int | None):
    import onnxruntime as ort

    from dlmi.runtime.providers import session_options

    source = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])


_PASS_THROUGH_OPS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Transpose", "Where"}


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """The layers that compute the logits: the nodes whose output reaches a Softmax or Sigmoid through
    shape-only operators (or the gate's Where). They stay float, so the logits are not rounded to 256 levels
    before the class arg-max and the mask threshold (that rounding is what flips a close call)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    heads: list[str] = []
    pending = [name for node in model.graph.node if node.op_type in ("Softmax", "Sigmoid")
               for name in node.input[:1]]
    while pending:
        source = producers.get(pending.pop())
        if source is None:
            continue
        if source.op_type in _PASS_THROUGH_OPS:
            pending += list(source.input[1:3]) if source.op_type == "Where" else list(source.input[:1])
        elif source.op_type in QUANTIZED_OPS and source.name not in heads:
            heads.append(source.name)
    return heads


def _quantize(fp32: Path, calibration: np.ndarray, workdir: Path) -> bytes:
    """The QDQ int8 model of ``fp32``, calibrated on ``calibration`` (N, 1, S, S); the logit layers
    (:func:`head_nodes`) stay float."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(_batches(calibration))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    prepared, quantized = workdir / f"{fp32.stem}.pre.onnx", workdir / f"{fp32.stem}.int8.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTIZED_OPS),
                    nodes_to_exclude=head_nodes(onnx.load(prepared)), extra_options={"WeightSymmetric": True})
    return quantized.read_bytes()


def _timed(session, batches: Sequence[np.ndarray]) -> tuple[list[list[np.ndarray]], float]:
    """Every batch's outputs, and the median over repeats of the time to run them all."""
    outputs = [session.run(None, {"image": b}) for b in batches]  # also the warm-up
    times = []
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        for batch in batches:
            session.run(None, {"image": batch})
        times.append(time.perf_counter() - start)
    return outputs, statistics.median(times)


def mask_dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image Dice of two boolean mask batches (N, ...); two empty masks score 1."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    both = (a & b).sum(axis=1)
    total = a.sum(axis=1) + b.sum(axis=1)
    return np.where(total == 0, 1.0, 2.0 * both / np.maximum(total, 1))


def _compare(kind: str, names: list[str], fp32: list[list[np.ndarray]], int8: list[list[np.ndarray]],
             threshold: float, agreement: Agreement) -> None:
    def gather(outputs: list[list[np.ndarray]], name: str) -> np.ndarray:
        index = names.index(name)
        return np.concatenate([o[index] for o in outputs])

    probs_name = "class_probs" if kind == TWO_STAGE else "probs"
    if kind in (CLASSIFIER, TWO_STAGE):
        same = gather(fp32, probs_name).argmax(axis=1) == gather(int8, probs_name).argmax(axis=1)
        agreement.class_agreement = float(same.mean())
        if agreement.class_agreement < MIN_CLASS_AGREEMENT:
            agreement.failures.append(f"same class on {agreement.class_agreement:.1%} < "
                                      f"{MIN_CLASS_AGREEMENT:.0%} of the images")
    if kind == TWO_STAGE:
        agreement.gate_agreement = float((gather(fp32, "gated") == gather(int8, "gated")).mean())
    if kind in (SEGMENTER, TWO_STAGE):
        mask_name = "mask_probs" if kind == TWO_STAGE else "probs"
        reference, quantized = gather(fp32, mask_name) > threshold, gather(int8, mask_name) > threshold
        dice = mask_dice(reference, quantized)
        agreement.mask_dice = float(mask_dice(reference.reshape(1, -1), quantized.reshape(1, -1))[0])
        agreement.mask_dice_mean, agreement.mask_dice_worst = float(dice.mean()), float(dice.min())
        if agreement.mask_dice < MIN_MASK_DICE:
            agreement.failures.append(f"mask Dice vs fp32 {agreement.mask_dice:.4f} < {MIN_MASK_DICE}")


def quantize_export(
    out: str | os.PathLike[str] = "exported",
    *,
    calibration_dir: str | os.PathLike[str] | None = None,
    check_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    check_images: int = CHECK_IMAGES,
    threads: int | None = None,
) -> Int8Report:
    """Write ``*_int8.onnx`` beside each fp32 file of the export folder ``out``, after checking each.

    Calibration images: ``calibration_dir``, else the train side of the segmenter's (or classifier's) run;
    check images: ``check_dir``, else that run's val side (``data_dir`` where the run's data folder moved).
    A failed check raises a :class:`DlmiError` with the numbers, and no int8 file is written.
    """
    out = Path(out)
    fp32 = {kind: out / file_name(kind) for kind in (CLASSIFIER, SEGMENTER, TWO_STAGE)
            if (out / file_name(kind)).is_file()}
    if not fp32:
        raise DlmiError(f"{out}: no fp32 ONNX files to quantize; write them with `dlmi export onnx`")
    for count, option in ((calibration_images, "calibration images"), (check_images, "check images")):
        if count < 1:
            raise DlmiError(f"int8: the number of {option} must be at least 1, got {count}")
    manifest_path = out / EXPORT_MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    run_dir = next((Path(manifest[r]["run_dir"]) for r in ("segmenter", "classifier")
                    if isinstance(manifest.get(r), dict) and manifest[r].get("run_dir")), None)
    if (calibration_dir is None or check_dir is None) and run_dir is None:
        raise DlmiError(f"{manifest_path}: names no training run to take images from; "
                        "give --calibration-dir and --check-dir")
    calibration = (folder_images(calibration_dir, calibration_images) if calibration_dir is not None
                   else run_side_images(run_dir, "train", calibration_images, data_dir))
    check = (folder_images(check_dir, check_images) if check_dir is not None
             else run_side_images(run_dir, "val", check_images, data_dir))

    report = Int8Report(out=out, calibration=calibration.description, check=check.description)
    written: list[tuple[str, bytes]] = []
    with tempfile.TemporaryDirectory(prefix="dlmi-int8-") as tmp:
        for kind, path in fp32.items():
            props = read_metadata(path)
            size = int(props["image_size"])
            quantized = _quantize(path, _inputs(calibration.images, size), Path(tmp))
            checks = _batches(_inputs(check.images, size))
            reference, int8_session = _session(path, threads), _session(quantized, threads)
            names = [o.name for o in reference.get_outputs()]
            agreement = Agreement(file=file_name(kind, INT8), source=path.name, images=len(check.images))
            fp32_outputs, agreement.fp32_seconds = _timed(reference, checks)
            int8_outputs, agreement.int8_seconds = _timed(int8_session, checks)
            _compare(kind, names, fp32_outputs, int8_outputs, float(props.get("threshold", 0.5)), agreement)
            report.agreements.append(agreement)
            model = onnx.load_from_string(quantized)
            set_metadata(model, {**props, "precision": INT8, "quantization": json.dumps({
                "method": "onnxruntime.quantization.quantize_static, QDQ format",
                "weights": "int8, symmetric, per output channel",
                "activations": "uint8, per tensor, min-max calibrated",
                "operators": list(QUANTIZED_OPS),
                "float_heads": "the layers computing the logits stay float32",
                "calibration": calibration.description,
                "fp32_file": path.name,
                "fp32_sha256": file_digest(path),
                "check": {k: v for k, v in agreement.to_json().items() if k not in ("file", "source")},
            })})
            written.append((agreement.file, model.SerializeToString()))
    failed = [a for a in report.agreements if not a.passed]
    if failed:
        raise DlmiError("; ".join(a.describe() for a in failed) + " — no int8 file was written")
    for name, data in written:
        report.files.append(write_atomic(out / name, lambda handle, data=data: handle.write(data)))
    if manifest:
        files = manifest.setdefault("files", {})
        for agreement in report.agreements:
            files[agreement.file] = {"kind": next(k for k, p in fp32.items() if p.name == agreement.source),
                                     "precision": INT8, "source": agreement.source,
                                     "sha256": file_digest(out / agreement.file),
                                     "int8_check": agreement.to_json()}
        manifest["int8"] = {"calibration": calibration.description, "check": check.description,
                            "min_mask_dice": MIN_MASK_DICE, "min_class_agreement": MIN_CLASS_AGREEMENT,
                            "operators": list(QUANTIZED_OPS)}
        write_manifest_and_card(out, manifest)  # export.json, then MODEL_CARD.md (listing the int8 files)
    return report
