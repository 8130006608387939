"""The commands a deployment uses never import PyTorch: checked in a fresh process after each command.

A subprocess is the point here: ``"torch" not in sys.modules`` is a property of a whole process, so each
command runs in a new interpreter that reports, after the command finished, whether torch was loaded and
which module first imported it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dicom_files import write_dicom
from PIL import Image
from test_export_helpers import exported_models

# Runs ``dlmi ARGS`` in this process, then writes {"exit": code, "torch": bool, "importer": "..."} to a file.
PROBE = r"""
import builtins, json, sys, traceback
result_path, args = sys.argv[1], sys.argv[2:]
first_importer = []
real_import = builtins.__import__

def watching_import(name, globals=None, locals=None, fromlist=(), level=0):
    if name.split(".")[0] == "torch" and not first_importer and "torch" not in sys.modules:
        frames = [f for f in traceback.extract_stack()[:-1]
                  if "/dlmi" in f.filename or "plugins" in f.filename]
        first_importer.append(f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?")
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = watching_import
sys.argv = ["dlmi", *args]
code = 0
try:
    from dlmi.cli.main import main
    main()
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
with open(result_path, "w") as handle:
    json.dump({"exit": code, "torch": "torch" in sys.modules, "importer": "".join(first_importer)}, handle)
"""


def run_probed(tmp_path: Path, *args: str) -> dict:
    """Run ``dlmi ARGS`` in a fresh interpreter; its exit code, and whether (and where) torch was imported."""
    result = tmp_path / f"probe-{len(list(tmp_path.glob('probe-*')))}.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(result), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.is_file(), done.stderr
    report = json.loads(result.read_text())
    report["stdout"], report["stderr"] = done.stdout, done.stderr
    return report


def assert_torch_free(report: dict) -> None:
    assert report["exit"] == 0, report["stderr"]
    assert not report["torch"], f"torch was imported, first by {report['importer']}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


def test_help_and_plugins_do_not_import_torch(tmp_path):
    for args in (["--help"], ["plugins"], ["plugins", "--json"], ["predict", "--help"]):
        report = run_probed(tmp_path, *args)
        assert_torch_free(report)
    listed = json.loads(run_probed(tmp_path, "plugins", "--json")["stdout"])
    names = {entry["name"] for entry in listed["plugins"]}
    assert {"seed-cnn", "unet", "dice", "cross-entropy"} <= names


def test_predict_with_onnxruntime_does_not_import_torch(exported, tmp_path):
    models, _, _ = exported
    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(scans / "a.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(scans / "b.jpg")
    write_dicom(scans / "c.dcm", rng.integers(0, 255, (36, 44), dtype=np.uint8))
    write_dicom(scans / "IM0004", rng.integers(0, 4096, (20, 24), dtype=np.uint16), bits_stored=12,
                WindowCenter=2048, WindowWidth=4096)
    for extra in ([], ["--aided"], ["--aided", "--tile"]):
        out = tmp_path / f"out{len(extra)}"
        report = run_probed(tmp_path, "predict", *extra, str(scans), "--models", str(models),
                            "--out", str(out), "--backend", "onnx", "--provider", "auto")
        assert_torch_free(report)
        assert len(list((out / "masks").rglob("*.png"))) == 4


def test_evaluate_masks_does_not_import_torch(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    for folder in (pred, truth):
        folder.mkdir()
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(pred / "x.png")
    Image.fromarray(mask).save(truth / "x.png")
    report = run_probed(tmp_path, "evaluate", "masks", str(pred), str(truth), "--json")
    assert_torch_free(report)
    assert json.loads(report["stdout"])["context"]["n_images"] == 1


def test_the_probe_does_see_torch(tmp_path):
    """The check can fail: a command that needs torch is reported as importing it, and by whom."""
    report = run_probed(tmp_path, "model", "summary", "unet", "--image-size", "32")
    assert report["exit"] == 0, report["stderr"]
    assert report["torch"] and "dlmi" in report["importer"]


def test_the_documented_plugin_examples_register_without_torch(tmp_path):
    """docs/plugins.md teaches light registration: its example packages load and register, torch-free."""
    from test_extra_plugin import doc_files

    sources, packages = [], []
    for rel, body in doc_files().items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
        if rel.endswith("__init__.py"):
            sources.append(str(tmp_path / rel.split("/src/")[0] / "src"))
            packages.append(Path(rel).parent.name)
    code = (
        "import importlib, sys\n"
        "from dlmi.plugins import load_plugins\n"
        f"modules = [importlib.import_module(name) for name in {packages!r}]\n"
        "plugins = load_plugins(extra=[(m, m.__name__) for m in modules])\n"
        "assert 'jaccard' in plugins.losses and 'tiny-fcn' in plugins.models\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*sources, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
