"""What an export says about itself can be trusted (issue 18, items 5, 10 and 11 of section 3).

A classifier and a segmenter trained on different data are never joined; ``export.json`` lists the run's
classes in the run's order, the sha256 of every file it names (checked at load), and whether the training
runs had finished; the metadata's numbers are checked at load. Real checkpoints of the registered
``seed-cnn`` and ``unet`` (see ``test_export_helpers``), the real exporter and both predictor backends.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from test_export_helpers import CLASSES, exported_models, make_checkpoints

from dlmi.cli.main import run
from dlmi.digest import file_digest
from dlmi.errors import DlmiError
from dlmi.export.metadata import read_checked_metadata, read_manifest
from dlmi.export.onnx_export import export_onnx
from dlmi.inference.predictor import open_predictor
from dlmi.runtime.checkpoint import save_checkpoint
from dlmi.training.config import TrainConfig
from dlmi.training.steps.aid import load_aid


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


@pytest.fixture
def export_copy(exported, tmp_path) -> Path:
    """A copy of the session's export folder that a test may damage."""
    models, _, _ = exported
    return Path(shutil.copytree(models, tmp_path / "exported"))


def with_meta(source: Path, target: Path, **changes) -> Path:
    """``source`` saved again as ``target`` with its ``meta`` changed."""
    payload = torch.load(source, weights_only=True)
    payload["meta"] = {**payload["meta"], **changes}
    return save_checkpoint(target, payload)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- 5. a classifier and a segmenter from different data ------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("pair"))


def test_export_refuses_a_pair_trained_on_different_datasets(checkpoints, tmp_path):
    cls, seg = checkpoints
    other = with_meta(seg, tmp_path / "seg-brain.pt", dataset="brain-mri")
    with pytest.raises(DlmiError) as exc:
        export_onnx(cls, other, tmp_path / "out")
    message = one_line(exc)
    assert "'busi'" in message and "'brain-mri'" in message and "dataset" in message
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_pair_with_other_class_lists_or_normal_class(checkpoints, tmp_path):
    cls, seg = checkpoints
    reordered = with_meta(seg, tmp_path / "seg-order.pt", classes=["benign", "malignant", "normal"],
                          normal_class="normal")
    with pytest.raises(DlmiError) as exc:
        export_onnx(cls, reordered, tmp_path / "out")
    assert "['normal', 'benign', 'malignant']" in one_line(exc)
    assert "['benign', 'malignant', 'normal']" in one_line(exc)
    other_normal = with_meta(cls, tmp_path / "cls-normal.pt", normal_class="benign")
    same_classes = with_meta(seg, tmp_path / "seg-classes.pt", classes=list(CLASSES), normal_class="normal")
    with pytest.raises(DlmiError) as exc:
        export_onnx(other_normal, same_classes, tmp_path / "out")
    assert "normal class" in one_line(exc) and "'benign'" in one_line(exc) and "'normal'" in one_line(exc)


def test_cli_export_of_a_mismatched_pair_is_one_line(checkpoints, tmp_path, capsys):
    cls, seg = checkpoints
    other = with_meta(seg, tmp_path / "seg-brain.pt", dataset="brain-mri")
    code = run(["export", "onnx", "--classifier", str(cls), "--segmenter", str(other),
                "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "brain-mri" in err


def test_torch_predictor_refuses_a_mismatched_pair(checkpoints, tmp_path):
    cls, seg = checkpoints
    other = with_meta(seg, tmp_path / "seg-brain.pt", dataset="brain-mri")
    with pytest.raises(DlmiError) as exc:
        open_predictor([cls, other], backend="torch", aided=True)
    assert "'brain-mri'" in one_line(exc)


def test_aid_classifier_with_other_classes_is_refused_at_training(checkpoints, tmp_path):
    cls, _ = checkpoints
    two_class = with_meta(cls, tmp_path / "cls-two.pt", classes=["no", "yes", "maybe"], normal_class="no")
    with pytest.raises(DlmiError) as exc:
        load_aid(two_class, "busi")
    assert "['no', 'yes', 'maybe']" in one_line(exc) and "'busi'" in one_line(exc)
    assert load_aid(cls, "busi").normal_index == 0  # the matching classifier still gates


# --- 10. classes in the run's order, checksums, unfinished runs ------------------------------------------


def test_manifest_lists_the_run_classes_in_the_run_order(exported):
    models, cls_path, _ = exported
    manifest = read_manifest(models)
    assert manifest["classes"] == list(CLASSES) == torch.load(cls_path, weights_only=True)["meta"]["classes"]
    assert manifest["normal_class"] == "normal"


def test_manifest_records_the_sha256_of_every_file_it_names(exported):
    models, cls_path, seg_path = exported
    manifest = json.loads((models / "export.json").read_text())
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == file_digest(models / name)
    assert manifest["classifier"]["sha256"] == file_digest(cls_path)
    assert manifest["segmenter"]["sha256"] == file_digest(seg_path)


def test_a_swapped_onnx_file_is_refused_naming_it(export_copy):
    unet = export_copy / "unet.onnx"
    model = onnx.load(unet)
    for prop in model.metadata_props:  # another export of the same network: a valid file, other bytes
        if prop.key == "threshold":
            prop.value = "0.7"
    onnx.save(model, unet)
    with pytest.raises(DlmiError) as exc:
        open_predictor([export_copy], backend="onnx")
    message = one_line(exc)
    assert str(unet) in message and "sha256" in message


def test_a_truncated_onnx_file_is_refused_naming_it(export_copy):
    two_stage = export_copy / "two_stage.onnx"
    data = two_stage.read_bytes()
    two_stage.write_bytes(data[: len(data) - 100])
    with pytest.raises(DlmiError) as exc:
        open_predictor([export_copy], backend="onnx", aided=True)
    assert str(two_stage) in one_line(exc) and "sha256" in one_line(exc)


def test_a_changed_checkpoint_is_refused_by_the_torch_backend(export_copy):
    manifest = json.loads((export_copy / "export.json").read_text())
    manifest["segmenter"]["sha256"] = "0" * 64  # the checkpoint named is no longer the one exported
    (export_copy / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(DlmiError) as exc:
        open_predictor([export_copy], backend="torch", aided=True)
    assert manifest["segmenter"]["checkpoint"] in one_line(exc) and "sha256" in one_line(exc)


def test_an_export_without_checksums_loads_with_a_warning(export_copy, capsys):
    manifest = json.loads((export_copy / "export.json").read_text())
    for entry in manifest["files"].values():
        del entry["sha256"]
    (export_copy / "export.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    predictor = open_predictor([export_copy], backend="onnx", aided=True)
    assert predictor.info.classes == list(CLASSES)
    err = capsys.readouterr().err
    assert "dlmi: warning:" in err and "two_stage.onnx" in err and "sha256" in err


def interrupted_run(folder: Path, source: Path, *, done: int, planned: int) -> Path:
    """A run folder whose training stopped after epoch ``done`` of ``planned``."""
    folder.mkdir(parents=True)
    config = TrainConfig(task="classification", dataset="busi", out=str(folder), epochs=planned,
                         image_size=64)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    payload = torch.load(source, weights_only=True)
    save_checkpoint(folder / "best.pt", {**payload, "epoch": done})
    save_checkpoint(folder / "last.pt", {**payload, "epoch": done})
    return folder


def test_an_unfinished_run_is_exported_with_a_warning_and_said_in_the_manifest(checkpoints, tmp_path,
                                                                               capsys):
    cls, _ = checkpoints
    folder = interrupted_run(tmp_path / "cls-run", cls, done=1, planned=3)
    code = run(["export", "onnx", "--classifier", str(folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "dlmi: warning:" in err and "1 of 3 epochs" in err and str(folder) in err
    manifest = read_manifest(tmp_path / "out")
    assert manifest["complete"] is False
    assert manifest["classifier"]["training"] == {"epochs_done": 1, "epochs_planned": 3, "complete": False}


# --- 11. metadata values out of range are one line --------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("segmenter_image_size", str(10**12)),
                                            ("segmenter_image_size", "1e9"), ("threshold", "nan")])
def test_huge_or_odd_sizes_in_the_onnx_metadata_are_one_line(export_copy, key, value):
    (export_copy / "export.json").unlink()  # the file alone, as copied out of its export folder
    unet = export_copy / "unet.onnx"
    model = onnx.load(unet)
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
    onnx.save(model, unet)
    with pytest.raises(DlmiError) as exc:
        read_checked_metadata(unet, "segmenter")
    assert key in one_line(exc) and str(unet) in one_line(exc)


@pytest.mark.parametrize("change", [
    {"segmenter": {"checkpoint": 42}},
    {"classes": "normal"},
    {"files": []},
    {"files": {"unet.onnx": {"kind": "segmenter", "sha256": "xyz"}}},
    {"segmenter": {"checkpoint": "x.pt", "meta": {"image_size": 10**12}}},
])
def test_malformed_manifest_values_are_one_line(export_copy, change):
    manifest = json.loads((export_copy / "export.json").read_text())
    manifest.update(change)
    (export_copy / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(DlmiError) as exc:
        read_manifest(export_copy)
    assert "export.json" in one_line(exc)
