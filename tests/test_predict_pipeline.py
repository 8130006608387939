"""``dlmi predict``'s threaded pipeline, its outputs (1-bit masks, optional palette overlays), progress
display, and DICOM inputs (issue 12, items 2 and 4).

Real exported ONNX files (``test_export_helpers``: a brightness gate, a U-Net with random weights), real
onnxruntime, real PNG and DICOM files on disk. The CLI runs in-process through :func:`dlmi.cli.main.run`,
except where the process boundary is the point (a terminal or not, for the progress display).
"""

from __future__ import annotations

import csv
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dicom_files import PATIENT, write_dicom, write_encapsulated, write_jpeg_dicom
from PIL import Image
from pydicom import dcmread
from pydicom.uid import MPEG4HP41
from test_export_helpers import exported_models

from dlmi.cli.main import run
from dlmi.inference.folder import PredictSettings, predict_folder
from dlmi.inference.outputs import OVERLAY_PALETTE
from dlmi.inference.predictor import open_predictor


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_models(tmp_path_factory)


def bright(path: Path, height: int, width: int, seed: int) -> Path:
    """A bright image (the test classifier does not gate it, so its mask is the U-Net's)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(90, 255, (height, width), dtype=np.uint8)).save(path)
    return path


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def dlmi(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def pngs(tmp_path) -> Path:
    folder = tmp_path / "pngs"
    for i, (h, w) in enumerate([(61, 83), (40, 40), (97, 52), (33, 71), (50, 60)]):
        bright(folder / f"{i}.png", h, w, seed=i)
    Image.fromarray(np.full((30, 30), 5, np.uint8)).save(folder / "dark.png")  # gated: an empty mask
    return folder


def test_masks_are_one_bit_pngs_and_overlays_palette_pngs(exported, pngs, tmp_path):
    models, _, _ = exported
    out = tmp_path / "out"
    summary = predict_folder(pngs, out, open_predictor([models], aided=True),
                             PredictSettings(aided=True, batch_size=4), log=lambda _: None)
    assert summary.predicted == 6 and not summary.failed
    table = {row["file"]: row for row in rows(out)}
    palette = np.asarray(OVERLAY_PALETTE, dtype=np.uint8).reshape(-1, 3)
    for name, row in table.items():
        image = Image.open(pngs / name)
        mask_file = Image.open(out / row["mask"])
        assert mask_file.mode == "1" and mask_file.size == image.size
        mask = np.asarray(mask_file)
        assert int(row["lesion_pixels"]) == int(mask.sum())
        overlay = Image.open(out / row["overlay"])
        assert overlay.mode == "P" and overlay.size == image.size
        rgb = np.asarray(overlay.convert("RGB"))
        grey = np.asarray(image.convert("L")).astype(int)
        red_heavy = rgb[..., 0].astype(int) - rgb[..., 1] > 20  # tinted or outline
        assert np.array_equal(red_heavy, mask)  # the lesion, and only the lesion, is red
        # outside the lesion the overlay is the image in grey, to within one of 128 steps
        assert np.all(np.abs(rgb[..., 1][~mask].astype(int) - grey[~mask]) <= 2)
        assert set(np.unique(np.asarray(overlay))) <= set(range(len(palette)))
    assert table["dark.png"]["gated"] == "true" and table["dark.png"]["lesion_pixels"] == "0"
    assert any(int(r["lesion_pixels"]) > 0 for r in table.values())


def test_no_overlays_then_overlays_fills_in_only_the_overlays(exported, pngs, tmp_path, capsys):
    models, _, _ = exported
    out = tmp_path / "out"
    args = ["predict", "--aided", str(pngs), "--models", str(models), "--out", str(out), "--provider", "cpu"]
    code, stdout, _ = dlmi(capsys, *args, "--no-overlays")
    assert code == 0 and f"{out}/masks" in stdout and f"{out}/overlays" not in stdout
    assert not (out / "overlays").exists()
    first = rows(out)
    assert all(row["overlay"] == "" and (out / row["mask"]).is_file() for row in first)
    masks = {row["file"]: (out / row["mask"]).read_bytes() for row in first}

    code, _, err = dlmi(capsys, *args, "--no-overlays")  # nothing left to do
    assert code == 0 and "6 of 6 images already done" in err

    code, _, _ = dlmi(capsys, *args)  # overlays wanted now: those images are done again, with overlays
    assert code == 0
    second = rows(out)
    assert all((out / row["overlay"]).is_file() for row in second)
    assert {row["file"]: (out / row["mask"]).read_bytes() for row in second} == masks


def test_thread_counts_do_not_change_the_outputs(exported, pngs, tmp_path):
    models, _, _ = exported
    outputs = []
    for threads in (1, 3):
        out = tmp_path / f"out{threads}"
        predictor = open_predictor([models], aided=True, threads=threads)
        predict_folder(pngs, out, predictor, PredictSettings(aided=True, batch_size=2, threads=threads),
                       log=lambda _: None)
        outputs.append({p.relative_to(out).as_posix(): p.read_bytes()
                        for p in sorted(out.rglob("*.png"))})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 12


# --- progress: a rich bar on a terminal, plain lines otherwise ---------------------------------------------


def predict_process(pngs: Path, models: Path, out: Path, *, terminal: bool) -> str:
    """``python -m dlmi predict`` as a process, stderr a pseudo-terminal or a pipe; what it wrote there."""
    command = [sys.executable, "-m", "dlmi", "predict", "--aided", str(pngs), "--models", str(models),
               "--out", str(out), "--provider", "cpu"]
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    if not terminal:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr  # 1: broken.png was skipped
        return done.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the follower side closed: the process is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=300) == 1  # broken.png was skipped
    os.close(leader)
    return b"".join(chunks).decode("utf-8", errors="replace")


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_pipe(exported, pngs, tmp_path):
    models, _, _ = exported
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(pngs / "zero.png")
    (pngs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    shown = predict_process(pngs, models, tmp_path / "tty", terminal=True)
    assert "images/s" in shown and "\x1b[" in shown  # rich's bar: a rate, drawn with terminal codes
    assert "8/8" in shown and "1 skipped" in shown  # done of total, failures so far
    assert "broken.png" in shown

    piped = predict_process(pngs, models, tmp_path / "pipe", terminal=False)
    assert "\x1b[" not in piped and "images/s" not in piped
    lines = [line for line in piped.splitlines() if line.strip()]
    assert all(line.startswith("dlmi: ") for line in lines)
    assert any(line.startswith("dlmi: skipped ") and "broken.png" in line for line in lines)


# --- DICOM -------------------------------------------------------------------------------------------------


@pytest.fixture
def dicom_folder(tmp_path) -> Path:
    """A single-frame DICOM, the same image as PNG, a suffix-less UID-named file, a 3-frame native cine (its
    second frame also as PNG), a JPEG (YBR) cine, and a video transfer syntax nothing here decodes."""
    folder = tmp_path / "dicom"
    rng = np.random.default_rng(7)
    still = rng.integers(90, 255, (48, 64), dtype=np.uint8)
    write_dicom(folder / "still.dcm", still)
    Image.fromarray(still).save(folder / "still.png")
    write_dicom(folder / "1.2.826.0.1.3680043.8.498.1", rng.integers(90, 255, (40, 40), dtype=np.uint8))
    cine = rng.integers(90, 255, (3, 36, 44), dtype=np.uint8)
    cine[1, :, :] = np.clip(cine[1].astype(int) - 40, 0, 255)
    write_dicom(folder / "cine" / "loop.DCM", cine)
    Image.fromarray(cine[1]).save(folder / "frame2.png")
    colour = [np.stack([np.full((32, 32), v, np.uint8)] * 3, axis=2) for v in (200, 150)]
    write_jpeg_dicom(folder / "cine" / "colour.dcm", colour)
    write_encapsulated(folder / "video.dcm", MPEG4HP41)
    return folder


def test_dicom_folder_frame_by_frame_with_uids_and_no_patient_data(exported, dicom_folder, tmp_path, capsys):
    models, _, _ = exported
    out = tmp_path / "out"
    code, _, err = dlmi(capsys, "predict", "--aided", str(dicom_folder), "--models", str(models), "--out",
                        str(out), "--provider", "cpu", "--batch-size", "3")
    assert code == 1  # the video file was skipped

    skipped = [line for line in err.splitlines() if "video.dcm" in line]
    assert len(skipped) == 1 and "MPEG-4 AVC/H.264 High Profile / Level 4.1" in skipped[0]
    report = json.loads((out / "predictions.json").read_text())
    assert [f["file"] for f in report["failed"]] == ["video.dcm"]

    table = rows(out)
    header = list(table[0])
    assert header[:5] == ["file", "frame", "sop_instance_uid", "series_instance_uid", "class"]
    keyed = {(r["file"], r["frame"]): r for r in table}
    assert sorted(keyed) == sorted([
        ("still.dcm", "1"), ("still.png", ""), ("frame2.png", ""), ("1.2.826.0.1.3680043.8.498.1", "1"),
        ("cine/loop.DCM", "1"), ("cine/loop.DCM", "2"), ("cine/loop.DCM", "3"),
        ("cine/colour.dcm", "1"), ("cine/colour.dcm", "2"),
    ])
    for (file, frame), row in keyed.items():
        if not frame:
            assert row["sop_instance_uid"] == "" and row["series_instance_uid"] == ""
            continue
        header_ds = dcmread(dicom_folder / file, stop_before_pixels=True)
        assert row["sop_instance_uid"] == header_ds.SOPInstanceUID
        assert row["series_instance_uid"] == header_ds.SeriesInstanceUID
        assert (out / row["mask"]).is_file() and (out / row["overlay"]).is_file()
    # one output per frame of a cine, under the file's name
    assert keyed[("cine/loop.DCM", "2")]["mask"] == "masks/cine/loop.DCM/frame-0002.png"
    assert keyed[("still.dcm", "1")]["mask"] == "masks/still.dcm.png"
    # a DICOM frame is predicted exactly as the same pixels in a PNG
    for dicom_key, png in ((("still.dcm", "1"), "still.png"), (("cine/loop.DCM", "2"), "frame2.png")):
        a, b = keyed[dicom_key], keyed[(png, "")]
        assert (out / a["mask"]).read_bytes() == (out / b["mask"]).read_bytes()
        assert a["prob_benign"] == b["prob_benign"] and a["lesion_pixels"] == b["lesion_pixels"]
    json_rows = {(r["file"], r.get("frame")): r for r in report["predictions"]}
    assert json_rows[("cine/loop.DCM", 3)]["frames"] == 3

    everything = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for value in PATIENT.values():
        assert value.encode() not in everything, value
        assert value.split("^")[0].encode() not in everything, value

    # a re-run finds every frame done
    code, _, err = dlmi(capsys, "predict", "--aided", str(dicom_folder), "--models", str(models), "--out",
                        str(out), "--provider", "cpu")
    assert code == 1 and "9 of 9 images already done" in err
