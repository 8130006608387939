"""Every path gives the same per-image answer: `dlmi evaluate` (the evaluator's predictions), out-of-fold
scoring, `dlmi predict` (onnx, torch, `--tile` on images of the model's size, `--int8`) and
`dlmi.load_predictor(...).predict`, for a classifier+segmenter pair, a joint model and a 2-fold ensemble, each
trained for one epoch on the synthetic dataset.

The reference is the Python API on the torch backend (it returns the probabilities). Tolerance: a pixel whose
reference probability lies within :data:`TOL` (the exported fp32 graphs' parity tolerance) of the threshold
may fall on either side, and so may a decision whose margin is below it (the top two class probabilities, or
P(normal) and the ensemble's normal threshold); everything else is identical — classes, gate decisions and
every other pixel. int8 is held to its documented check (:mod:`dlmi.export.quantize`): the same class and
gate on :data:`~dlmi.export.quantize.MIN_CLASS_AGREEMENT` of the images, mask Dice at least
:data:`~dlmi.export.quantize.MIN_MASK_DICE`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dlmi
from dlmi.cli.main import run
from dlmi.datasets.loader import resize_image
from dlmi.evaluation.evaluator import Evaluator, load_inputs
from dlmi.export.onnx_export import FP32_TOLERANCE
from dlmi.export.quantize import MIN_CLASS_AGREEMENT, MIN_MASK_DICE
from dlmi.plugins import get_dataset
from dlmi.runtime.gating import Gate
from dlmi.runtime.preprocess import model_input
from dlmi.runtime.trained import load_trained
from dlmi.splits import load_split, split_samples

pytestmark = pytest.mark.slow

TOL = FP32_TOLERANCE
JOINT_SIZE = 32
PAIR_SIZE = 64  # seed-cnn needs a multiple of 64; the classifier and the U-Net share one size
IMAGES = 24


@dataclasses.dataclass
class Answer:
    """One image's answer from one path: the class, the gate, the mask at the model's size."""

    label: str | None
    gated: bool | None
    mask: np.ndarray


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A seed-cnn + aided U-Net pair (64 px), and a 2-fold joint ensemble (32 px) whose fold-0 is the joint
    model: every run one epoch."""
    from dlmi.training import TrainConfig, train_classifier, train_segmenter
    from dlmi.training.folds import train_folds

    base = tmp_path_factory.mktemp("paths")
    common = {"dataset": "synthetic", "epochs": 1, "batch_size": 16, "device": "cpu", "quiet": True}
    cls = train_classifier(TrainConfig(task="classification", out=str(base / "cls"), model="seed-cnn",
                                       image_size=PAIR_SIZE, **common))
    seg = train_segmenter(TrainConfig(task="segmentation", out=str(base / "seg"), base_channels=4,
                                      aid=str(cls), image_size=PAIR_SIZE, **common))
    ensemble = train_folds(TrainConfig(task="joint", out=str(base / "ensemble"), base_channels=4,
                                       image_size=JOINT_SIZE, **common), 2)
    return {"base": base, "cls": Path(cls), "seg": Path(seg), "ensemble": Path(ensemble)}


def write_images(folder: Path, keys: list[str], size: int) -> Path:
    """The synthetic samples ``keys`` as PNGs of exactly the model's size (what evaluation reads)."""
    source = get_dataset("synthetic")
    by_key = {s.key: s for s in source.samples(None)}
    folder.mkdir(parents=True, exist_ok=True)
    for key in keys:
        Image.fromarray(resize_image(source.load(by_key[key])[0], size)).save(folder / Path(key).name)
    return folder


def evaluated(run_dir: Path) -> tuple[dict[str, Answer], list[str]]:
    """`dlmi evaluate`'s per-image predictions on the test side (the first :data:`IMAGES`)."""
    preds = Evaluator(load_inputs(run_dir, device="cpu"), device="cpu").predictions("test")
    classes = load_trained(run_dir).classes
    masks = preds.aided_masks()
    answers = {Path(key).name: Answer(classes[int(np.argmax(preds.class_logits[i]))], bool(preds.gated[i]),
                                      masks[i])
               for i, key in enumerate(preds.keys[:IMAGES])}
    return answers, preds.keys[:IMAGES]


def predicted(images: Path, models: list[Path], out: Path, *flags: str) -> dict[str, Answer]:
    args = ["predict", "--aided", str(images), "--out", str(out), *flags]
    for model in models:
        args += ["--models", str(model)]
    assert run(args) == 0
    records = json.loads((out / "predictions.json").read_text())["predictions"]
    return {r["file"]: Answer(r["class"], r["gated"], np.asarray(Image.open(out / r["mask"])) > 0)
            for r in records}


def reference(images: Path, models: list[Path]) -> tuple[dict[str, dict], Gate]:
    """The Python API (torch backend) on each image: probabilities, class, gate, mask."""
    predictor = dlmi.load_predictor(models if len(models) > 1 else models[0], aided=True, backend="torch",
                                    provider="cpu")
    out = {}
    for path in sorted(images.glob("*.png")):
        grey = np.asarray(Image.open(path))
        p = predictor.predict(grey)
        ungated = predictor.backend.segment(model_input(grey, grey.shape[0])[None])[0, 0]
        out[path.name] = {"answer": Answer(p.label, p.gated, p.mask), "probs": p.probs, "mask_probs": ungated}
    return out, predictor.backend.info.gate()


def ambiguous(ref: dict, gate: Gate) -> bool:
    """Whether the reference's class or gate decision lies within :data:`TOL` of flipping."""
    probs = np.sort(ref["probs"])
    if probs[-1] - probs[-2] < TOL:
        return True
    normal = ref["probs"][gate.normal_index]
    if gate.normal_threshold is not None and abs(normal - gate.normal_threshold) < TOL:
        return True
    if gate.min_lesion_pixels > 0:
        near = int((np.abs(ref["mask_probs"] - gate.threshold) < TOL).sum())
        area = int((ref["mask_probs"] > gate.threshold).sum())
        return abs(area - gate.min_lesion_pixels) <= near
    return False


def assert_same(name: str, got: dict[str, Answer], refs: dict[str, dict], gate: Gate) -> None:
    assert sorted(got) == sorted(refs), name
    for key, ref in refs.items():
        answer, expected = got[key], ref["answer"]
        if ambiguous(ref, gate):
            continue
        assert (answer.label, answer.gated) == (expected.label, expected.gated), (name, key)
        differ = answer.mask != expected.mask
        near = np.abs(ref["mask_probs"] - gate.threshold) < TOL
        assert not (differ & ~near).any(), (name, key, int((differ & ~near).sum()))


def assert_int8_close(got: dict[str, Answer], refs: dict[str, dict]) -> None:
    keys = sorted(refs)
    same_class = np.mean([got[k].label == refs[k]["answer"].label for k in keys])
    same_gate = np.mean([got[k].gated == refs[k]["answer"].gated for k in keys])
    assert same_class >= MIN_CLASS_AGREEMENT and same_gate >= MIN_CLASS_AGREEMENT
    a = np.stack([got[k].mask for k in keys])
    b = np.stack([refs[k]["answer"].mask for k in keys])
    total = a.sum() + b.sum()
    assert total == 0 or 2 * (a & b).sum() / total >= MIN_MASK_DICE


def all_paths(base: Path, tag: str, run_dir: Path, torch_models: list[Path], export: list[str], size: int,
              int8: bool) -> None:
    """evaluate, predict onnx / torch / --tile / --int8 and the Python API on the same test images."""
    by_evaluate, keys = evaluated(run_dir)
    images = write_images(base / f"{tag}-images", keys, size)
    exported = base / f"{tag}-exported"
    assert run(["export", "onnx", *export, "--out", str(exported), *(["--int8"] if int8 else [])]) == 0
    refs, gate = reference(images, torch_models)
    assert_same(f"{tag} evaluate", by_evaluate, refs, gate)
    assert_same(f"{tag} api onnx", {
        k: Answer(p.label, p.gated, p.mask) for k, p in (
            (path.name, dlmi.load_predictor(exported, aided=True, provider="cpu").predict(
                np.asarray(Image.open(path)))) for path in sorted(images.glob("*.png")))}, refs, gate)
    for backend, models in (("onnx", [exported]), ("torch", torch_models)):
        for flags in ([], ["--tile"]):
            out = base / f"{tag}-{backend}{''.join(flags)}"
            answers = predicted(images, models, out, "--backend", backend, *flags)
            assert_same(f"{tag} predict {backend} {flags}", answers, refs, gate)
    if int8:
        assert_int8_close(predicted(images, [exported], base / f"{tag}-int8", "--int8"), refs)


def test_pair(trained):
    cls, seg = trained["cls"], trained["seg"]
    all_paths(trained["base"], "pair", seg, [seg, cls], ["--classifier", str(cls), "--segmenter", str(seg)],
              PAIR_SIZE, int8=True)


def test_joint(trained):
    joint = trained["ensemble"] / "fold-0"
    all_paths(trained["base"], "joint", joint, [joint], ["--segmenter", str(joint)], JOINT_SIZE, int8=False)


def test_ensemble(trained):
    ensemble = trained["ensemble"]
    all_paths(trained["base"], "ensemble", ensemble, [ensemble], ["--segmenter", str(ensemble)], JOINT_SIZE,
              int8=False)


def test_out_of_fold_scoring_is_the_runtime_on_each_held_out_member(trained):
    """The out-of-fold masks and gates that chose ensemble.json's settings are what the shipped pipeline gives
    with each held-out member alone (a one-member ensemble with the chosen settings) on its val images."""
    from dlmi.training.folds import oof_masks, out_of_fold

    base, ensemble = trained["base"], trained["ensemble"]
    manifest = json.loads((ensemble / "ensemble.json").read_text())
    # the gate sees the temperature-scaled probabilities, out of fold as in the shipped pipeline
    oof = out_of_fold(ensemble, manifest["members"], flip_tta=manifest["flip_tta"],
                      temperature=manifest["temperature"])
    settings = {k: manifest[k] for k in ("threshold", "min_lesion_pixels", "normal_threshold")}
    masks, gated = oof_masks(oof, **settings)
    classes = load_trained(ensemble).classes
    split = load_split(ensemble / "split.json")
    samples = get_dataset("synthetic").samples(None)
    position = {key: i for i, key in enumerate(oof["keys"])}
    for fold, member in enumerate(manifest["members"]):
        alone = base / f"oof-{fold}"
        alone.mkdir()
        (alone / "ensemble.json").write_text(json.dumps({**manifest, "members": [f"../ensemble/{member}"]}))
        keys = [s.key for s in split_samples(split, samples, "val", fold=fold)][:IMAGES // 2]
        images = write_images(base / f"oof-{fold}-images", keys, JOINT_SIZE)
        refs, gate = reference(images, [alone])
        assert gate == Gate(0, settings["normal_threshold"], settings["min_lesion_pixels"],
                            settings["threshold"])
        by_oof = {Path(k).name: Answer(classes[int(np.argmax(oof["class_probs"][position[k]]))],
                                       bool(gated[position[k]]), masks[position[k]]) for k in keys}
        assert_same(f"out-of-fold {fold}", by_oof, refs, gate)
