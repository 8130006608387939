"""`dlmi reproduce --only best` end to end on tiny generated folders: ensembles, export, report, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from busi_folder import write_busi_folder
from PIL import Image

from dlmi.experiments.best import TARGETS


def write_brain_folder(root, per_class: int = 10, size: int = 72):
    """``yes/`` (a bright blob) and ``no/`` images as real PNG and JPEG files."""
    for label, name in enumerate(("no", "yes")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(1000 * label + i)
            image = rng.normal(60, 20, (size, size + 8))
            if label:
                cy, cx = rng.integers(20, size - 20, 2)
                yy, xx = np.mgrid[0:size, 0:size + 8]
                image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = 230
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / name / f"{name}{i}{suffix}")
    return root


@pytest.mark.slow
def test_reproduce_only_best_trains_exports_and_reports(tmp_path):
    from dlmi.cli.main import run

    data = tmp_path / "data"
    write_busi_folder(data / "busi", per_class=8, size=48)
    write_brain_folder(data / "brain_mri")
    out, results = tmp_path / "best", tmp_path / "results"
    args = ["reproduce", "--data-root", str(data), "--profile", "tiny", "--only", "best", "--out", str(out),
            "--results", str(results)]
    assert run(args) == 0

    best = json.loads((results / "best-tiny.json").read_text())
    assert set(best) == set(TARGETS) | {"train_minutes", "command"}
    for key in TARGETS:
        entry = best[key]
        assert set(entry) == {"value", "low", "high"}
        assert entry["low"] <= entry["value"] <= entry["high"]
    assert best["command"] == f"dlmi reproduce --data-root {data} --profile tiny --only best --out {out}"
    seconds = json.loads((out / "timing.json").read_text())["busi-best"]
    assert seconds > 0 and best["train_minutes"] == round(seconds / 60, 1)

    for name in ("busi-best", "brain-mri-best"):
        manifest = json.loads((out / name / "ensemble.json").read_text())
        assert manifest["members"] == ["fold-0", "fold-1"]
        assert (out / name / "exported" / "export.json").is_file()
    assert (out / "busi-best" / "exported" / "two_stage.onnx").is_file()

    # The BUSI test side is the test side of the same split the seed rows use.
    from dlmi.splits import make_split

    plain = make_split("busi", data / "busi")
    folded = json.loads((out / "busi-best" / "split.json").read_text())
    assert sorted(folded["test"]) == sorted(plain.test)

    detail = json.loads((results / "best-tiny-detail.json").read_text())
    steps = [row["step"] for row in detail["ablation"]]
    assert steps[0] == "one joint model (fold 0)" and steps[-1].endswith("(= dlmi best)")
    assert all("effect_vs_previous" in row for row in detail["ablation"][1:])
    report = (results / "best-tiny.md").read_text()
    assert "Ablation" in report and "lesion_dice" in report
    # The report names the post-processing ensemble.json chose, and the out-of-fold scores recipes are
    # compared on.
    busi_manifest = json.loads((out / "busi-best" / "ensemble.json").read_text())
    smallest = busi_manifest["min_lesion_pixels"]
    size_rule = f"lesions under {smallest} px called empty" if smallest else "no lesion-size rule"
    assert f"threshold {busi_manifest['threshold']}, {size_rule}, gate: " in report
    brain_manifest = json.loads((out / "brain-mri-best" / "ensemble.json").read_text())
    assert detail["oof"]["brain-mri-best"]["accuracy"] == brain_manifest["oof_accuracy"]
    assert detail["oof"]["busi-best"]["accuracy"] == busi_manifest["postprocess"]["oof_accuracy"]
    assert f"brain MRI accuracy {brain_manifest['oof_accuracy']:.3f}" in report

    # A second run trains nothing more: the ensembles and their exports are reused.
    stamp = (out / "busi-best" / "fold-0" / "best.pt").stat().st_mtime_ns
    assert run(args) == 0
    assert (out / "busi-best" / "fold-0" / "best.pt").stat().st_mtime_ns == stamp
