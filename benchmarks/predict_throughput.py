"""End-to-end throughput of ``dlmi predict --aided`` on a folder of images, side by side with an older commit.

Each measurement is a whole ``dlmi predict`` process (start-up, imports, reading, inference, writing PNGs and
tables), timed from outside, into a fresh output folder. Runs of the current tree, of the older commit and of
the *floor* (``--floor``: a script that only decodes each image and writes one mask PNG, the least any
predictor must do) alternate for ``--rounds`` rounds, so a machine busy with other work slows them alike;
the medians and the median of the per-round ratios are reported, with the load average before and after.

Models: ``--make-models DIR`` writes random-weight checkpoints in this process (seed-cnn classifier at 128 px,
U-Net base 8 at 128 px, three BUSI classes) and exports them with ``dlmi export onnx``; both commits run those
same ONNX files.

Usage (from the repository root; the older commit checked out with ``git worktree add /tmp/old 8fa4d28``;
``nice -n 19`` when the machine is shared, and ``--conditions`` to say what else ran)::

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/predict_throughput.py \\
        --make-models /tmp/tp-models
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/predict_throughput.py \\
        --models /tmp/tp-models --data ../shared/data/busi --old-src /tmp/old/src --old-commit 8fa4d28

Results: ``benchmarks/results/predict-throughput-cpu.md`` and ``.json``, and the same as a section of
``deploy-cpu.md`` and a ``predict_throughput`` key of ``deploy-cpu.json`` (other sections of those files are
kept; ``--from-json`` rewrites both from the stored results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SECTION = "predict_throughput"
BEGIN, END = "<!-- predict-throughput:begin -->", "<!-- predict-throughput:end -->"
CLASSES = ("normal", "benign", "malignant")
SIZE, BASE = 128, 8
STUB = '"""Benchmark stub: a plugin the older commit does not have."""\n'

FLOOR = r'''
import sys, os
from pathlib import Path
import numpy as np
from PIL import Image
src, out = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(p for p in src.rglob("*.png") if "_mask" not in p.name.lower())
for p in files:
    with Image.open(p) as im:
        grey = im.convert("L")
    mask = np.asarray(grey) > 128
    target = out / p.relative_to(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(str(target) + ".png", compress_level=1)
print(len(files))
'''


def make_models(folder: Path) -> None:
    """Random-weight checkpoints made here, exported with ``dlmi export onnx`` into ``folder``."""
    import torch

    from dlmi.plugins import create_model
    from dlmi.runtime.checkpoint import save_checkpoint
    from dlmi.runtime.trained import build_meta

    torch.manual_seed(0)
    work = folder.parent / (folder.name + "-checkpoints")
    work.mkdir(parents=True, exist_ok=True)
    cls = create_model("seed-cnn", num_classes=len(CLASSES), image_size=SIZE).eval()
    seg = create_model("unet", base_channels=BASE).eval()
    cls_meta = build_meta(task="classification", model="seed-cnn", model_options={}, num_classes=len(CLASSES),
                          classes=CLASSES, normal_class="normal", image_size=SIZE, dataset="busi",
                          run_dir=str(work / "cls"))
    seg_meta = build_meta(task="segmentation", model="unet", model_options={"base_channels": BASE},
                          num_classes=1, classes=list(CLASSES), normal_class=None, image_size=SIZE,
                          dataset="busi", run_dir=str(work / "seg"), threshold=0.5)
    cls_path = save_checkpoint(work / "classifier.pt",
                               {"model": cls.state_dict(), "meta": cls_meta, "epoch": 1})
    seg_path = save_checkpoint(work / "segmenter.pt",
                               {"model": seg.state_dict(), "meta": seg_meta, "epoch": 1})
    subprocess.run([sys.executable, "-m", "dlmi", "export", "onnx", "--classifier", str(cls_path),
                    "--segmenter", str(seg_path), "--out", str(folder)], check=True)


def stub_missing_plugins(old_src: Path) -> list[str]:
    """Empty modules for the plugin entry points this environment's metadata names but the older tree lacks
    (plugins added since, e.g. ``dlmi.models.resnet``), so its plugin loader starts; they register nothing."""
    from importlib.metadata import entry_points

    made = []
    for entry in entry_points(group="dlmi"):
        if not entry.value.startswith("dlmi."):
            continue
        target = old_src.joinpath(*entry.value.split(".")).with_suffix(".py")
        if not target.exists() and not target.with_suffix("").is_dir():
            target.write_text(STUB)
        if target.is_file() and target.read_text() == STUB:
            made.append(entry.value)
    return made


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds user + system, output) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, done.stdout + done.stderr


def predict_command(src: Path, data: Path, models: Path, out: Path,
                    extra: list[str]) -> tuple[list[str], dict]:
    env = dict(os.environ, PYTHONPATH=str(src))
    command = [sys.executable, "-m", "dlmi", "predict", "--aided", str(data), "--models", str(models),
               "--out", str(out), "--exclude", "*_mask*", *extra]
    return command, env


def count_outputs(out: Path) -> dict[str, int]:
    def count(sub: str) -> int:
        return sum(1 for _ in (out / sub).rglob("*.png")) if (out / sub).is_dir() else 0

    return {"masks": count("masks"), "overlays": count("overlays")}


def size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def measure(args: argparse.Namespace) -> dict[str, Any]:
    data, models = Path(args.data).resolve(), Path(args.models).resolve()
    images = sum(1 for p in data.rglob("*.png") if "_mask" not in p.name.lower())
    stubs = stub_missing_plugins(Path(args.old_src))
    variants: dict[str, tuple[list[str], dict]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="dlmi-throughput-"))
    outs = {}
    for name, src, extra in (("old", Path(args.old_src), []), ("new", REPO / "src", []),
                             ("new --no-overlays", REPO / "src", ["--no-overlays"])):
        outs[name] = scratch / name.replace(" ", "_")
        variants[name] = predict_command(src, data, models, outs[name], extra)
    floor_script = scratch / "floor.py"
    floor_script.write_text(FLOOR)
    outs["floor"] = scratch / "floor"
    variants["floor"] = ([sys.executable, str(floor_script), str(data), str(outs["floor"])], dict(os.environ))
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu_times: dict[str, list[float]] = {k: [] for k in variants}
    load_before = os.getloadavg()
    tails: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    sizes: dict[str, float] = {}
    for round_index in range(args.rounds):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in order:
            subprocess.run(["rm", "-rf", str(outs[name])], check=True)
            command, env = variants[name]
            seconds, cpu, text = timed(command, env)
            times[name].append(seconds)
            cpu_times[name].append(cpu)
            tails[name] = text[-600:]
            counts[name] = count_outputs(outs[name])
            sizes[name] = size_mib(outs[name])
            print(f"round {round_index + 1} {name}: {seconds:.2f} s ({images / seconds:.1f} images/s), "
                  f"CPU {cpu:.1f} s, load {os.getloadavg()[0]:.2f}",
                  flush=True)
    load_after = os.getloadavg()
    subprocess.run(["rm", "-rf", str(scratch)], check=True)
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        rows[name] = {"seconds": [round(v, 3) for v in values], "median_s": round(median, 3),
                      "cpu_s": [round(v, 2) for v in cpu_times[name]],
                      "median_cpu_s": round(statistics.median(cpu_times[name]), 2),
                      "images_per_s": round(images / median, 2), "outputs": counts[name],
                      "output_mib": round(sizes[name], 1)}
    ratio = [o / n for o, n in zip(times["old"], times["new"], strict=True)]
    ratio_no = [o / n for o, n in zip(times["old"], times["new --no-overlays"], strict=True)]
    cpu_ratio = [o / n for o, n in zip(cpu_times["old"], cpu_times["new"], strict=True)]
    floor_share = [f / n for f, n in zip(times["floor"], times["new"], strict=True)]
    floor_share_no = [f / n for f, n in zip(times["floor"], times["new --no-overlays"], strict=True)]
    return {
        "images": images, "data": str(data), "models": str(models), "rounds": args.rounds,
        "old_commit": args.old_commit, "new_commit": git_head(),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
        "nice": os.nice(0),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "shared": True},
        "threads": "the defaults (no --threads): onnxruntime's own choice for the model (one intra-op thread "
                   "per core, here 2), min(4, cores) = 2 reader threads, 4 writer threads; "
                   "OMP_NUM_THREADS=1 in the environment",
        "old_tree_stub_plugins": stubs,
        "commands": {k: " ".join(v[0]) for k, v in variants.items()},
        "results": rows,
        "speedup_median": round(statistics.median(ratio), 2),
        "speedup_no_overlays_median": round(statistics.median(ratio_no), 2),
        "cpu_ratio_median": round(statistics.median(cpu_ratio), 2),
        "floor_over_new_median": round(statistics.median(floor_share), 2),
        "floor_over_new_no_overlays_median": round(statistics.median(floor_share_no), 2),
        "last_output": tails,
    }


def git_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        "## `dlmi predict --aided` end-to-end throughput (issue 12, item 2)",
        "",
        f"{result['images']} BUSI images at their own size (`{result['data']}`, `--exclude '*_mask*'`), "
        f"random-weight models exported with `dlmi export onnx` (seed-cnn classifier {SIZE} px, U-Net base "
        f"{BASE} at {SIZE} px), the same ONNX files for both commits. Whole process, fresh output folder, "
        f"{result['rounds']} alternating rounds, medians. Machine: {result['machine']['cpus']} CPUs "
        f"({result['machine']['processor']}), Python {result['machine']['python']}; load average "
        f"{result['load_before']} before, {result['load_after']} after (1, 5, 15 minutes; above "
        f"{result['machine']['cpus']}, other jobs shared the cores). "
        f"Threads: {result['threads']}. Niceness of every run: {result.get('nice', 'not recorded')}."
        + (f" {result['conditions']}" if result.get("conditions") else ""),
        "",
        f"Compared: `{result['old_commit']}` (old) and `{result['new_commit']}` + this change (new).",
        "",
        "| run | median s | images/s | median CPU s | masks | overlays | output MiB | each round (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in result["results"].items():
        lines.append(f"| {name} | {row['median_s']:.2f} | {row['images_per_s']:.1f} "
                     f"| {row['median_cpu_s']:.1f} "
                     f"| {row['outputs']['masks']} "
                     f"| {row['outputs']['overlays']} | {row['output_mib']:.1f} | "
                     f"{', '.join(f'{s:.1f}' for s in row['seconds'])} |")
    lines += [
        "",
        f"- new / old throughput (median of per-round ratios): **{result['speedup_median']}×** with "
        "overlays, "
        f"**{result['speedup_no_overlays_median']}×** with `--no-overlays`; CPU time (user + system, the "
        f"measure a busy machine disturbs least) old / new: {result['cpu_ratio_median']}×.",
        f"- the floor (decode each image, write one 1-bit mask PNG at zlib level 1, nothing else, one "
        f"thread, no start-up of onnxruntime) takes {result['floor_over_new_median']:.0%} of new's time with "
        f"overlays and {result['floor_over_new_no_overlays_median']:.0%} with `--no-overlays`.",
        *[f"- {note}" for note in result.get("notes", [])],
        "",
        "Commands:",
        "",
        *[f"- {name}: `{cmd}`" for name, cmd in result["commands"].items()],
        END,
    ]
    return "\n".join(lines) + "\n"


def save(result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    own = RESULTS / "predict-throughput-cpu"
    own.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    own.with_suffix(".md").write_text("# `dlmi predict` throughput on the CPU\n\n" + markdown(result))
    json_path, md_path = RESULTS / "deploy-cpu.json", RESULTS / "deploy-cpu.md"
    data = json.loads(json_path.read_text()) if json_path.is_file() else {}
    data[SECTION] = result
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    text = md_path.read_text() if md_path.is_file() else "# Deployment on the CPU\n\n"
    section = markdown(result)
    if BEGIN in text and END in text:
        pattern = re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?"
        text = re.sub(pattern, lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md_path.write_text(text)
    print(f"wrote {md_path} and {json_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-models", type=Path, help="write random-weight models here and stop")
    parser.add_argument("--models", default="/tmp/tp-models")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "busi"))
    parser.add_argument("--old-src", default="/tmp/old/src")
    parser.add_argument("--old-commit", default="8fa4d28")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--conditions", default="", help="a sentence on what else ran on the machine")
    parser.add_argument("--from-json", type=Path, help="rewrite the result files from this stored result")
    args = parser.parse_args()
    if args.from_json:
        stored = json.loads(args.from_json.read_text())
        save(stored.get(SECTION, stored))
        return
    if args.make_models:
        make_models(args.make_models)
        return
    result = measure(args)
    result["conditions"] = args.conditions
    print(json.dumps({k: result[k] for k in ("speedup_median", "speedup_no_overlays_median",
                                             "floor_over_new_median")}))
    if not args.no_save:
        save(result)


if __name__ == "__main__":
    main()
