"""Benchmark lean deployment: ``dlmi --help`` time, ``dlmi predict --backend onnx`` peak memory, int8 speed.

What it measures, each as a whole process (a fresh interpreter per run), side by side with an older commit
(``--baseline``, default 8fa4d28, the main branch before the work on torch-free deployment):

1. ``python -m dlmi --help``: wall time, median of 5 runs (after one warm-up run). Target ≤ 0.6 s.
2. ``python -m dlmi predict --aided FOLDER --backend onnx --provider cpu``: peak resident memory (the
   child's ``ru_maxrss`` from ``wait4``) and wall time, over the same images (``--images``, default 78
   BUSI images at their own size, every 9th of the 702), median of 3 runs. Target ≤ 350 MB. The current tree
   runs its fp32 and its int8 files.
3. int8: model time of ``*_int8.onnx`` against the fp32 files in onnxruntime (same session options, same
   threads, the same preprocessed images, batch 8 and 1; runs alternate, median of 5), and the export's
   agreement check (val side).

The baseline runs from ``git archive BASELINE src`` with the same virtual environment (``PYTHONPATH``), plus
a stand-in ``dlmi`` distribution with that commit's entry points, so plugins load as they did then.

Models: seed-cnn at 128 px and an aided U-Net (width 16, 128 px) trained briefly on the built-in synthetic
data set (nothing is trained on real data), exported fp32 and int8 (calibrated on the run's train side,
checked on its val side). ``--models DIR`` reuses an export folder instead.

Usage (from the repository root; on a shared machine, at low priority)::

    nice -n 19 .venv/bin/python benchmarks/deploy.py

Results: a section of ``benchmarks/results/deploy-cpu.md`` (between ``<!-- deploy-lean:begin/end -->``)
and the ``lean`` key of ``deploy-cpu.json``; the other sections of those files (the end-to-end throughput
that ``benchmarks/predict_throughput.py`` writes) are kept.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BUSI_CLASSES = ("normal", "benign", "malignant")
BEGIN, END = "<!-- deploy-lean:begin -->", "<!-- deploy-lean:end -->"
SECTION = "lean"
HELP_TARGET_S = 0.6
RSS_TARGET_MB = 350.0
MB = 1e6


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS, and the versions that matter here."""
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    memory = next((int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), float("nan"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory, 1),
            "os": platform.platform(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__}


def baseline_tree(commit: str, folder: Path) -> dict[str, str]:
    """``commit``'s ``src`` in ``folder`` and a stand-in distribution with its entry points; the env to run
    it."""
    archive = subprocess.run(["git", "archive", commit, "src", "pyproject.toml"], cwd=REPO,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    dist = folder / "meta" / "dlmi-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dlmi\nVersion: 0.1.0\n")
    lines = ["[console_scripts]", "dlmi = dlmi.cli.main:main", "", "[dlmi]"]
    lines += [f"{name} = {value}" for name, value in project["project"]["entry-points"]["dlmi"].items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return {"PYTHONPATH": os.pathsep.join([str(folder / "src"), str(folder / "meta")])}


def run_measured(args: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in MB, exit code, stderr tail) of ``python ARGS`` as a fresh process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen([sys.executable, *args], cwd=REPO, env={**os.environ, **env},
                                   stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        tail = errors.read().decode(errors="replace")[-400:]
    return wall, usage.ru_maxrss * 1024 / MB, process.returncode, tail


def help_times(trees: dict[str, dict[str, str]], runs: int = 5) -> dict[str, Any]:
    """Median wall time of ``python -m dlmi --help`` per tree (runs alternate between trees)."""
    times: dict[str, list[float]] = {name: [] for name in trees}
    for env in trees.values():  # warm-up: the file cache
        run_measured(["-m", "dlmi", "--help"], env)
    for _ in range(runs):
        for name, env in trees.items():
            wall, _, code, tail = run_measured(["-m", "dlmi", "--help"], env)
            if code != 0:
                raise SystemExit(f"dlmi --help failed in {name}: {tail}")
            times[name].append(wall)
    return {name: {"median_s": round(statistics.median(t), 3), "runs_s": [round(x, 3) for x in t]}
            for name, t in times.items()}


def predict_runs(variants: dict[str, tuple[dict[str, str], list[str]]], folder: Path, models: Path,
                 workdir: Path, runs: int = 3) -> dict[str, Any]:
    """Peak RSS and wall time of ``dlmi predict --aided`` (onnx, CPU) per variant; runs alternate."""
    results: dict[str, dict[str, list[float]]] = {n: {"wall_s": [], "peak_rss_mb": []} for n in variants}
    errors: dict[str, str] = {}
    for index in range(runs):
        for name, (env, extra) in variants.items():
            out = workdir / f"predict-{name.replace(' ', '-')}-{index}"
            args = ["-m", "dlmi", "predict", "--aided", str(folder), "--models", str(models),
                    "--out", str(out), "--backend", "onnx", "--provider", "cpu", *extra]
            wall, rss, code, tail = run_measured(args, env)
            if code != 0:
                errors[name] = tail
                continue
            results[name]["wall_s"].append(wall)
            results[name]["peak_rss_mb"].append(rss)
    summary: dict[str, Any] = {}
    for name, values in results.items():
        if not values["wall_s"]:
            summary[name] = {"error": errors.get(name, "no run")}
            continue
        summary[name] = {"median_wall_s": round(statistics.median(values["wall_s"]), 2),
                         "peak_rss_mb": round(max(values["peak_rss_mb"]), 1),
                         "runs_wall_s": [round(x, 2) for x in values["wall_s"]],
                         "runs_peak_rss_mb": [round(x, 1) for x in values["peak_rss_mb"]]}
    return summary


def busi_subset(data: Path, count: int, folder: Path) -> int:
    """Symlink ``count`` BUSI images (every k-th, no masks) into ``folder``; how many."""
    files = sorted(p for c in BUSI_CLASSES for p in (data / c).glob("*.png") if "_mask" not in p.name)
    if not files:
        raise SystemExit(f"no BUSI images under {data}")
    chosen = files[:: max(len(files) // count, 1)][:count]
    folder.mkdir(parents=True)
    for i, path in enumerate(chosen):
        (folder / f"{i:03d}_{path.parent.name}_{path.name}").symlink_to(path.resolve())
    return len(chosen)


def train_and_export(workdir: Path, epochs: int) -> tuple[Path, dict[str, Any]]:
    """Brief synthetic training (128 px; U-Net width 16, aided), then fp32 + int8 export; the folder and the
    int8 check."""
    from dlmi.export.onnx_export import export_onnx
    from dlmi.export.quantize import quantize_export
    from dlmi.training import TrainConfig, train_classifier, train_segmenter

    common = {"dataset": "synthetic", "image_size": 128, "epochs": epochs, "batch_size": 16,
              "device": "cpu", "quiet": True}
    cls = train_classifier(TrainConfig(task="classification", out=str(workdir / "cls"), **common))
    seg = train_segmenter(TrainConfig(task="segmentation", out=str(workdir / "seg"), base_channels=16,
                                      aid=str(cls), **common))
    models = workdir / "models"
    export_onnx(cls, seg, models)
    report = quantize_export(models)
    return models, {"calibration": report.calibration, "check": report.check,
                    "files": {a.file: a.to_json() for a in report.agreements}}


def describe_models(models: Path) -> str:
    """What an export folder holds, from its files' metadata."""
    from dlmi.export.metadata import read_metadata

    props = read_metadata(models / "two_stage.onnx")
    return (f"{props.get('classifier_model')} at {props.get('classifier_image_size')} px and "
            f"{props.get('segmenter_model')} {props.get('segmenter_model_options')} at "
            f"{props.get('segmenter_image_size')} px, trained on {props.get('segmenter_dataset')} "
            f"(export folder {models})")


def stored_int8_check(models: Path) -> dict[str, Any] | None:
    """The int8 check that ``dlmi export onnx --int8`` stored in the folder's ``export.json``."""
    manifest_path = models / "export.json"
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    files = {name: entry["int8_check"] for name, entry in manifest.get("files", {}).items()
             if "int8_check" in entry}
    if not files:
        return None
    info = manifest.get("int8", {})
    return {"calibration": info.get("calibration", "?"), "check": info.get("check", "?"), "files": files}


def int8_speed(models: Path, images: list[np.ndarray], threads: int, rounds: int = 5) -> dict[str, Any]:
    """fp32 / int8 model time per file, batch 8 and 1 (median of ``rounds``, runs alternating)."""
    import onnxruntime as ort

    from dlmi.export.metadata import read_metadata
    from dlmi.runtime.preprocess import model_input
    from dlmi.runtime.providers import session_options

    result: dict[str, Any] = {}
    # The U-Net takes any size: also at 256 px, where the convolutions weigh more than the overheads.
    for name, label, size_override in (("classifier", "classifier", None), ("unet", "unet", None),
                                       ("two_stage", "two_stage", None), ("unet", "unet at 256 px", 256)):
        fp32_path, int8_path = models / f"{name}.onnx", models / f"{name}_int8.onnx"
        if not (fp32_path.is_file() and int8_path.is_file()):
            continue
        size = size_override or int(read_metadata(fp32_path)["image_size"])
        x = np.stack([model_input(image, size) for image in images]).astype(np.float32)
        sessions = {p: ort.InferenceSession(str(path), session_options(threads),
                                            providers=["CPUExecutionProvider"])
                    for p, path in (("fp32", fp32_path), ("int8", int8_path))}
        entry: dict[str, Any] = {"input": f"{len(x)} images at {size}x{size}"}
        for batch in (8, 1):
            chunks = [x[i:i + batch] for i in range(0, len(x), batch)]
            times: dict[str, list[float]] = {"fp32": [], "int8": []}
            for session in sessions.values():
                session.run(None, {"image": chunks[0]})
            for _ in range(rounds):
                for precision, session in sessions.items():
                    start = time.perf_counter()
                    for chunk in chunks:
                        session.run(None, {"image": chunk})
                    times[precision].append(time.perf_counter() - start)
            fp32_s, int8_s = statistics.median(times["fp32"]), statistics.median(times["int8"])
            entry[f"batch_{batch}"] = {"fp32_s": round(fp32_s, 3), "int8_s": round(int8_s, 3),
                                       "speed_ratio": round(fp32_s / int8_s, 2)}
        entry["size_mb"] = {"fp32": round(fp32_path.stat().st_size / MB, 2),
                            "int8": round(int8_path.stat().st_size / MB, 2)}
        result[label] = entry
    return result


def markdown(result: dict[str, Any]) -> str:
    m, base = result["machine"], result["baseline_commit"]
    helps, predicts = result["help"], result["predict"]
    current = result["tree"]
    lines = [
        "## Lean deployment: `dlmi --help`, `dlmi predict` memory, int8 (`benchmarks/deploy.py`)",
        "",
        f"Measured {result['date']} by `benchmarks/deploy.py` on {m['cpu']} ({m['cores']} cores, "
        f"{m['memory_gib']} GiB), {m['os']}, Python {m['python']}, onnxruntime {m['onnxruntime']}.",
        f"**The machine was shared and loaded** (other engineers' training and tests): load average "
        f"{' / '.join(str(v) for v in result['load_average_before'])} (1/5/15 min) before, "
        f"{' / '.join(str(v) for v in result['load_average_after'])} after; the benchmark ran at "
        "`nice -n 19`. "
        "Absolute times are therefore slower than on a quiet machine; runs of the two trees alternate, so "
        "both suffered alike.",
        "",
        f"Compared: this tree ({current}) against commit `{base}` (the main branch before this work), "
        "same virtual environment. Each number is a whole process, from start to exit.",
        "",
        "| | this tree | " + f"`{base}` | target |",
        "|---|---:|---:|---|",
    ]
    h_now, h_base = helps["this tree"]["median_s"], helps[base]["median_s"]
    lines.append(f"| `dlmi --help`, median of 5 | {h_now:.2f} s | {h_base:.2f} s | ≤ {HELP_TARGET_S} s: "
                 f"{'met' if h_now <= HELP_TARGET_S else 'NOT met'} |")
    p_now, p_base = predicts["this tree fp32"], predicts[base]
    if "error" in p_base:
        base_rss, base_wall = "failed", "failed"
    else:
        base_rss, base_wall = f"{p_base['peak_rss_mb']:.0f} MB", f"{p_base['median_wall_s']:.1f} s"
    lines.append(f"| `dlmi predict --aided --backend onnx`, peak RSS | {p_now['peak_rss_mb']:.0f} MB | "
                 f"{base_rss} | ≤ {RSS_TARGET_MB:.0f} MB: "
                 f"{'met' if p_now['peak_rss_mb'] <= RSS_TARGET_MB else 'NOT met'} |")
    lines.append(f"| same, wall time (median of 3) | {p_now['median_wall_s']:.1f} s | {base_wall} | "
                 "(throughput: issue 12 item 2, not here) |")
    p8 = predicts.get("this tree int8", {})
    if "peak_rss_mb" in p8:
        lines.append(f"| same with `--int8` | {p8['peak_rss_mb']:.0f} MB, {p8['median_wall_s']:.1f} s | | |")
    lines += [
        "",
        f"Images: {result['images']}. Models: {result['models']}.",
        "",
        "### int8 (`dlmi export onnx --int8`, `dlmi predict --int8`)",
        "",
        f"Model time only, onnxruntime CPU provider, {result['threads']} threads, the same preprocessed BUSI "
        "images for both; fp32 time ÷ int8 time (above 1: int8 is faster). Median of 5 alternating rounds.",
        "",
        "| file | input | batch 8: fp32 / int8 | ratio | batch 1: fp32 / int8 | ratio | size fp32 → int8 |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, entry in result["int8_speed"].items():
        b8, b1 = entry["batch_8"], entry["batch_1"]
        lines.append(f"| {name} | {entry['input']} | {b8['fp32_s']:.3f} / {b8['int8_s']:.3f} s | "
                     f"{b8['speed_ratio']:.2f}× | {b1['fp32_s']:.3f} / {b1['int8_s']:.3f} s | "
                     f"{b1['speed_ratio']:.2f}× | "
                     f"{entry['size_mb']['fp32']} → {entry['size_mb']['int8']} MB |")
    check = result.get("int8_check")
    if check:
        lines += ["", f"Agreement with fp32 (the export's check; calibration: {check['calibration']}; "
                      f"check: {check['check']}):",
                  "",
                  "| file | same class | mask Dice vs fp32 (all pixels) | per image: mean / worst | passed |",
                  "|---|---:|---:|---:|---|"]
        for name, entry in check["files"].items():
            same = f"{entry['class_agreement']:.1%}" if entry.get("class_agreement") is not None else "–"
            dice = f"{entry['mask_dice']:.4f}" if entry.get("mask_dice") is not None else "–"
            per = (f"{entry['mask_dice_mean']:.4f} / {entry['mask_dice_worst']:.4f}"
                   if entry.get("mask_dice") is not None else "–")
            lines.append(f"| {name} | {same} | {dice} | {per} | {'yes' if entry['passed'] else 'NO'} |")
        lines += ["", "Targets: mask Dice ≥ 0.98 and the same class on ≥ 99 % of the images, else no int8 "
                      "file is written."]
    lines += ["", "### Commands", ""] + [f"    {c}" for c in result["commands"]] + [""]
    return "\n".join(lines)


def save(result: dict[str, Any], out: Path) -> None:
    """This benchmark's section of ``out``.md / .json, keeping the other sections."""
    from dlmi.atomic import write_json_atomic, write_text_atomic

    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    data = json.loads(json_path.read_text()) if json_path.is_file() else {}
    data[SECTION] = result
    write_json_atomic(json_path, data)
    section = f"{BEGIN}\n{markdown(result)}{END}\n"
    text = md_path.read_text() if md_path.is_file() else "# Deployment on the CPU\n"
    if BEGIN in text and END in text:
        pattern = re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?"
        text = re.sub(pattern, lambda _: section, text, flags=re.S)
    else:  # first, right below the title
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{section}\n{rest.lstrip(chr(10))}"
    write_text_atomic(md_path, text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="8fa4d28", help="the commit to compare against")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "busi")
    parser.add_argument("--images", type=int, default=78)
    parser.add_argument("--models", type=Path,
                        help="an export folder with fp32 and int8 files (skip training)")
    parser.add_argument("--epochs", type=int, default=4, help="synthetic training epochs per network")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads for the int8 timing")
    parser.add_argument("--out", type=Path, default=RESULTS / "deploy-cpu")
    args = parser.parse_args(argv)

    from dlmi.imageio import read_grey

    load_before = [round(v, 2) for v in os.getloadavg()]
    head = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    baseline = git("rev-parse", "--short", args.baseline)
    with tempfile.TemporaryDirectory(prefix="dlmi-deploy-bench-") as tmp:
        work = Path(tmp)
        trees = {"this tree": {}, baseline: baseline_tree(args.baseline, work / "baseline")}
        int8_check = None
        if args.models is not None:
            models = args.models
            model_note = describe_models(models)
            int8_check = stored_int8_check(models)
        else:
            models, int8_check = train_and_export(work / "train", args.epochs)
            model_note = (f"seed-cnn at 128 px and an aided U-Net (width 16) at 128 px, {args.epochs} epochs "
                          "each on the synthetic data set (speed and memory do not depend on the weights)")
        folder = work / "images"
        count = busi_subset(args.data, args.images, folder)
        print(f"dlmi --help ({', '.join(trees)}) ...", flush=True)
        helps = help_times(trees)
        print("dlmi predict ...", flush=True)
        variants = {"this tree fp32": ({}, []), "this tree int8": ({}, ["--int8"]),
                    baseline: (trees[baseline], [])}
        predicts = predict_runs(variants, folder, models, work)
        print("int8 model time ...", flush=True)
        images = [read_grey(p) for p in sorted(folder.iterdir())]
        speed = int8_speed(models, images, args.threads)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "nice": os.nice(0),
        "tree": f"commit {head}" + (" with uncommitted changes of parallel work" if dirty else ""),
        "baseline_commit": baseline,
        "images": f"{count} BUSI images at their own size (every {max(702 // args.images, 1)}th of "
                  f"{args.data}, no masks)",
        "models": model_note,
        "threads": args.threads,
        "help": helps,
        "predict": predicts,
        "int8_speed": speed,
        "int8_check": int8_check,
        "targets": {"help_s": HELP_TARGET_S, "predict_peak_rss_mb": RSS_TARGET_MB},
        "commands": [
            "nice -n 19 .venv/bin/python benchmarks/deploy.py"
            + (f" --models {args.models}" if args.models else ""),
            "per run: python -m dlmi --help",
            "per run: python -m dlmi predict --aided IMAGES --models MODELS --out OUT --backend onnx "
            "--provider cpu [--int8]",
            f"baseline: git archive {baseline} src | tar -x; "
            "PYTHONPATH=<that>/src:<stand-in dist-info with its entry points>, same .venv",
        ],
    }
    save(result, args.out)
    print(markdown(result))


if __name__ == "__main__":
    main()
