"""``dlmi reproduce`` end to end on generated data: the tiny profile, the results files, and resumption.

One run of the whole command (the seed's experiments, then ``dlmi best`` into ``OUT/best``) is shared by the
seed test and the best test (module fixture ``reproduced``): the best configuration's training and ONNX export
are the costliest part, and the seed test used to pay for them too without looking at them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlmi.experiments.best import TARGETS

# The reference report's test mIoU per loss, trained unaided / aided (../shared/seed/SUMMARY.md).
REFERENCE_TEST_MIOU = {"bce": ("0.48947", "0.51996"), "mse": ("0.56055", "0.56304"),
                  "dice": ("0.54007", "0.57291")}
EXPERIMENTS = ("brain-mri-cls", "busi-cls", "busi-unet-bce", "busi-unet-mse", "busi-unet-dice",
               "busi-unet-bce-aided", "busi-unet-mse-aided", "busi-unet-dice-aided", "busi-cls-improved",
               "busi-unet-dice-bce-improved")


def table_row(markdown: str, *first_cells: str) -> list[str]:
    """The cells of the one Markdown table row whose leading cells are ``first_cells`` (the last one may be
    followed by more text, e.g. ``aided (busi-cls)``)."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        head = cells[:len(first_cells)]
        *fixed, last = first_cells
        if line.startswith("|") and head[:-1] == fixed and head[-1].startswith(last):
            rows.append(cells)
    assert len(rows) == 1, f"{len(rows)} rows start with {first_cells}"
    return rows[0]


def interval_text(number: dict) -> str:
    """How the report writes a measured number with its interval: ``value [low, high]`` to 3 decimals."""
    return f"{number['value']:.3f} [{number['low']:.3f}, {number['high']:.3f}]"


def _brain_mri(root: Path, per_class: int = 12) -> None:
    """A brain-MRI-layout folder (no/, yes/): dark discs, plus a bright blob in 'yes' images; real PNG and
    JPEG files (every other image is a JPEG, as in the real set)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:48, :48]
    for label, name in enumerate(("no", "yes")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = 60.0 * ((yy - 24) ** 2 + (xx - 24) ** 2 < 400) + rng.normal(0, 20, (48, 48))
            if label:
                cy, cx = rng.integers(14, 34, size=2)
                image += 150.0 * ((yy - cy) ** 2 + (xx - cx) ** 2 < 30)
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{name}{i}{suffix}")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("data")
    done = run_cli("data", "synth", "--out", str(root / "busi"), "--count", "36", "--size", "48")
    assert done.returncode == 0, done.stderr
    _brain_mri(root / "brain_mri")
    return root


@pytest.fixture(scope="module")
def reproduced(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``dlmi reproduce --profile tiny`` run once (a real subprocess): the seed's experiments into ``out``,
    dlmi best into ``out/best``; both write their results files into ``results``."""
    from tests.conftest import run_cli

    base = tmp_path_factory.mktemp("reproduce")
    out, results = base / "runs", base / "results"
    args = ("reproduce", "--data-root", str(data_root), "--profile", "tiny", "--out", str(out),
            "--results", str(results), "--cache-dir", str(base / "cache"))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    return {"args": args, "out": out, "results": results}


@pytest.mark.slow
def test_reproduce_tiny_writes_all_rows_and_resumes(reproduced: dict, cli) -> None:
    args, out, results = reproduced["args"], reproduced["out"], reproduced["results"]

    doc = json.loads((results / "reproduce-tiny.json").read_text())
    assert doc["complete"] is True
    assert [e["name"] for e in doc["experiments"]] == list(EXPERIMENTS)
    assert all(e["status"] == "done" for e in doc["experiments"])
    for name in ("busi", "brain-mri"):
        split = doc["splits"][name]
        assert Path(split["file"]).is_file()
        recorded = json.loads(Path(split["recorded_as"]).read_text())
        assert recorded == json.loads(Path(split["file"]).read_text())
        assert split["train"] > 0 and split["test"] > 0
    # The classifier and every U-Net of BUSI used the recorded split.
    busi_split = json.loads(Path(doc["splits"]["busi"]["file"]).read_text())
    for name in EXPERIMENTS[1:]:
        run_split = json.loads((out / name / "split.json").read_text())
        assert run_split["test"] == busi_split["test"]
    by_name = {e["name"]: e for e in doc["experiments"]}
    for side in ("train", "test"):
        accuracy = by_name["busi-cls"]["scores"][side]["accuracy"]
        assert 0.0 <= accuracy["low"] <= accuracy["value"] <= accuracy["high"] <= 1.0
        for name in ("busi-unet-dice", "busi-unet-dice-aided"):
            variants = by_name[name]["scores"][side]["variants"]
            assert {"unaided", "aided"} <= set(variants)
            assert 0.0 <= variants["aided"]["miou_seed"]["value"] <= 1.0
    assert by_name["busi-unet-dice-aided"]["trained_aided"] is True

    md = (results / "reproduce-tiny.md").read_text()
    for name in EXPERIMENTS:
        assert name in md
    # Each row puts the reference report's number beside the number this run measured (read back from its
    # evaluation).
    for label, key, reference_test in (("accuracy (3 classes)", "accuracy", "0.8526"),
                                       ("detect accuracy", "detect_accuracy", "0.904")):
        row = table_row(md, "busi-cls", label)
        measured = json.loads((out / "busi-cls" / "eval-test.json").read_text())["classification"][key]
        assert row[3] == reference_test and row[5] == interval_text(measured), row
    for loss, (unaided_test, aided_test) in REFERENCE_TEST_MIOU.items():
        for run, training, reference_test in ((f"busi-unet-{loss}", "unaided", unaided_test),
                                              (f"busi-unet-{loss}-aided", "aided", aided_test)):
            row = table_row(md, loss, training, training)
            variants = json.loads((out / run / "eval-test.json").read_text())["segmentation"]["variants"]
            assert row[4] == reference_test, row
            assert row[6] == interval_text(variants[training]["miou_seed"]), row
            assert row[8] == interval_text(variants[training]["lesion_dice"]), row
    assert "empty-mask rule" in md and "lesion Dice" in md and "Status: **complete**" in md

    # Re-running skips every finished experiment (no checkpoint is rewritten); one whose test evaluation is
    # missing counts as unfinished: it is evaluated again, not retrained.
    stamps = {name: (out / name / "best.pt").stat().st_mtime_ns for name in EXPERIMENTS}
    (out / "busi-unet-mse" / "eval-test.json").unlink()
    second = cli(*args)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("complete, skipped") == len(EXPERIMENTS) - 1
    assert "evaluating busi-unet-mse " in second.stderr and "training busi-unet-mse " not in second.stderr
    assert (out / "busi-unet-mse" / "eval-test.json").is_file()
    assert stamps == {name: (out / name / "best.pt").stat().st_mtime_ns for name in EXPERIMENTS}
    assert json.loads((results / "reproduce-tiny.json").read_text())["complete"] is True


@pytest.mark.slow
def test_reproduce_only_best_trains_exports_and_reports(reproduced: dict, data_root: Path) -> None:
    """dlmi best, as the shared run trained, exported and reported it into ``out/best``; then ``--only best``
    on that folder (in this process) trains nothing more."""
    from dlmi.cli.main import run

    data, out, results = data_root, reproduced["out"] / "best", reproduced["results"]
    args = ["reproduce", "--data-root", str(data), "--profile", "tiny", "--only", "best", "--out", str(out),
            "--results", str(results)]

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
    assert json.loads((results / "best-tiny.json").read_text())["command"] == best["command"]


def test_reproduce_refuses_missing_dataset_folder(tmp_path: Path, cli) -> None:
    (tmp_path / "busi").mkdir()
    done = cli("reproduce", "--data-root", str(tmp_path), "--profile", "tiny", "--out", str(tmp_path / "r"),
               "--results", str(tmp_path / "res"))
    assert done.returncode == 2
    assert "brain_mri" in done.stderr and "Traceback" not in done.stderr


def test_resized_copy_reads_back_identical_inputs(tmp_path: Path, cli) -> None:
    from dlmi.datasets.loader import ImageDataset
    from dlmi.experiments.resized import resized_copy
    from dlmi.plugins import get_dataset

    done = cli("data", "synth", "--out", str(tmp_path / "busi"), "--count", "9", "--size", "48")
    assert done.returncode == 0, done.stderr
    copy = resized_copy("busi", tmp_path / "busi", 32, tmp_path / "cache")
    source = get_dataset("busi")
    original, resized = source.samples(tmp_path / "busi"), source.samples(copy)
    assert [s.key for s in original] == [s.key for s in resized]
    for a, b in zip(ImageDataset(source, original, 32), ImageDataset(source, resized, 32), strict=True):
        assert (a["image"] == b["image"]).all() and (a["mask"] == b["mask"]).all()
    assert resized_copy("busi", tmp_path / "busi", 32, tmp_path / "cache") == copy  # reused, not rewritten


def test_one_target_table_the_reproduce_report_links_to_it() -> None:
    """The targets are set once (``dlmi.experiments.best.TARGETS``, the table of ``best-PROFILE.md``); the
    reproduce report links to it instead of keeping a second table with other thresholds (issue 18)."""
    from dlmi.experiments.report import markdown

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    doc = json.loads((results / "reproduce-cpu.json").read_text(encoding="utf-8"))
    for text in (markdown(doc), (results / "reproduce-cpu.md").read_text(encoding="utf-8")):
        assert "| target | threshold |" not in text
        assert "[best-cpu.md](best-cpu.md)" in text
    best = (results / "best-cpu.md").read_text(encoding="utf-8")
    for key, threshold in TARGETS.items():
        assert f"| {key} |" in best and f" {threshold} |" in best
