"""docs/deploy.md's example — onnxruntime, numpy and Pillow only — runs and agrees with ``dlmi predict``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from busi_folder import write_busi_folder
from PIL import Image
from test_export_helpers import exported_models

from dlmi.inference.folder import PredictSettings, predict_folder
from dlmi.inference.predictor import open_predictor

DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
MARKER = "<!-- deploy-example"

# Run the example with dlmi and torch made unimportable, as on a machine that has neither.
RUNNER = """import runpy, sys
sys.modules["dlmi"] = None
sys.modules["torch"] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def example_code() -> str:
    text = DOC.read_text(encoding="utf-8")
    after = text[text.index(MARKER):]
    match = re.search(r"```python\n(.*?)```", after, flags=re.DOTALL)
    assert match, "docs/deploy.md: no ```python block after the deploy-example marker"
    return match.group(1)


def test_deploy_example_runs_without_dlmi_and_matches_predict(tmp_path, tmp_path_factory):
    models, _, _ = exported_models(tmp_path_factory)
    busi_dir = write_busi_folder(tmp_path / "busi-source", per_class=2, size=96)
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copyfile(busi_dir / "benign" / "benign (2).png", scans / "busi.png")
    rgba = np.random.default_rng(0).integers(100, 255, (48, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(scans / "rgba.png")
    Image.fromarray(np.full((30, 50), 8, dtype=np.uint8)).save(scans / "dark.png")
    predictor = open_predictor([models], provider="cpu", aided=True)
    predict_folder(scans, tmp_path / "out", predictor, PredictSettings(aided=True), log=lambda m: None)
    report = json.loads((tmp_path / "out" / "predictions.json").read_text())
    records = {r["file"]: r for r in report["predictions"]}

    script = tmp_path / "example.py"
    script.write_text(example_code())
    for name in ("busi.png", "rgba.png", "dark.png"):
        workdir = tmp_path / f"run-{name}"
        workdir.mkdir()
        result = subprocess.run(
            [sys.executable, "-c", RUNNER, str(script), str(models / "two_stage.onnx"), str(scans / name)],
            cwd=workdir, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        record = records[name]
        assert result.stdout.split() == [f"class={record['class']}", f"gated={record['gated']}",
                                         f"lesion_pixels={record['lesion_pixels']}"]
        # The same lesion pixels, whatever the PNG encoding (8-bit 0/255 or 1-bit).
        doc_mask = np.asarray(Image.open(workdir / "mask.png").convert("L")) > 0
        dlmi_mask = np.asarray(Image.open(tmp_path / "out" / record["mask"]).convert("L")) > 0
        assert np.array_equal(doc_mask, dlmi_mask)
    assert records["dark.png"]["gated"] and not records["rgba.png"]["gated"]
