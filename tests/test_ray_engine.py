"""``dlmi predict --engine ray`` (issue 20 §2): a real local Ray (one per module, ``num_cpus=2``), real ONNX
models (``test_export_helpers``), real files.

The Ray engine's outputs equal the local engine's byte for byte (masks, overlays, tables); a text file of
paths (plain, relative, ``file://`` URIs) works; an actor killed mid-run (SIGKILL of its process) is
restarted by Ray and every image still ends up predicted once, nothing duplicated in the tables.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from busi_folder import write_busi_folder
from dicom_files import write_dicom
from PIL import Image
from test_export_helpers import exported_models

import dlmi
from dlmi.cli.main import run
from dlmi.errors import DlmiError
from dlmi.inference.folder import PredictSettings, predict_folder
from dlmi.inference.predictor import open_predictor
from dlmi.inference.ray_engine import READY_DIR_ENV, RaySettings, predict_with_ray, require_ray

SRC = Path(dlmi.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray for the module (2 CPUs, a 200 MB object store); its actors write their pid files into
    the folder yielded."""
    ray = pytest.importorskip("ray")
    ready = tmp_path_factory.mktemp("ray-ready")
    saved = {name: os.environ.get(name) for name in (READY_DIR_ENV, "PYTHONPATH")}
    os.environ[READY_DIR_ENV] = str(ready)  # inherited by the workers Ray starts
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), saved["PYTHONPATH"]) if p)
    ray.init(num_cpus=2, object_store_memory=200 * 1024 ** 2, include_dashboard=False,
             logging_level=logging.WARNING)
    try:
        yield ready
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)[0]


@pytest.fixture
def scans(tmp_path) -> Path:
    """BUSI-layout images (masks left out by --exclude), a bright RGBA PNG, a corrupt PNG, a 3-frame DICOM
    cine and a single-frame DICOM."""
    folder = write_busi_folder(tmp_path / "scans", per_class=2, size=64)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(120, 255, (50, 40, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.PNG")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    write_dicom(folder / "cine" / "loop.dcm", rng.integers(90, 255, (3, 36, 44), dtype=np.uint8))
    write_dicom(folder / "still.dcm", rng.integers(0, 30, (40, 48), dtype=np.uint8))
    return folder


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tables(out: Path) -> tuple[bytes, dict]:
    return (out / "predictions.csv").read_bytes(), json.loads((out / "predictions.json").read_text())


def quiet(_: str) -> None:
    pass


def predict_ray(source: Path, out: Path, models: Path, *, actors: int = 1, batch_size: int = 4,
                aided: bool = True, **settings) -> dlmi.inference.folder.PredictSummary:
    opener = {"models": [models], "backend": "onnx", "provider": "auto", "aided": aided}
    return predict_with_ray(source, out, open_predictor(**opener), opener,
                            PredictSettings(aided=aided, batch_size=batch_size, **settings),
                            RaySettings(actors=actors), log=quiet)


@pytest.mark.slow
def test_ray_outputs_equal_the_local_engine_and_a_rerun_skips_them(ray_cluster, exported, scans, tmp_path,
                                                                   capsys):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    summary = predict_folder(scans, local, open_predictor([exported], aided=True),
                             PredictSettings(aided=True, exclude=("*_mask*",), batch_size=4), log=quiet)
    assert summary.predicted == 6 + 1 + 3 + 1 and len(summary.failed) == 1
    capsys.readouterr()
    code = run(["predict", "--aided", str(scans), "--models", str(exported), "--out", str(on_ray),
                "--exclude", "*_mask*", "--batch-size", "4", "--engine", "ray", "--actors", "1"])
    captured = capsys.readouterr()
    assert code == 1, captured.err  # broken.png skipped, as by the local engine
    assert "broken.png" in captured.err and "11 predicted" in captured.out
    assert digests(on_ray / "masks") == digests(local / "masks")
    assert digests(on_ray / "overlays") == digests(local / "overlays")
    assert tables(on_ray) == tables(local)
    with (on_ray / "predictions.csv").open(newline="") as handle:
        frames = [row["frame"] for row in csv.DictReader(handle) if row["file"] == "cine/loop.dcm"]
    assert frames == ["1", "2", "3"]
    assert not (on_ray / ".dlmi-predict.lock").exists()

    again = predict_ray(scans, on_ray, exported, exclude=("*_mask*",))
    assert (again.predicted, again.skipped, len(again.failed)) == (0, 11, 1)
    assert tables(on_ray) == tables(local)

    (scans / "benign" / "benign (1).png").unlink()  # gone since: its outputs go too, as locally
    third = predict_ray(scans, on_ray, exported, exclude=("*_mask*",))
    assert (third.predicted, third.skipped) == (0, 10)
    assert not (on_ray / "masks" / "benign" / "benign (1).png.png").exists()


@pytest.mark.slow
def test_a_text_file_of_paths_or_uris(ray_cluster, exported, scans, tmp_path):
    local = tmp_path / "local"
    predict_folder(scans, local, open_predictor([exported], aided=True),
                   PredictSettings(aided=True, exclude=("*_mask*",)), log=quiet)
    expected = digests(local / "masks")
    paths, uris = scans / "paths.txt", tmp_path / "uris.txt"
    paths.write_text("\n".join(["benign/benign (1).png", str(scans / "malignant" / "malignant (2).png"),
                                "cine/loop.dcm", "", "# a comment", "missing.png"]) + "\n")
    uris.write_text("\n".join([(scans / "normal" / "normal (1).png").as_uri(),
                               (scans / "cine" / "loop.dcm").as_uri(), (scans / "gone.png").as_uri()]))
    for listing, masks, missing in [
        (paths, {"benign/benign (1).png.png", "malignant/malignant (2).png.png"}, "missing.png"),
        (uris, {"normal/normal (1).png.png"}, "gone.png"),  # read through pyarrow.fs
    ]:
        out = tmp_path / listing.stem
        summary = predict_ray(listing, out, exported)
        assert summary.predicted == len(masks) + 3
        assert [f["file"] for f in summary.failed] == [missing]
        masks |= {f"cine/loop.dcm/frame-000{i}.png" for i in (1, 2, 3)}
        ours = digests(out / "masks")
        assert ours == {k: v for k, v in expected.items() if k in masks} and set(ours) == masks
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(f"{scans / 'rgba.PNG'}\n{(scans / 'still.dcm').as_uri()}\n")
    with pytest.raises(DlmiError, match="mixes local paths and URIs"):
        predict_ray(mixed, tmp_path / "mixed", exported)


@pytest.mark.slow
def test_an_actor_killed_mid_run_still_predicts_every_image_once(ray_cluster, exported, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    count = 80
    for i in range(count):
        Image.fromarray(rng.integers(40, 250, (96, 96), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    for stale in ray_cluster.glob("*.pid"):
        stale.unlink()
    out = tmp_path / "out"
    killed: list[tuple[int, int]] = []  # (pid, masks written when it was killed)

    def kill_first_actor() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pids = list(ray_cluster.glob("*.pid"))
            masks = list((out / "masks").glob("*.png")) if (out / "masks").is_dir() else []
            if pids and masks:
                pid = int(pids[0].stem)
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, len(masks)))
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_first_actor, daemon=True)
    watcher.start()
    summary = predict_ray(folder, out, exported, batch_size=2, aided=False)
    watcher.join(timeout=5)
    assert killed and killed[0][1] < count, "the actor was not killed while the run was going"
    restarted = {int(p.stem) for p in ray_cluster.glob("*.pid")} - {killed[0][0]}
    assert restarted, "Ray did not start another actor after the kill"
    assert summary.predicted == count and not summary.failed
    with (out / "predictions.csv").open(newline="") as handle:
        files = [row["file"] for row in csv.DictReader(handle)]
    assert sorted(files) == [f"img{i:03d}.png" for i in range(count)]  # each once
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()[1:]]
    assert len(progress) == count == len({r["file"] for r in progress})
    assert len(list((out / "masks").glob("*.png"))) == count and not list(out.rglob(".*.tmp"))


def test_ray_missing_is_one_line_naming_the_extra(monkeypatch, exported, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is absent
    with pytest.raises(DlmiError, match=r"pip install 'dlmi\[ray\]'"):
        require_ray()
    code = run(["predict", str(tmp_path), "--models", str(exported), "--out", str(tmp_path / "o"),
                "--engine", "ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'dlmi[ray]'" in err[0], err


@pytest.mark.parametrize(("args", "message"), [
    (["--actors", "2"], "--actors: only with --engine ray"),
    (["--engine", "spark"], "--engine spark: expected local or ray"),
    (["--engine", "ray", "--provider", "cuda"], "--provider cuda with --engine ray needs --gpus-per-actor"),
])
def test_ray_options_mistakes_are_one_line(args, message, exported, tmp_path, capsys):
    code = run(["predict", str(tmp_path), "--models", str(exported), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_list_file_with_the_local_engine_is_refused_in_one_line(exported, tmp_path, capsys):
    listing = tmp_path / "inputs.txt"
    listing.write_text("a.png\n")
    code = run(["predict", str(listing), "--models", str(exported), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "inputs.txt: a list of inputs is read by --engine ray" in err[0]


@pytest.mark.slow
def test_python_form(ray_cluster, exported, scans, tmp_path):
    summary = dlmi.predict(scans, exported, out=tmp_path / "out", aided=True, engine="ray", actors=1,
                           exclude=["*_mask*"], quiet=True)
    assert summary.predicted == 11 and summary.running_on.startswith("ray (1 actors)")
    assert (tmp_path / "out" / "predictions.csv").is_file()


@pytest.mark.parametrize(("name", "content", "message"), [
    ("scan.png", None, "scan.png: is an image; give a folder of images or a text file listing them"),
    ("empty.txt", "# nothing\n\n", "empty.txt: lists no input paths"),
    ("latin.txt", b"caf\xe9.png\n", "latin.txt: cannot read the list of inputs"),
    ("mixed.txt", "a.png\ns3://bucket/b.png\n", "mixed.txt: mixes local paths and URIs"),
])
def test_a_bad_list_of_inputs_is_one_line_before_ray_starts(name, content, message, exported, tmp_path):
    source = tmp_path / name
    if content is None:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(source)
    elif isinstance(content, bytes):
        source.write_bytes(content)
    else:
        source.write_text(content)
    with pytest.raises(DlmiError, match=message):
        predict_ray(source, tmp_path / "out", exported)
    assert not (tmp_path / "out").exists()
