"""``dlmi review``: the static review page, built from a real ``dlmi predict`` run and driven in headless
Chromium (Debian's ``chromium`` and ``chromium-driver``) with Selenium.

The browser tests skip, saying so, only where /usr/bin/chromium or /usr/bin/chromedriver is absent
(``scripts/system-packages.sh`` installs them). Each browser test saves a screenshot under its temporary
folder; ``DLMI_REVIEW_SCREENSHOT=path.png`` copies the detail view's screenshot there as well.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from busi_folder import write_busi_folder
from dicom_files import PATIENT, write_dicom
from test_export_helpers import exported_models
from typer.testing import CliRunner

from dlmi.cli.main import make_app, run
from dlmi.review_page.build import ReviewData, ReviewItem, true_class
from dlmi.review_page.flags import flagged_files, read_flags
from dlmi.review_page.html import write_page

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
BROWSER_MISSING = not (CHROMIUM.is_file() and CHROMEDRIVER.is_file())
NO_BROWSER = ("headless Chromium not installed: the browser tests need /usr/bin/chromium and "
              "/usr/bin/chromedriver (Debian's chromium and chromium-driver; scripts/system-packages.sh "
              "installs them)")
needs_browser = pytest.mark.skipif(BROWSER_MISSING, reason=NO_BROWSER)
STUDY_UID = "1.2.826.0.1.3680043.8.498.424242"


def invoke(*args: str) -> tuple[int, str]:
    """``dlmi ARGS`` through Typer's CliRunner: (exit code, output)."""
    result = CliRunner().invoke(make_app(), list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def page_data(page: Path) -> dict:
    """The data block the page's script reads."""
    text = page.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="dlmi-data">(.*?)</script>', text, re.S)
    assert block is not None
    return json.loads(block.group(1))


@pytest.fixture(scope="module")
def predicted(tmp_path_factory) -> tuple[Path, Path]:
    """(a real dlmi predict output folder, its BUSI-layout input folder, which holds the true masks too).

    The inputs: 3 BUSI images a class (masks beside them), a DICOM file with a patient's name, ID and
    study UID, and a corrupt PNG (skipped)."""
    models, _, _ = exported_models(tmp_path_factory)
    base = tmp_path_factory.mktemp("review")
    scans = write_busi_folder(base / "scans", per_class=3, size=96)
    rng = np.random.default_rng(3)
    write_dicom(scans / "dicom" / "scan.dcm", rng.integers(90, 200, (80, 80), dtype=np.uint8),
                StudyInstanceUID=STUDY_UID, StudyDescription="BREAST US LEFT")
    (scans / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    out = base / "pred"
    code, output = invoke("predict", "--aided", str(scans), "--models", str(models), "--out", str(out),
                          "--provider", "cpu", "--exclude", "*_mask*", "--review")
    assert code == 1, output  # the broken PNG: done, one input skipped
    assert (out / "review.html").is_file(), output
    return out, scans


def test_predict_review_writes_the_page_with_provenance(predicted):
    out, scans = predicted
    data = page_data(out / "review.html")
    provenance = dict(data["provenance"])
    assert provenance["classes"] == "normal, benign, malignant"
    assert provenance["input folder"] == str(scans.resolve())
    assert provenance["images"] == "10 predicted, 1 skipped"
    assert re.search(r"two_stage\.onnx sha256 [0-9a-f]{64}", provenance["models"])
    assert "the arg-max class is normal" in provenance["gate"] and "threshold 0.5" in provenance["gate"]
    assert "exported 20" in provenance["export"] and provenance["page made by"].startswith("dlmi ")
    assert data["links"][0][0] == "model card" and data["links"][0][1].endswith("MODEL_CARD.md")
    assert (out / data["links"][0][1]).resolve().is_file()  # a relative link that resolves
    assert len(data["rows"]) == 10 and all(r["thumb"] and (out / r["thumb"]).is_file() for r in data["rows"])
    assert any("broken.png" in s for s in data["skipped"])
    row = next(r for r in data["rows"] if r["file"] == "benign/benign (1).png")
    assert row["class"] in ("normal", "benign", "malignant") and len(row["probs"]) == 3
    records = {r["file"]: r for r in json.loads((out / "predictions.json").read_text())["predictions"]}
    # gate margin: P(normal) minus the largest other probability (arg-max rule); positive exactly when gated
    for r in data["rows"]:
        assert r["margin"] == pytest.approx(r["probs"][0] - max(r["probs"][1:]), abs=2e-4)
        assert (r["margin"] > 0) == r["gated"]
        record = records[r["file"]]  # the uncertainty columns as predict wrote them; no --truth, no Dice
        assert r["uncertainty"] == pytest.approx(record["uncertainty"], abs=1e-4) and r["dice"] is None


def test_no_patient_or_study_identifier_reaches_the_page(predicted):
    out, _ = predicted
    texts = [(out / "review.html").read_text(encoding="utf-8")]
    texts += [p.name for p in (out / "review-files").rglob("*")]
    everything = "\n".join(texts)
    assert "dicom/scan.dcm" in everything  # the relative path is shown
    for value in [*PATIENT.values(), STUDY_UID, "BREAST US LEFT", "Doe", "Jane"]:
        assert value not in everything, value
    data = page_data(out / "review.html")
    row = next(r for r in data["rows"] if r["file"] == "dicom/scan.dcm")
    assert not any("uid" in key.lower() for key in row)


def test_truth_scores_and_true_classes(predicted, tmp_path):
    out, scans = predicted
    page = tmp_path / "elsewhere" / "page.html"
    code, output = invoke("review", str(out), "--truth", str(scans), "--out", str(page))
    assert code == 0, output
    data = page_data(page)
    rows = {r["file"]: r for r in data["rows"]}
    assert rows["malignant/malignant (2).png"]["true_class"] == "malignant"
    assert rows["dicom/scan.dcm"]["true_class"] is None and rows["dicom/scan.dcm"]["dice"] is None
    # Dice and IoU against the BUSI masks, recomputed here from the files
    from dlmi.imageio import read_mask

    for name in ("benign/benign (1).png", "malignant/malignant (3).png"):
        pred = read_mask([out / "masks" / f"{name}.png"])
        truth = read_mask([scans / name.replace(".png", "_mask.png")])
        inter, total, union = (pred & truth).sum(), pred.sum() + truth.sum(), (pred | truth).sum()
        assert rows[name]["dice"] == pytest.approx(2 * inter / total, abs=1e-4)
        assert rows[name]["iou"] == pytest.approx(inter / union, abs=1e-4)
    normal = rows["normal/normal (1).png"]  # an all-black NAME_mask.png: empty truth
    assert normal["dice"] == (1.0 if normal["gated"] else 0.0)
    assert (page.parent / "page-files" / "detail").is_dir()
    assert all((page.parent / r["detail"]).is_file() for r in data["rows"])
    assert (page.parent / data["links"][0][1]).is_file()  # the model card, linked from the page's own folder


def test_truth_from_merged_mask_files(predicted, tmp_path):
    """BUSI's NAME_mask_1.png is OR-merged with NAME_mask.png (the rule the BUSI dataset reads)."""
    out, scans = predicted
    truth = tmp_path / "truth"
    shutil.copytree(scans / "benign", truth / "benign")
    from PIL import Image

    extra = np.zeros((96, 96), dtype=np.uint8)
    extra[:10, :10] = 255
    Image.fromarray(extra).save(truth / "benign" / "benign (1)_mask_1.png")
    page = tmp_path / "review.html"
    assert invoke("review", str(out), "--truth", str(truth), "--out", str(page))[0] == 0
    rows = {r["file"]: r for r in page_data(page)["rows"]}
    from dlmi.imageio import read_mask

    pred = read_mask([out / "masks" / "benign" / "benign (1).png.png"])
    merged = read_mask([truth / "benign" / "benign (1)_mask.png", truth / "benign" / "benign (1)_mask_1.png"])
    assert rows["benign/benign (1).png"]["dice"] == pytest.approx(
        2 * (pred & merged).sum() / (pred.sum() + merged.sum()), abs=1e-4)
    assert rows["malignant/malignant (1).png"]["dice"] is None  # no truth file, not normal: no score


def test_true_class_rule():
    classes = ["normal", "benign", "malignant"]
    assert true_class("site/Benign/x.png", classes) == "benign"
    assert true_class("benign/malignant/x.png", classes) == "malignant"  # the nearest folder
    assert true_class("x.png", classes) is None and true_class("benign.png", classes) is None


def test_flags_csv_read_back_and_refusals(predicted, tmp_path, capsys):
    out, _ = predicted
    flags = tmp_path / "flags.csv"
    flags.write_text('file,flag,note\r\nbenign/benign (2).png,yes,"edge, missed"\r\n'
                     "normal/normal (1).png,no,looks fine\r\n", encoding="utf-8")
    assert flagged_files(read_flags(flags)) == ["benign/benign (2).png"]
    page = tmp_path / "flagged.html"
    assert invoke("review", str(out), "--flags", str(flags), "--out", str(page))[0] == 0
    rows = {r["file"]: r for r in page_data(page)["rows"]}
    assert rows["benign/benign (2).png"]["flag"] is True
    assert rows["benign/benign (2).png"]["note"] == "edge, missed"
    assert rows["normal/normal (1).png"]["flag"] is False
    assert rows["normal/normal (1).png"]["note"] == "looks fine"
    for text, said in (("name,score\r\na,1\r\n", "not a flags CSV"),
                       ("file,flag,note\r\nbenign/benign (2).png,maybe,\r\n", "neither yes nor no"),
                       ("file,flag,note\r\nother/x.png,yes,\r\n",
                        "other/x.png is not an image of this page")):
        flags.write_text(text, encoding="utf-8")
        capsys.readouterr()
        assert run(["review", str(out), "--flags", str(flags), "--out", str(page)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0] and "Traceback" not in err[0], err
    capsys.readouterr()
    assert run(["review", str(tmp_path)]) == 2
    assert "predictions.json: not found" in capsys.readouterr().err


# --- in the browser ---------------------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium through chromedriver, downloads into ``tmp_path/downloads``."""
    if BROWSER_MISSING:
        pytest.skip(NO_BROWSER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'chrome-profile'}",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def wait_ready(driver, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if driver.execute_script("return document.body && document.body.getAttribute('data-ready')") == "1":
            return
        time.sleep(0.05)
    raise AssertionError(f"the page did not get ready in {timeout} s")


def column(driver, name: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [td.text for td in driver.find_elements(By.CSS_SELECTOR, f'#body td[data-col="{name}"]')]


def press(driver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    for key in keys:
        ActionChains(driver).send_keys(key).perform()


def save_shot(driver, path: Path) -> Path:
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


@needs_browser
def test_in_the_browser_sort_filter_flag_export_detail(predicted, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out, scans = predicted
    page = tmp_path / "review.html"
    assert invoke("review", str(out), "--truth", str(scans), "--out", str(page))[0] == 0
    browser.get(page.as_uri())
    wait_ready(browser)
    assert browser.find_element(By.ID, "matrix-box").is_displayed()
    save_shot(browser, tmp_path / "list.png")
    rows = browser.execute_script("return window.dlmiReview.rows.length")
    assert rows == 10 and len(column(browser, "file")) == 10

    # sort by P(benign), then descending: the numbers come out in order, empty values last
    header = browser.find_element(By.CSS_SELECTOR, 'th[data-col="p1"]')
    header.click()
    values = [float(v) for v in column(browser, "p1")]
    assert values == sorted(values) and len(values) == 10
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="p1"]').click()
    values = [float(v) for v in column(browser, "p1")]
    assert values == sorted(values, reverse=True)
    sorted_by = browser.find_element(By.CSS_SELECTOR, 'th[data-col="p1"]').get_attribute("aria-sort")
    assert sorted_by == "descending"
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="file"]').click()
    files = column(browser, "file")
    assert files[0] == "benign/benign (1).png" and files[-1] == "normal/normal (3).png"  # numeric-aware order

    # filter by class: only that predicted class is listed
    predicted_classes = set(column(browser, "class"))
    chosen = sorted(predicted_classes)[0]
    Select(browser.find_element(By.ID, "filter-class")).select_by_value(chosen)
    assert set(column(browser, "class")) == {chosen}
    expected = sum(r["class"] == chosen for r in page_data(page)["rows"])
    assert len(column(browser, "class")) == expected
    browser.find_element(By.ID, "clear-filters").click()
    assert len(column(browser, "file")) == 10

    # a confusion-matrix cell filters the list to that (true, predicted) pair
    cell = browser.find_element(By.CSS_SELECTOR, '#matrix td[data-true="benign"][data-pred="benign"] button')
    count = int(cell.text)
    cell.click()
    assert len(column(browser, "file")) == count
    assert all(f.startswith("benign/") for f in column(browser, "file"))
    browser.find_element(By.ID, "clear-filters").click()

    # flag two images with the keyboard: j j f j f (rows 2 and 3 in file order)
    browser.find_element(By.TAG_NAME, "body").click()
    press(browser, "jjfjf")
    flagged = [f for f, flag in zip(column(browser, "file"), column(browser, "flag"), strict=True) if flag]
    assert flagged == ["benign/benign (2).png", "benign/benign (3).png"]
    Select(browser.find_element(By.ID, "filter-flag")).select_by_value("flagged")
    assert column(browser, "file") == flagged
    Select(browser.find_element(By.ID, "filter-flag")).select_by_value("")

    # export: the downloaded flags.csv, and the same text on the page
    browser.find_element(By.ID, "export-flags").click()
    target = browser.downloads / "flags.csv"
    end = time.monotonic() + 20
    while not target.is_file() and time.monotonic() < end:
        time.sleep(0.1)
    assert target.is_file(), list(browser.downloads.iterdir())
    text = target.read_text(encoding="utf-8")
    assert text == browser.find_element(By.ID, "flags-csv").get_attribute("value")
    assert list(csv.reader(io.StringIO(text))) == [["file", "flag", "note"],
                                                    ["benign/benign (2).png", "yes", ""],
                                                    ["benign/benign (3).png", "yes", ""]]
    assert flagged_files(read_flags(target)) == flagged  # and dlmi reads it back

    # the flags survive a reload (local storage)
    browser.refresh()
    wait_ready(browser)
    kept = browser.execute_script("return window.dlmiReview.rows.filter(r => r.flag).map(r => r.key)")
    assert kept == flagged

    # the detail view: open with Enter on the current row, j/k move, f flags, a note, Esc closes
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="file"]').click()
    browser.find_element(By.TAG_NAME, "body").click()
    press(browser, "j\n")
    detail = browser.find_element(By.ID, "detail")
    assert detail.is_displayed()
    assert browser.find_element(By.ID, "detail-file").text == "benign/benign (1).png"
    assert [s.text for s in browser.find_elements(By.CSS_SELECTOR, "#detail-captions span")] == \
        ["image", "truth", "prediction", "errors"]
    image = browser.find_element(By.ID, "detail-image")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
    press(browser, "jk")
    assert browser.find_element(By.ID, "detail-file").text == "benign/benign (1).png"
    press(browser, "jjj")  # the DICOM file: no truth, so image | prediction only
    assert browser.find_element(By.ID, "detail-file").text == "dicom/scan.dcm"
    assert [s.text for s in browser.find_elements(By.CSS_SELECTOR, "#detail-captions span")] == \
        ["image", "prediction"]
    press(browser, "jf")
    assert browser.find_element(By.ID, "detail-file").text == "malignant/malignant (1).png"
    note = browser.find_element(By.ID, "detail-note")
    note.send_keys("outline too wide")
    shot = save_shot(browser, tmp_path / "detail.png")
    if os.environ.get("DLMI_REVIEW_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["DLMI_REVIEW_SCREENSHOT"])
    browser.find_element(By.ID, "detail-file").click()  # out of the note field
    press(browser, "\ue00c")  # Escape
    assert not detail.is_displayed()
    csv_text = browser.execute_script("return window.dlmiReview.flagsCsv()")
    assert "malignant/malignant (1).png,yes,outline too wide" in csv_text


@needs_browser
@pytest.mark.slow
def test_a_10000_row_page_loads_and_sorts(browser, tmp_path):
    """10,000 rows (synthetic, sharing one thumbnail): the page gets ready and sorts; the bound is a sanity
    check only (benchmarks/review_load.py measures the load time)."""
    from selenium.webdriver.common.by import By

    rng = np.random.default_rng(0)
    classes = ["normal", "benign", "malignant"]
    items = []
    for i in range(10_000):
        probs = rng.dirichlet([1, 1, 1])
        items.append(ReviewItem({"key": f"case{i:05d}.png", "file": f"case{i:05d}.png",
                                 "class": classes[int(probs.argmax())],
                                 "probs": [round(float(p), 4) for p in probs],
                                 "gated": bool(probs.argmax() == 0), "margin": None,
                                 "area": round(float(rng.random()), 4), "pixels": None, "uncertainty": None,
                                 "mask_disagreement": None, "true_class": None}, None))
    review = ReviewData("10k", [("images", "10000")], classes, items, page_id="bench")
    page = write_page(review, tmp_path / "big.html", log=lambda _: None)
    start = time.monotonic()
    browser.get(page.as_uri())
    wait_ready(browser)
    loaded = time.monotonic() - start
    assert loaded < 30, loaded
    assert browser.find_element(By.ID, "count").text.startswith("10000 of 10000")
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="area"]').click()
    areas = [float(v.rstrip(" %")) for v in column(browser, "area")]
    assert len(areas) == 100 and areas == sorted(areas)
    smallest = min(item.row["area"] for item in items)
    assert areas[0] == pytest.approx(100 * smallest, abs=0.051)
    save_shot(browser, tmp_path / "10k.png")


@pytest.mark.slow
def test_evaluate_writes_the_test_sides_page(tmp_path):
    """``dlmi evaluate RUN`` writes review-test.html: one row per test image, the aided masks it scored
    (the mean of the rows' IoU is the report's seed mIoU of the aided variant)."""
    from conftest import run_cli

    cls, seg = tmp_path / "cls", tmp_path / "seg"
    common = ["--dataset", "synthetic", "--epochs", "1", "--device", "cpu", "--quiet"]
    for args in (["classifier", "--image-size", "64", "--batch-size", "32", "--out", str(cls)],
                 ["segmenter", "--image-size", "32", "--base-channels", "4", "--batch-size", "16", "--aid",
                  str(cls), "--out", str(seg)]):
        done = run_cli("train", *args[:1], *common, *args[1:])
        assert done.returncode == 0, done.stderr
    code, output = invoke("evaluate", str(seg), "--json", "--resamples", "100")
    assert code == 0, output
    result = json.loads(output[output.index("{"):])
    page = seg / "review-test.html"
    assert page.is_file() and (seg / "review-test-files" / "detail").is_dir()
    data = page_data(page)
    rows = data["rows"]
    assert len(rows) == result["context"]["n_images"]
    assert all(r["true_class"] in ("normal", "benign", "malignant") for r in rows)
    assert all((page.parent / r["detail"]).is_file() for r in rows)
    aided = result["segmentation"]["variants"]["aided"]
    assert np.mean([r["iou"] for r in rows]) == pytest.approx(aided["miou_seed"]["value"], abs=1e-3)
    assert all((r["margin"] > 0) == r["gated"] for r in rows)
    assert "the arg-max class is normal" in dict(data["provenance"])["gate"]
    assert invoke("evaluate", str(seg), "--no-review", "--side", "val", "--resamples", "100")[0] == 0
    assert not (seg / "review-val.html").exists()


def test_older_outputs_and_calibration_columns(predicted, tmp_path, capsys):
    """Outputs without the context block (an older dlmi) still make a page ("not recorded", no margin);
    ``uncertainty`` and ``mask_disagreement`` are shown when the records carry them."""
    out, _ = predicted
    older = tmp_path / "older"
    shutil.copytree(out, older, ignore=shutil.ignore_patterns("review*"))
    table = json.loads((older / "predictions.json").read_text(encoding="utf-8"))
    del table["context"]
    for i, record in enumerate(table["predictions"]):
        record["uncertainty"] = 0.01 * i
        record["mask_disagreement"] = None if i == 0 else 0.5
    (older / "predictions.json").write_text(json.dumps(table), encoding="utf-8")
    assert invoke("review", str(older))[0] == 0
    data = page_data(older / "review.html")
    provenance = dict(data["provenance"])
    assert provenance["input folder"] == "not recorded" and "not recorded" in provenance["gate"]
    rows = data["rows"]
    assert [r["uncertainty"] for r in rows] == pytest.approx([0.01 * i for i in range(len(rows))])
    assert rows[0]["mask_disagreement"] is None and rows[1]["mask_disagreement"] == 0.5
    assert all(r["margin"] is None for r in rows)
    assert all(r["thumb"] for r in rows)  # the pictures come from the overlays when the inputs are unknown
    capsys.readouterr()
    assert run(["predict", str(older), "--out", str(tmp_path / "p"), "--num-shards", "2",
                "--shard-index", "0", "--review"]) == 2
    assert "--review with --num-shards" in capsys.readouterr().err
