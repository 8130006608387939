"""Benchmark the review page: how long a 10,000-row ``dlmi review`` page takes to get ready in Chromium.

What it measures:

1. Build: a predict-like output of ``--rows`` images (default 10,000; synthetic 48 px grey images with a
   disk-shaped lesion, a prediction that is the lesion shifted, its truth), written by the real page builder
   (``dlmi.review_page.html.write_page``: a thumbnail and a detail strip per image, then the page): wall time.
2. Load: the page opened in headless Chromium (Debian's /usr/bin/chromium through /usr/bin/chromedriver,
   Selenium), ready = ``window.dlmiReady`` (``performance.now()`` when the first 100 rows are drawn, i.e.
   milliseconds since navigation started); a fresh ``get`` each time, median of 5 loads.
3. Sort: one click on a column header (lesion area) until the first page is redrawn, median of 5.

``--screenshot PATH`` also writes a small, realistic page (BUSI-like synthetic images, a plausible model's
predictions and their truth) and saves its detail view as a PNG (the README's ``docs/review-screenshot.png``).

Usage (from the repository root)::

    nice -n 19 .venv/bin/python benchmarks/review_load.py [--rows N] [--screenshot docs/review-screenshot.png]

Results: ``benchmarks/results/review-load.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from dlmi.review_page.build import ReviewData, ReviewItem
from dlmi.review_page.html import write_page

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = ["normal", "benign", "malignant"]


def disk(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def synthetic_case(rng: np.random.Generator, size: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(true class, grey speckle image with a lesion, predicted mask, true mask)."""
    label = CLASSES[int(rng.integers(0, 3))]
    image = rng.normal(110, 28, (size, size))
    yy = np.arange(size)[:, None]
    image *= 0.75 + 0.5 * (1 - yy / size)  # brighter near the probe, as in ultrasound
    truth = np.zeros((size, size), dtype=bool)
    predicted = np.zeros((size, size), dtype=bool)
    if label != "normal":
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        r = rng.uniform(0.12, 0.2) * size
        truth = disk(size, cy, cx, r) if label == "benign" else \
            disk(size, cy, cx, r) | disk(size, cy + 0.4 * r, cx + 0.6 * r, 0.7 * r)
        image[truth] = 35 + rng.normal(0, 10, truth.sum())
        shift = rng.normal(0, 0.15 * r, 2)
        predicted = disk(size, cy + shift[0], cx + shift[1], r * rng.uniform(0.8, 1.15))
    image = np.asarray(Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1.2)), dtype=np.float64)  # speckle is a few pixels wide, not one
    return label, np.clip(image, 0, 255).astype(np.uint8), predicted, truth


def synthetic_review(rows: int, size: int, seed: int = 0) -> ReviewData:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(rows):
        label, grey, predicted, truth = synthetic_case(rng, size)
        weights = {"normal": [6, 1, 1], "benign": [1, 6, 2], "malignant": [1, 2, 6]}[label]
        probs = rng.dirichlet(weights)
        gated = bool(probs.argmax() == 0)
        if gated:
            predicted = np.zeros_like(predicted)
        row = {"key": f"{label}/case {i + 1}.png", "file": f"{label}/case {i + 1}.png",
               "class": CLASSES[int(probs.argmax())], "probs": [round(float(p), 4) for p in probs],
               "gated": gated, "margin": round(float(probs[0] - probs[1:].max()), 4),
               "area": round(float(predicted.mean()), 6), "pixels": int(predicted.sum()),
               "uncertainty": round(float(1 - probs.max()), 4), "mask_disagreement": None,
               "true_class": label}
        items.append(ReviewItem(row, lambda g=grey, p=predicted, t=truth: (g, p, t)))
    provenance = [("page made by", "benchmarks/review_load.py (synthetic rows)"),
                  ("classes", ", ".join(CLASSES)), ("images", f"{rows} predicted, 0 skipped")]
    return ReviewData(f"dlmi review — {rows} synthetic images", provenance, CLASSES, items,
                      page_id=f"bench-{rows}", normal_class="normal")


def browser(workdir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={workdir / 'profile'}", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def wait_ready(driver, timeout: float = 120.0) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready = driver.execute_script("return window.dlmiReady === undefined ? null : window.dlmiReady")
        if ready is not None:
            return float(ready)
        time.sleep(0.02)
    raise RuntimeError("the page did not get ready")


SORT_SCRIPT = """
const done = arguments[arguments.length - 1];
const start = performance.now();
document.querySelector('th[data-col="area"]').click();
done(performance.now() - start);
"""


def measure(page: Path, workdir: Path, loads: int) -> dict:
    driver = browser(workdir)
    try:
        ready = []
        for _ in range(loads):
            driver.get("about:blank")
            driver.get(page.as_uri())
            ready.append(wait_ready(driver))
        sorts = [float(driver.execute_async_script(SORT_SCRIPT)) for _ in range(loads)]
        shown = driver.execute_script("return document.querySelectorAll('#body tr').length")
    finally:
        driver.quit()
    return {"ready_ms": ready, "ready_ms_median": statistics.median(ready), "sort_ms": sorts,
            "sort_ms_median": statistics.median(sorts), "rows_drawn": shown}


def screenshot(path: Path, workdir: Path) -> None:
    """A realistic 12-image page with truth; its detail view saved as ``path`` (palette PNG, small)."""
    review = synthetic_review(12, 160, seed=7)
    page = write_page(review, workdir / "shot" / "review.html", log=lambda _: None)
    driver = browser(workdir)
    try:
        driver.set_window_size(1280, 820)
        driver.get(page.as_uri())
        wait_ready(driver)
        driver.execute_script("document.querySelector('th[data-col=\"file\"]').click();")
        # the detail of an ungated malignant image (two lesions in its truth, one predicted): all colours show
        position = driver.execute_script(
            "return window.dlmiReview.state.view.findIndex(r => r.true_class === 'malignant' && !r.gated);")
        body = driver.find_element("tag name", "body")
        for _ in range(position + 1):
            body.send_keys("j")
        body.send_keys("f")
        body.send_keys("\n")
        time.sleep(0.5)
        raw = workdir / "raw.png"
        driver.save_screenshot(str(raw))
    finally:
        driver.quit()
    image = Image.open(raw).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=48, help="synthetic image side (pixels)")
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlmi-review-bench-") as tmp:
        workdir = Path(tmp)
        if args.screenshot is not None:
            screenshot(args.screenshot, workdir)
            print(f"screenshot: {args.screenshot} ({args.screenshot.stat().st_size // 1024} KB)")
        review = synthetic_review(args.rows, args.size)
        start = time.perf_counter()
        page = write_page(review, workdir / "review.html", log=lambda _: None)
        build_s = time.perf_counter() - start
        timings = measure(page, workdir, args.loads)
        page_mb = page.stat().st_size / 1e6
    import selenium

    result = {"rows": args.rows, "image_size": args.size, "build_s": round(build_s, 2),
              "page_mb": round(page_mb, 2), **timings, "loads": args.loads,
              "chromium": "/usr/bin/chromium (headless=new)", "selenium": selenium.__version__,
              "machine": f"{platform.machine()}, {platform.system()}"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "review-load.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = f"""# Review page load time

`benchmarks/review_load.py`: a `dlmi review` page of {args.rows:,} synthetic images ({args.size} px, a
thumbnail and a detail strip each, written by the real page builder), opened in headless Chromium
({result['chromium']}, Selenium {result['selenium']}) on {result['machine']}.

| what | value |
|---|---|
| page build (pictures + HTML) | {build_s:.1f} s |
| page size (HTML with the data inlined) | {page_mb:.2f} MB |
| ready (`window.dlmiReady`, ms since navigation start), median of {args.loads} | \
**{timings['ready_ms_median']:.0f} ms** |
| ready, each load | {', '.join(f'{v:.0f}' for v in timings['ready_ms'])} ms |
| sort by a column (click to redrawn first page), median | {timings['sort_ms_median']:.0f} ms |
| rows drawn per page | {timings['rows_drawn']} (the rest is paged; thumbnails load lazily) |
"""
    (RESULTS / "review-load.md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
