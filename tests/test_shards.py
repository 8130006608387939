"""``dlmi predict --num-shards N --shard-index I`` and ``dlmi predict merge OUT`` (issue 20, part 1).

Real exported ONNX models (``test_export_helpers``), real PNG and DICOM files. The CLI runs in this process
through Typer's CliRunner; the concurrency test starts two real processes, since two shards of one OUT
running at once is what it tests. The union of the shards must equal one unsharded run byte for byte.
"""

from __future__ import annotations

import hashlib
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
from typer.testing import CliRunner

import dlmi
from dlmi.cli.main import make_app, run
from dlmi.errors import DlmiError
from dlmi.inference.shards import (
    Shard,
    check_shard,
    input_order,
    output_names,
    own_temporaries,
    shard_inputs,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """Ten input files, twelve images: PNGs of several sizes in nested folders (bright ones segmented, dark
    ones gated), an RGB PNG, a 3-frame DICOM cine, names with spaces, and a corrupt PNG (a failure every table
    lists)."""
    folder = tmp_path_factory.mktemp("shard-scans") / "scans"
    rng = np.random.default_rng(3)
    for number, (height, width) in enumerate([(40, 52), (64, 64), (33, 47), (80, 60), (48, 48), (50, 70)]):
        low = 0 if number % 3 == 0 else 120  # every third is dark: the classifier's gate empties its mask
        path = folder / ("deep/er" if number % 2 else "top") / f"scan {number}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(low, low + 30 if low == 0 else 255, (height, width),
                                     dtype=np.uint8)).save(path)
    Image.fromarray(rng.integers(100, 255, (30, 30, 3), dtype=np.uint8)).save(folder / "colour.png")
    Image.fromarray(rng.integers(100, 255, (36, 36), dtype=np.uint8)).save(folder / "a.PNG")
    write_dicom(folder / "cine" / "loop.dcm", rng.integers(90, 255, (3, 36, 44), dtype=np.uint8))
    (folder / "cine" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    return folder


def invoke(*args: str) -> tuple[int, str]:
    """``dlmi ARGS`` through Typer's CliRunner: (exit code, output)."""
    result = CliRunner().invoke(make_app(), list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def error_line(capsys, *args: str) -> str:
    """The one line ``dlmi ARGS`` prints for a user mistake (exit status 2)."""
    capsys.readouterr()
    code = run(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("dlmi: shard")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("dlmi: error: "), err
    assert "Traceback" not in err
    return lines[0]


def tree(folder: Path) -> dict[str, str]:
    """Every mask and overlay under OUT, and the merged tables: relative path → sha256."""
    paths = [p for sub in ("masks", "overlays") for p in (folder / sub).rglob("*")]
    paths += [folder / "predictions.csv", folder / "predictions.json"]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(paths) if p.is_file()}


def predict_args(scans: Path, models: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "--aided", str(scans), "--models", str(models), "--out", str(out), "--provider", "cpu",
            "--batch-size", "2", *extra]


@pytest.fixture(scope="module")
def unsharded(exported, scans, tmp_path_factory) -> Path:
    models, _, _ = exported
    out = tmp_path_factory.mktemp("unsharded") / "out"
    code, output = invoke(*predict_args(scans, models, out))
    assert code == 1, output  # the broken PNG: done, one input skipped
    return out


def test_three_shards_merged_equal_one_run_byte_for_byte(exported, scans, unsharded, tmp_path):
    models, _, _ = exported
    out = tmp_path / "out"
    for index in range(3):
        code, output = invoke(*predict_args(scans, models, out, "--num-shards", "3", "--shard-index",
                                            str(index)))
        assert code in (0, 1), output
        assert (out / f"predictions-{index}-of-3.csv").is_file()
        assert (out / f"progress-{index}-of-3.jsonl").is_file()
    assert not (out / "predictions.csv").exists()
    shards = [json.loads((out / f"predictions-{i}-of-3.json").read_text())["predictions"] for i in range(3)]
    files = [{r["file"] for r in records} for records in shards]
    assert all(files) and not (files[0] & files[1] or files[1] & files[2] or files[0] & files[2])
    cine = [i for i, records in enumerate(shards) if any(r["file"] == "cine/loop.dcm" for r in records)]
    assert len(cine) == 1 and sum(r["file"] == "cine/loop.dcm" for r in shards[cine[0]]) == 3  # one shard
    code, output = invoke("predict", "merge", str(out))
    assert code == 0, output
    assert "3 shards: 11 images predicted, 1 skipped" in output
    expected = tree(unsharded)
    assert len([k for k in expected if k.startswith("masks/")]) == 11
    assert tree(out) == expected
    # merging again gives the same bytes; the Python form too
    summary = dlmi.merge_predictions(out)
    assert (summary.shards, summary.predicted, summary.failed) == (3, 11, 1) and tree(out) == expected


def test_the_next_unsharded_run_joins_the_shards(exported, scans, unsharded, tmp_path, capsys):
    models, _, _ = exported
    out = tmp_path / "out"
    for index in range(2):
        dlmi.predict(scans, models, out=out, aided=True, provider="cpu", batch_size=2, num_shards=2,
                     shard_index=index, quiet=True)
    masks = {p: p.stat().st_mtime_ns for p in (out / "masks").rglob("*.png")}
    capsys.readouterr()
    code = run(predict_args(scans, models, out))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "joined the shards 0-of-2, 1-of-2" in err and "11 of 12 images already done" in err
    # nothing predicted again
    assert {p: p.stat().st_mtime_ns for p in (out / "masks").rglob("*.png")} == masks
    assert not list(out.glob("*-of-*"))  # the shards' files are in progress.jsonl now
    assert tree(out) == tree(unsharded)


@pytest.mark.slow
def test_two_shards_at_once_in_one_out(exported, scans, unsharded, tmp_path):
    """Two processes write shards 0 and 1 of 2 into one OUT at the same time: neither blocks the other."""
    models, _, _ = exported
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    commands = [[sys.executable, "-m", "dlmi", *predict_args(scans, models, out, "--num-shards", "2",
                                                            "--shard-index", str(i))] for i in range(2)]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for command in commands]
    results = [r.communicate(timeout=300) for r in runs]
    for process, (_, stderr) in zip(runs, results, strict=True):
        assert process.returncode in (0, 1), stderr
        assert "another dlmi predict" not in stderr
    code, output = invoke("predict", "merge", str(out))
    assert code == 0, output
    assert tree(out) == tree(unsharded)
    assert not list(out.glob(".dlmi-predict*.lock")) and not list(out.rglob("*.tmp"))


def test_a_rerun_of_one_shard_skips_its_images_and_leaves_the_others_outputs(exported, scans, tmp_path):
    models, _, _ = exported
    out = tmp_path / "out"
    for index in range(2):
        invoke(*predict_args(scans, models, out, "--num-shards", "2", "--shard-index", str(index)))
    before = {p: p.read_bytes() for p in (out / "masks").rglob("*.png")}
    code, output = invoke(*predict_args(scans, models, out, "--num-shards", "2", "--shard-index", "0"))
    assert code in (0, 1) and " 0 predicted" in output and "already done" in output, output
    assert {p: p.read_bytes() for p in (out / "masks").rglob("*.png")} == before


def test_a_moved_input_is_left_to_its_new_shard(exported, scans, tmp_path):
    """An input added between runs moves others to another shard: a shard forgets the inputs it no longer
    owns without deleting their outputs (another shard's now), and deletes those of inputs gone."""
    models, _, _ = exported
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("b.png", "c.png", "d.png"):
        (folder / name).write_bytes((scans / "colour.png").read_bytes())
    out = tmp_path / "out"
    invoke(*predict_args(folder, models, out, "--num-shards", "2", "--shard-index", "0"))  # b, d
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["b.png.png", "d.png.png"]
    (folder / "a.png").write_bytes((scans / "colour.png").read_bytes())  # now shard 0: a, c; shard 1: b, d
    (folder / "d.png").unlink()
    invoke(*predict_args(folder, models, out, "--num-shards", "2", "--shard-index", "0"))
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png.png", "b.png.png", "c.png.png"]
    records = json.loads((out / "predictions-0-of-2.json").read_text())["predictions"]
    assert [r["file"] for r in records] == ["a.png", "c.png"]


def test_merge_refuses_a_missing_shard_and_names_it(exported, scans, tmp_path, capsys):
    models, _, _ = exported
    out = tmp_path / "out"
    for index in (0, 2):
        invoke(*predict_args(scans, models, out, "--num-shards", "3", "--shard-index", str(index)))
    line = error_line(capsys, "predict", "merge", str(out))
    assert "shard 1 of 3 is missing" in line and "predictions-1-of-3.json" in line
    assert not (out / "predictions.csv").exists()
    with pytest.raises(DlmiError, match="shard 1 of 3 is missing"):
        dlmi.merge_predictions(out)


def test_merge_refuses_shards_of_other_models_or_settings(exported, scans, tmp_path, capsys):
    models, _, _ = exported
    out = tmp_path / "out"
    invoke(*predict_args(scans, models, out, "--num-shards", "2", "--shard-index", "0"))
    invoke(*predict_args(scans, models, out, "--num-shards", "2", "--shard-index", "1", "--threshold", "0.9"))
    line = error_line(capsys, "predict", "merge", str(out))
    assert "predictions-1-of-2.json: made with other models or settings than predictions-0-of-2.json" in line
    assert "threshold" in line
    table = out / "predictions-1-of-2.json"  # other model files: the digests differ
    data = json.loads(table.read_text())
    data["settings"]["threshold"] = json.loads((out / "predictions-0-of-2.json").read_text())["settings"][
        "threshold"]
    data["settings"]["files"]["two_stage.onnx"] = "0" * 64
    table.write_text(json.dumps(data))
    assert "(differs in: files)" in error_line(capsys, "predict", "merge", str(out))


def test_merge_refuses_shards_of_another_input_list(exported, scans, tmp_path, capsys):
    models, _, _ = exported
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("b.png", "c.png"):
        (folder / name).write_bytes((scans / "colour.png").read_bytes())
    out = tmp_path / "out"
    invoke(*predict_args(folder, models, out, "--num-shards", "2", "--shard-index", "0"))
    (folder / "a.png").write_bytes((scans / "colour.png").read_bytes())
    invoke(*predict_args(folder, models, out, "--num-shards", "2", "--shard-index", "1"))
    assert "saw another list of inputs" in error_line(capsys, "predict", "merge", str(out))


def test_merge_with_nothing_to_merge_and_two_shard_counts(exported, scans, tmp_path, capsys):
    models, _, _ = exported
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no shard tables" in error_line(capsys, "predict", "merge", str(empty))
    assert "no such output folder" in error_line(capsys, "predict", "merge", str(tmp_path / "nothing"))
    out = tmp_path / "out"
    invoke(*predict_args(scans, models, out, "--num-shards", "1", "--shard-index", "0"))
    line = error_line(capsys, *predict_args(scans, models, out, "--num-shards", "2", "--shard-index", "0"))
    assert "holds the outputs of a run in 1 shards" in line
    (out / "predictions-0-of-2.json").write_text((out / "predictions-0-of-1.json").read_text())
    assert "shard tables of runs in 1 and 2 shards" in error_line(capsys, "predict", "merge", str(out))


@pytest.mark.parametrize("extra,message", [
    (["--num-shards", "3"], "--num-shards 3 needs --shard-index I"),
    (["--shard-index", "1"], "--shard-index 1 needs --num-shards N"),
    (["--num-shards", "0", "--shard-index", "0"], "--num-shards must be at least 1, got 0"),
    (["--num-shards", "2", "--shard-index", "2"], "--shard-index must be from 0 to 1"),
    (["--num-shards", "2", "--shard-index", "-1"], "--shard-index must be from 0 to 1"),
])
def test_bad_shard_options_are_one_line(exported, scans, tmp_path, capsys, extra, message):
    models, _, _ = exported
    line = error_line(capsys, *predict_args(scans, models, tmp_path / "out", *extra))
    assert message in line
    assert not (tmp_path / "out").exists()


def test_python_form_checks_the_options(exported, scans, tmp_path):
    models, _, _ = exported
    with pytest.raises(DlmiError, match="--num-shards 2 needs --shard-index"):
        dlmi.predict(scans, models, out=tmp_path / "out", num_shards=2)
    with pytest.raises(DlmiError, match="num_shards"):
        dlmi.predict(scans, models, out=tmp_path / "out", num_shards="2", shard_index=0)


def test_a_running_shard_blocks_an_unsharded_run_and_a_merge_but_not_a_sibling(exported, scans, tmp_path,
                                                                                capsys):
    models, _, _ = exported
    out = tmp_path / "out"
    invoke(*predict_args(scans, models, out, "--num-shards", "2", "--shard-index", "1"))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = out / output_names(Shard(0, 2)).lock
        lock.write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "token": "x"}))
        assert f"pid {holder.pid}" in error_line(capsys, *predict_args(scans, models, out))
        assert f"pid {holder.pid}" in error_line(capsys, "predict", "merge", str(out))
        code, output = invoke(*predict_args(scans, models, out, "--num-shards", "2", "--shard-index", "1"))
        assert code == 1, output  # the sibling shard runs beside it
        main_lock = out / output_names(None).lock
        lock.unlink()
        main_lock.write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "token": "x"}))
        line = error_line(capsys, *predict_args(scans, models, out, "--num-shards", "2", "--shard-index",
                                                "0"))
        assert f"pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()


def test_shard_selection_is_every_nth_of_the_sorted_paths():
    files = ["b/x.png", "a.png", "b/a.png", "c.png", "a b.png"]
    ordered = [str(f) for f in input_order(files)]
    assert ordered == ["a b.png", "a.png", "b/a.png", "b/x.png", "c.png"]
    assert [str(f) for f in shard_inputs(files, Shard(1, 2))] == ["a.png", "b/x.png"]
    union = sorted(str(f) for i in range(3) for f in shard_inputs(files, Shard(i, 3)))
    assert union == sorted(ordered)
    assert check_shard(None, None) is None and check_shard(1, 0) == Shard(0, 1)


def test_a_shard_removes_only_its_own_temporaries(tmp_path):
    from dlmi.inference.shards import PurePosixPath

    files = [PurePosixPath(p) for p in ("a.png", "b.png", "sub/c.png", "cine.dcm")]
    mine = {PurePosixPath("a.png"), PurePosixPath("cine.dcm")}
    owned = own_temporaries(tmp_path, files, mine, output_names(Shard(0, 2)))
    assert owned(tmp_path / "masks" / ".a.png.png.abcd1234.tmp")
    assert owned(tmp_path / "overlays" / "cine.dcm" / ".frame-0002.png.abcd1234.tmp")
    assert owned(tmp_path / ".progress-0-of-2.jsonl.abcd1234.tmp")
    assert not owned(tmp_path / "masks" / ".b.png.png.abcd1234.tmp")
    assert not owned(tmp_path / "masks" / "sub" / ".c.png.png.abcd1234.tmp")
    assert not owned(tmp_path / ".progress-1-of-2.jsonl.abcd1234.tmp")
    assert not owned(tmp_path / ".predictions.csv.abcd1234.tmp")
