"""``dlmi predict``'s output folder stays true to its inputs and its models (issue 18, defects 2, 3, 8, 10).

Real exported ONNX models (``test_export_helpers``), real files; the CLI in-process through
:func:`dlmi.cli.main.run`. The lock tests start a real second process that holds the output folder's lock:
the process boundary (a live pid, a killed one) is what they test.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_export_helpers import exported_models

from dlmi.cli.main import run
from dlmi.inference.folder import PredictSettings, predict_folder
from dlmi.inference.predictor import open_predictor


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


def write_image(path: Path, size: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(40, 220, (size, size), dtype=np.uint8)).save(path)
    return path


def dlmi(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlmi: error: ") and "Traceback" not in err, err
    return lines[0]


# --- defect 2: two runs into one --out ------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from dlmi.inference.outputs import OutputLock
    lock = OutputLock.acquire(Path(sys.argv[1]))
    print("locked", flush=True)
    sys.stdin.read()
    lock.release()
""")


def hold_lock(out: Path) -> subprocess.Popen[str]:
    """A second process that takes OUT's lock and keeps it until its stdin closes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None
    line = holder.stdout.readline()
    assert line.strip() == "locked", holder.stderr.read() if holder.stderr else line
    return holder


def test_a_second_run_into_a_locked_out_is_refused_naming_folder_and_pid(exported, tmp_path, capsys):
    models, _, _ = exported
    write_image(tmp_path / "scans" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    holder = hold_lock(out)
    try:
        code, _, err = dlmi(capsys, "predict", str(tmp_path / "scans"), "--models", str(models),
                            "--out", str(out))
        line = error_line(err)
        assert code == 2
        assert str(out) in line and f"pid {holder.pid}" in line
        assert not (out / "predictions.csv").exists() and not (out / "masks").exists()
    finally:
        holder.communicate("", timeout=60)
    code, _, err = dlmi(capsys, "predict", str(tmp_path / "scans"), "--models", str(models),
                        "--out", str(out))
    assert code == 0, err
    assert list(rows(out)) == ["a.png"]


def test_a_lock_left_by_a_killed_run_is_taken_over(exported, tmp_path, capsys):
    models, _, _ = exported
    write_image(tmp_path / "scans" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    before = set(out.iterdir())
    holder = hold_lock(out)
    lock_files = set(out.iterdir()) - before
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    assert all(path.exists() for path in lock_files) and lock_files  # the dead run's lock is still there
    code, _, err = dlmi(capsys, "predict", str(tmp_path / "scans"), "--models", str(models),
                        "--out", str(out))
    assert code == 0, err
    assert f"pid {holder.pid}" in err and "no longer running" in err
    assert list(rows(out)) == ["a.png"]
    assert not any(path.exists() for path in lock_files)  # released at the end of the run


def test_records_of_other_models_in_the_log_are_not_already_done(exported, tmp_path):
    """What two concurrent runs left: model B's settings line, then model A's records appended to it."""
    models, _, seg_path = exported
    onnx_model = open_predictor([models], provider="cpu")
    torch_model = open_predictor([seg_path], backend="torch", provider="cpu")
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "scans" / name, seed=len(name))
    quiet = lambda _: None  # noqa: E731
    out_a, out_b = tmp_path / "out-a", tmp_path / "out-b"
    predict_folder(tmp_path / "scans", out_a, onnx_model, PredictSettings(), log=quiet)
    predict_folder(tmp_path / "scans", out_b, torch_model, PredictSettings(), log=quiet)
    header_b = (out_b / "progress.jsonl").read_text().splitlines()[0]
    records_a = (out_a / "progress.jsonl").read_text().splitlines()[1:]
    (out_a / "progress.jsonl").write_text("\n".join([header_b, *records_a]) + "\n")
    again = predict_folder(tmp_path / "scans", out_a, torch_model, PredictSettings(), log=quiet)
    assert (again.predicted, again.skipped) == (2, 0)
    for name in ("a.png", "b.png"):
        mask_a = np.asarray(Image.open(out_a / "masks" / f"{name}.png"))
        np.testing.assert_array_equal(mask_a, np.asarray(Image.open(out_b / "masks" / f"{name}.png")))


# --- defect 3: inputs deleted or unreadable since the last run -------------------------------------------


def test_outputs_of_deleted_or_unreadable_inputs_are_removed_and_named(exported, tmp_path, capsys):
    models, _, _ = exported
    scans, out = tmp_path / "scans", tmp_path / "out"
    for name in ("a.png", "sub/b.png", "c.png"):
        write_image(scans / name)
    code, _, err = dlmi(capsys, "predict", str(scans), "--models", str(models), "--out", str(out))
    assert code == 0, err
    assert (out / "masks" / "sub" / "b.png.png").is_file() and (out / "overlays" / "c.png.png").is_file()
    (scans / "sub" / "b.png").unlink()
    (scans / "c.png").write_bytes(b"not a png any more")
    code, _, err = dlmi(capsys, "predict", str(scans), "--models", str(models), "--out", str(out))
    assert code == 1  # c.png is skipped: unreadable
    assert list(rows(out)) == ["a.png"]
    for gone in ("masks/sub/b.png.png", "overlays/sub/b.png.png", "masks/c.png.png", "overlays/c.png.png"):
        assert not (out / gone).exists(), gone
    assert not (out / "masks" / "sub").exists()
    removed = [line for line in err.splitlines() if "removed the outputs" in line]
    assert len(removed) == 1 and "sub/b.png" in removed[0] and "c.png" in removed[0], err
    logged = (out / "progress.jsonl").read_text()
    assert "sub/b.png" not in logged and '"c.png"' not in logged
    result = json.loads((out / "predictions.json").read_text())
    assert [p["file"] for p in result["predictions"]] == ["a.png"]


def test_outputs_of_a_deleted_input_are_removed_when_the_settings_changed_too(exported, tmp_path, capsys):
    models, _, _ = exported
    scans, out = tmp_path / "scans", tmp_path / "out"
    for name in ("a.png", "b.png"):
        write_image(scans / name)
    assert dlmi(capsys, "predict", str(scans), "--models", str(models), "--out", str(out))[0] == 0
    (scans / "b.png").unlink()
    code, _, err = dlmi(capsys, "predict", str(scans), "--models", str(models), "--out", str(out),
                        "--threshold", "0.7")
    assert code == 0, err
    assert not (out / "masks" / "b.png.png").exists() and "b.png" in err
    assert list(rows(out)) == ["a.png"]


# --- defect 8: a name too long for its output file --------------------------------------------------------


@pytest.mark.parametrize("length", [244, 252])
def test_a_long_input_name_costs_that_image_only(exported, tmp_path, capsys, length):
    models, _, _ = exported
    scans, out = tmp_path / "scans", tmp_path / "out"
    long_name = "x" * (length - 4) + ".png"
    for name in ("a.png", long_name, "z.png"):
        write_image(scans / name)
    for _ in range(2):  # the re-run too
        code, stdout, err = dlmi(capsys, "predict", str(scans), "--models", str(models), "--out", str(out))
        assert "Traceback" not in err
        fits = length + len(".png") <= os.pathconf(out, "PC_NAME_MAX")
        assert set(rows(out)) == ({"a.png", "z.png", long_name} if fits else {"a.png", "z.png"})
        if fits:
            assert code == 0, err
        else:
            assert code == 1
            skipped = [line for line in err.splitlines() if "skipped" in line]
            assert len(skipped) == 1 and long_name in skipped[0] and "too long" in skipped[0], err
            failed = json.loads((out / "predictions.json").read_text())["failed"]
            assert [f["file"] for f in failed] == [long_name]
        assert (out / "masks" / "z.png.png").is_file()


# --- defect 10: an image of one constant value ------------------------------------------------------------


def test_a_constant_image_is_predicted_and_named_on_stderr(exported, tmp_path, capsys):
    models, _, _ = exported
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(np.full((32, 32), 1000, dtype=np.uint16)).save(scans / "flat16.png")
    write_image(scans / "a.png")
    code, _, err = dlmi(capsys, "predict", str(scans), "--models", str(models),
                        "--out", str(tmp_path / "out"))
    assert code == 0, err
    named = [line for line in err.splitlines() if "flat16.png" in line]
    assert len(named) == 1 and "one value" in named[0], err
    assert set(rows(tmp_path / "out")) == {"a.png", "flat16.png"}
