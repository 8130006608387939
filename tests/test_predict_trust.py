"""``dlmi predict`` never returns another image's output, and every mistake is one line (issue 10, items 1–7).

Real exported ONNX files (``test_export_helpers``), real onnxruntime, real files on disk; the CLI runs
in-process through :func:`dlmi.cli.main.run`, which is what the ``dlmi`` command calls.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from test_export_helpers import CLASSES, exported_models, make_checkpoints

from dlmi.cli.main import run
from dlmi.errors import DlmiError
from dlmi.export.metadata import read_metadata, set_metadata
from dlmi.inference.folder import PredictSettings, predict_folder
from dlmi.inference.predictor import open_predictor


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


@pytest.fixture(scope="module")
def classifier_only(tmp_path_factory) -> tuple[Path, Path]:
    """An export folder holding only classifier.onnx, and the classifier's checkpoint."""
    from dlmi.export.onnx_export import export_onnx

    base = tmp_path_factory.mktemp("classifier-only")
    cls_path, _ = make_checkpoints(base / "checkpoints")
    export_onnx(cls_path, None, base / "models")
    return base / "models", cls_path


def write_image(path: Path, height: int, width: int, value: int = 180, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(np.clip(rng.normal(value, 20, (height, width)), 0, 255).astype(np.uint8)).save(path)
    return path


def dlmi(capsys, *args: str) -> tuple[int, str, str]:
    """``dlmi ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlmi: error: "), err
    assert "Traceback" not in err
    return lines[0]


def rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def quiet(_: str) -> None:
    pass


# --- 1. a reused output folder --------------------------------------------------------------------------


def test_reusing_an_output_folder_never_returns_another_folders_mask(exported, tmp_path):
    models, _, _ = exported
    predictor = open_predictor([models], provider="cpu", aided=True)
    write_image(tmp_path / "setA" / "scan.png", 128, 128)
    write_image(tmp_path / "setB" / "scan.png", 300, 200, seed=1)
    out = tmp_path / "out"
    settings = PredictSettings(aided=True)

    first = predict_folder(tmp_path / "setA", out, predictor, settings, log=quiet)
    second = predict_folder(tmp_path / "setB", out, predictor, settings, log=quiet)
    assert (first.predicted, second.predicted, second.skipped) == (1, 1, 0)
    mask = Image.open(out / rows(out)["scan.png"]["mask"])
    assert mask.size == (200, 300)  # setB's scan, not setA's 128×128

    again = predict_folder(tmp_path / "setB", out, predictor, settings, log=quiet)
    assert (again.predicted, again.skipped) == (0, 1)  # the same file and models: really done

    write_image(tmp_path / "setB" / "scan.png", 90, 70, seed=2)  # the file changed in place
    changed = predict_folder(tmp_path / "setB", out, predictor, settings, log=quiet)
    assert (changed.predicted, changed.skipped) == (1, 0)
    assert Image.open(out / rows(out)["scan.png"]["mask"]).size == (70, 90)


def test_other_models_or_threshold_predict_again(exported, tmp_path):
    models, _, _ = exported
    predictor = open_predictor([models], provider="cpu", aided=True)
    write_image(tmp_path / "scans" / "a.png", 64, 64)
    out = tmp_path / "out"
    predict_folder(tmp_path / "scans", out, predictor, PredictSettings(aided=True), log=quiet)
    messages: list[str] = []
    redone = predict_folder(tmp_path / "scans", out, predictor, PredictSettings(aided=True, threshold=0.9),
                            log=messages.append)
    assert (redone.predicted, redone.skipped) == (1, 0)
    assert any("other settings (changed: threshold)" in m for m in messages)
    assert json.loads((out / "predictions.json").read_text())["settings"]["threshold"] == 0.9


# --- 2. output names ------------------------------------------------------------------------------------


def test_output_names_are_unique_for_unique_inputs(exported, tmp_path):
    models, _, _ = exported
    scans = tmp_path / "scans"
    sizes = {"a.png": (40, 50), "a.PNG": (41, 51), "b.png": (42, 52), "b_png.png": (43, 53),
             "sub/a.png": (44, 54)}
    for name, (height, width) in sizes.items():
        write_image(scans / name, height, width)
    out = tmp_path / "out"
    predict_folder(scans, out, open_predictor([models], provider="cpu"), PredictSettings(), log=quiet)
    table = rows(out)
    assert sorted(table) == sorted(sizes)
    assert len({row["mask"] for row in table.values()}) == len(sizes)
    assert len({row["overlay"] for row in table.values()}) == len(sizes)
    assert table["a.PNG"]["mask"] == "masks/a.PNG.png"
    for name, (height, width) in sizes.items():
        assert Image.open(out / table[name]["mask"]).size == (width, height)
        assert Image.open(out / table[name]["overlay"]).size == (width, height)


# --- 3. model metadata ----------------------------------------------------------------------------------


def tampered(models: Path, folder: Path, file: str, **changes: str) -> Path:
    """A copy of the export folder whose ``file`` has ``changes`` in its metadata_props."""
    shutil.copytree(models, folder)
    model = onnx.load(folder / file)
    props = read_metadata(model)
    props.update(changes)
    set_metadata(model, props)
    onnx.save(model, folder / file)
    return folder


@pytest.mark.parametrize(("file", "key", "value", "aided"), [
    ("unet.onnx", "threshold", "2.0", False),
    ("unet.onnx", "threshold", "nan", False),
    ("two_stage.onnx", "threshold", "-0.5", True),
    ("unet.onnx", "segmenter_image_size", "32.5", False),
    ("two_stage.onnx", "classifier_image_size", "many", True),
    ("two_stage.onnx", "classes", "[normal, benign", True),
    ("two_stage.onnx", "classes", '["normal", "benign"]', True),
    ("two_stage.onnx", "normal_class", "healthy", True),
])
def test_bad_model_metadata_is_one_line_naming_file_and_key(exported, tmp_path, capsys, file, key, value,
                                                            aided):
    models, _, _ = exported
    bad = tampered(models, tmp_path / "bad", file, **{key: value})
    with pytest.raises(DlmiError) as info:
        open_predictor([bad], provider="cpu", aided=aided)
    assert str(bad / file) in str(info.value) and repr(key) in str(info.value)

    write_image(tmp_path / "scans" / "a.png", 40, 40)
    code, _, err = dlmi(capsys, "predict", *(["--aided"] if aided else []), str(tmp_path / "scans"),
                        "--models", str(bad), "--out", str(tmp_path / "out"), "--provider", "cpu")
    assert code == 2
    assert key in one_line_error(err)
    assert not (tmp_path / "out").exists()


# --- 4. earlier outputs inside the input folder ---------------------------------------------------------


def test_earlier_outputs_inside_the_input_folder_are_left_out(exported, tmp_path):
    models, _, _ = exported
    predictor = open_predictor([models], provider="cpu", aided=True)
    scans = tmp_path / "scans"
    write_image(scans / "a.png", 50, 60)
    write_image(scans / "sub" / "b.png", 50, 60, seed=1)
    predict_folder(scans, scans / "first-run", predictor, PredictSettings(aided=True), log=quiet)
    assert (scans / "first-run" / rows(scans / "first-run")["a.png"]["mask"]).is_file()

    messages: list[str] = []
    summary = predict_folder(scans, tmp_path / "second-run", predictor, PredictSettings(aided=True),
                             log=messages.append)
    assert summary.total == 2 and sorted(rows(tmp_path / "second-run")) == ["a.png", "sub/b.png"]
    assert any("first-run" in m and "earlier dlmi predict output" in m for m in messages)


# --- 5. one line for every mistake, distinct exit codes -------------------------------------------------


def test_output_that_is_not_a_folder_is_one_line(exported, tmp_path, capsys):
    models, _, _ = exported
    write_image(tmp_path / "scans" / "a.png", 40, 40)
    (tmp_path / "file.txt").write_text("not a folder")
    for out in (tmp_path / "file.txt", tmp_path / "file.txt" / "below"):
        code, _, err = dlmi(capsys, "predict", str(tmp_path / "scans"), "--models", str(models),
                            "--out", str(out), "--provider", "cpu")
        assert code == 2
        assert "file.txt" in one_line_error(err)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_unwritable_output_is_one_line(exported, tmp_path, capsys):
    models, _, _ = exported
    write_image(tmp_path / "scans" / "a.png", 40, 40)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root)")
        code, _, err = dlmi(capsys, "predict", str(tmp_path / "scans"), "--models", str(models),
                            "--out", str(locked / "out"), "--provider", "cpu")
        assert code == 2 and "locked" in one_line_error(err)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "two-stage graph as unet.onnx"])
def test_a_broken_model_file_is_one_line(exported, tmp_path, capsys, damage):
    models, _, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(models, bad)
    unet = bad / "unet.onnx"
    if damage == "truncated":
        unet.write_bytes(unet.read_bytes()[: unet.stat().st_size // 3])
    elif damage == "random bytes":
        unet.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    else:
        shutil.copyfile(bad / "two_stage.onnx", unet)
    write_image(tmp_path / "scans" / "a.png", 40, 40)
    code, _, err = dlmi(capsys, "predict", str(tmp_path / "scans"), "--models", str(bad),
                        "--out", str(tmp_path / "out"), "--provider", "cpu")
    assert code == 2
    line = one_line_error(err)
    assert str(unet) in line
    if damage == "two-stage graph as unet.onnx":
        assert "two_stage" in line


@pytest.mark.parametrize("manifest", ['["not", "an", "object"]', '{"classifier": "cls.pt"}',
                                      '{"segmenter": {"checkpoint": 7}}'])
def test_malformed_export_json_is_one_line(exported, tmp_path, capsys, manifest):
    models, _, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(models, bad)
    (bad / "export.json").write_text(manifest)
    write_image(tmp_path / "scans" / "a.png", 40, 40)
    code, _, err = dlmi(capsys, "predict", str(tmp_path / "scans"), "--models", str(bad),
                        "--backend", "torch", "--out", str(tmp_path / "out"), "--provider", "cpu")
    assert code == 2
    assert "export.json" in one_line_error(err)


def test_a_write_error_part_way_keeps_a_valid_table_of_what_was_done(exported, tmp_path, capsys):
    models, _, _ = exported
    scans = tmp_path / "scans"
    write_image(scans / "a.png", 40, 40)
    write_image(scans / "sub" / "b.png", 40, 40, seed=1)
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "sub").write_text("a file where the masks of sub/ should go")
    code, _, err = dlmi(capsys, "predict", str(scans), "--models", str(models), "--out", str(out),
                        "--provider", "cpu", "--batch-size", "1")
    assert code == 2
    line = one_line_error(err)
    assert "sub" in line and "predictions.csv" in line
    assert sorted(rows(out)) == ["a.png"]
    assert Image.open(out / rows(out)["a.png"]["mask"]).size == (40, 40)


def test_exit_codes_are_distinct_and_documented(exported, tmp_path, capsys):
    models, _, _ = exported
    scans = tmp_path / "scans"
    write_image(scans / "a.png", 40, 40)
    args = ["predict", str(scans), "--models", str(models), "--provider", "cpu"]
    assert dlmi(capsys, *args, "--out", str(tmp_path / "ok"))[0] == 0
    (scans / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    code, _, err = dlmi(capsys, *args, "--out", str(tmp_path / "some-skipped"))
    assert code == 1 and "broken.png" in err
    assert dlmi(capsys, *args, "--out", str(tmp_path / "e"), "--batch-size", "0")[0] == 2
    code, help_text, _ = dlmi(capsys, "predict", "--help")
    assert code == 0
    assert "Exit status" in help_text and all(f"{n}" in help_text for n in ("0", "1", "2"))


# --- 6. leftovers of a killed run; links to nothing -----------------------------------------------------


def test_leftovers_of_a_killed_run_are_cleaned_up(exported, tmp_path):
    models, _, _ = exported
    predictor = open_predictor([models], provider="cpu", aided=True)
    scans = tmp_path / "scans"
    for n in range(3):
        write_image(scans / f"{n}.png", 40, 40, seed=n)
    out = tmp_path / "out"
    predict_folder(scans, out, predictor, PredictSettings(aided=True), log=quiet)
    orphans = [out / "masks" / ".0.png.png.k3j2.tmp", out / "overlays" / ".1.png.png.x9.tmp",
               out / ".predictions.csv.q1.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a file")
    log = out / "progress.jsonl"
    with log.open("a") as handle:
        handle.write('{"file": "2.png", "class": "beni')  # the last line, cut short by the kill
    (out / rows(out)["2.png"]["mask"]).unlink()  # so the re-run appends a record after the torn line

    messages: list[str] = []
    summary = predict_folder(scans, out, predictor, PredictSettings(aided=True), log=messages.append)
    assert (summary.predicted, summary.skipped) == (1, 2)
    assert not any(orphan.exists() for orphan in orphans)
    assert any("temporary" in m for m in messages)
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line parses
    assert [r["file"] for r in records[1:]] == ["0.png", "1.png", "2.png", "2.png"]  # redone, own line


def test_a_link_to_nothing_is_reported_as_skipped(exported, tmp_path, capsys):
    models, _, _ = exported
    scans = tmp_path / "scans"
    write_image(scans / "a.png", 40, 40)
    os.symlink(tmp_path / "gone.png", scans / "link.png")
    out = tmp_path / "out"
    code, _, err = dlmi(capsys, "predict", str(scans), "--models", str(models), "--out", str(out),
                        "--provider", "cpu")
    assert code == 1
    assert "link.png" in err and "does not exist" in err
    report = json.loads((out / "predictions.json").read_text())
    assert [f["file"] for f in report["failed"]] == ["link.png"]


# --- 7. a classifier alone ------------------------------------------------------------------------------


def test_classifier_only_export_predicts_classes(classifier_only, tmp_path, capsys):
    classifier_only, cls_path = classifier_only
    scans = tmp_path / "scans"
    write_image(scans / "dark.png", 50, 40, value=10)
    write_image(scans / "bright.png", 50, 40, value=200, seed=1)
    out = tmp_path / "out"
    code, stdout, err = dlmi(capsys, "predict", str(scans), "--models", str(classifier_only), "--out",
                             str(out), "--provider", "cpu")
    assert code == 0, err
    with (out / "predictions.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["file", "class", *[f"prob_{c}" for c in CLASSES], "uncertainty",
                                     "mask_disagreement"]
        table = {row["file"]: row for row in reader}
    assert table["dark.png"]["class"] == "normal" and table["bright.png"]["class"] == "benign"
    for row in table.values():
        assert sum(float(row[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)
    assert not (out / "masks").exists() and not (out / "overlays").exists()
    report = json.loads((out / "predictions.json").read_text())
    assert report["settings"]["mode"] == "classifier"
    assert dlmi(capsys, "predict", str(scans), "--models", str(classifier_only), "--out", str(out),
                "--provider", "cpu")[0] == 0
    assert json.loads((out / "predictions.json").read_text())["predictions"] == report["predictions"]
    torch_predictor = open_predictor([cls_path], backend="torch", provider="cpu")  # a checkpoint alone too
    eager = predict_folder(scans, tmp_path / "torch", torch_predictor, PredictSettings(), log=quiet)
    assert eager.mode == "classifier"
    assert {f: r["class"] for f, r in rows(tmp_path / "torch").items()} == {"dark.png": "normal",
                                                                           "bright.png": "benign"}
