"""Benchmark two-stage prediction: onnxruntime against PyTorch eager, same images, same process.

What it measures (all on the CPU here; threads = --threads for both runtimes):

1. *Model only*: the two-stage pipeline (classifier → gate → U-Net) on preprocessed BUSI images, batch
   sizes --batch-sizes. ``two_stage.onnx`` in onnxruntime (dlmi's session options) against the same
   :class:`dlmi.runtime.two_stage.TwoStage` module in PyTorch eager (``torch.inference_mode()``). Runs of the
   two alternate, so a busy machine slows both alike. images/s = images / wall time; latency = wall time
   of one batch / batch size (the median over rounds; at batch 1, the per-image latency).
2. *Variants*: onnxruntime graph-optimisation levels and thread counts, PyTorch channels-last — to show
   where the difference comes from.
3. *End to end*: ``predict_folder`` (read, preprocess, predict, resize back, write PNGs and tables) over
   the same images with each backend, resizing and tiling (``--tile``).
4. *Resize vs tile quality*: mIoU at the images' original size against BUSI's masks — only with trained
   models (--classifier/--segmenter); with random weights only speed is reported.
5. *Memory*: resident memory (RSS) sampled every 100 images while predicting --memory-images small images.

Usage (from the repository root):

    .venv/bin/python benchmarks/predict.py                      # random weights, speed only
    .venv/bin/python benchmarks/predict.py --classifier runs/cls --segmenter runs/seg

Results: ``benchmarks/results/predict-cpu.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from dlmi import __version__
from dlmi.export.onnx_export import export_onnx
from dlmi.imageio import read_grey, read_mask
from dlmi.inference.folder import PredictSettings, predict_folder
from dlmi.inference.predictor import open_predictor
from dlmi.metrics.segmentation import EMPTY_MASK_RULE, IOU_DEFINITION, iou
from dlmi.plugins import create_model
from dlmi.runtime.checkpoint import save_checkpoint
from dlmi.runtime.preprocess import model_input
from dlmi.runtime.providers import open_session, session_options
from dlmi.runtime.trained import build_meta, load_trained
from dlmi.runtime.two_stage import TwoStage

REPO = Path(__file__).resolve().parents[1]
BUSI_CLASSES = ("normal", "benign", "malignant")
MEMORY_MODEL_SIZE = 64


def rss_mib() -> float:
    """Resident set size of this process (MiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def busi_images(data: Path, count: int) -> list[Path]:
    """``count`` BUSI images (no masks), spread over the classes in the data set's proportions."""
    files = sorted(p for c in BUSI_CLASSES for p in (data / c).glob("*.png") if "_mask" not in p.name)
    if not files:
        raise SystemExit(f"no BUSI images under {data}")
    step = max(len(files) // count, 1)
    return files[::step][:count]


def random_checkpoints(folder: Path, size: int, classifier_size: int, base: int) -> tuple[Path, Path]:
    """Randomly initialised seed-cnn and unet in the checkpoint format (speed only)."""
    torch.manual_seed(0)
    cls = create_model("seed-cnn", num_classes=3, image_size=classifier_size)
    seg = create_model("unet", base_channels=base)
    common = {"dataset": "busi", "run_dir": None}
    cls_meta = build_meta(task="classification", model="seed-cnn", model_options={}, num_classes=3,
                          classes=BUSI_CLASSES, normal_class="normal", image_size=classifier_size, **common)
    seg_meta = build_meta(task="segmentation", model="unet", model_options={"base_channels": base},
                          num_classes=1, classes=[], normal_class=None, image_size=size, **common)
    return (save_checkpoint(folder / "classifier.pt", {"model": cls.state_dict(), "meta": cls_meta}),
            save_checkpoint(folder / "segmenter.pt", {"model": seg.state_dict(), "meta": seg_meta}))


def timed_rounds(runners: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Wall times of each runner, alternating runners within each round (one warm-up call each first)."""
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            time.sleep(0.2)  # let the other runtime's worker threads go idle (onnxruntime's spin)
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def batches_of(x: np.ndarray, batch: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(x[i:i + batch]) for i in range(0, len(x), batch)]


def model_only(pipeline: TwoStage, onnx_path: Path, inputs: np.ndarray, batch_sizes: list[int], threads: int,
               rounds: int) -> list[dict[str, Any]]:
    """Images/s and latency of the two-stage pipeline, onnxruntime vs eager PyTorch (plus variants)."""
    import onnxruntime as ort

    def ort_session(level: Any = None, n_threads: int = threads, spin: bool = False) -> Any:
        options = session_options(n_threads, spin=spin)
        if level is not None:
            options.graph_optimization_level = level
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    sessions = {
        "onnxruntime (dlmi: all optimisations, no spinning)": ort_session(),
        "onnxruntime, threads spin (its default)": ort_session(spin=True),
        "onnxruntime, optimisations off": ort_session(ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        "onnxruntime, basic optimisations": ort_session(ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
    }
    if threads > 1:
        sessions["onnxruntime, 1 thread"] = ort_session(n_threads=1)
    channels_last = copy.deepcopy(pipeline).to(memory_format=torch.channels_last).eval()
    rows = []
    for batch in batch_sizes:
        chunks = batches_of(inputs, batch)
        tensors = [torch.from_numpy(c) for c in chunks]

        def torch_run(module: torch.nn.Module = pipeline, tensors: list[torch.Tensor] = tensors,
                      memory_format: torch.memory_format = torch.contiguous_format) -> None:
            with torch.inference_mode():
                for t in tensors:
                    module(t.contiguous(memory_format=memory_format))

        def ort_run(session: Any, chunks: list[np.ndarray] = chunks) -> None:
            for c in chunks:
                session.run(None, {"image": c})

        runners: dict[str, Callable[[], None]] = {"PyTorch eager": torch_run}
        runners["PyTorch eager, channels-last"] = lambda: torch_run(channels_last,
                                                                    memory_format=torch.channels_last)
        for name, session in sessions.items():
            runners[name] = lambda s=session: ort_run(s)
        torch.set_num_threads(threads)
        times = timed_rounds(runners, rounds)
        for name, walls in times.items():
            rows.append({
                "runtime": name, "batch_size": batch, "images": len(inputs), "rounds": rounds,
                "images_per_s": len(inputs) / statistics.median(walls),
                "images_per_s_best": len(inputs) / min(walls),
                "latency_ms_per_image": 1000 * statistics.median(walls) / len(inputs),
                "latency_ms_per_image_best": 1000 * min(walls) / len(inputs),
                "wall_s": walls,
            })
    return rows


def link_images(files: list[Path], folder: Path) -> list[str]:
    """Symlink ``files`` into ``folder`` under unique, ordered names; the names."""
    folder.mkdir(parents=True)
    names = []
    for i, path in enumerate(files):
        name = f"{i:04d}_{path.parent.name}_{path.name}"
        (folder / name).symlink_to(path.resolve())
        names.append(name)
    return names


def timed_predict(folder: Path, out: Path, predictor: Any, tile: bool, batch_size: int) -> tuple[float, int]:
    """Wall time and image count of one ``predict_folder`` pass (outputs overwritten)."""
    settings = PredictSettings(aided=True, tile=tile, batch_size=batch_size, overwrite=True)
    start = time.perf_counter()
    summary = predict_folder(folder, out, predictor, settings, log=lambda m: None)
    return time.perf_counter() - start, summary.predicted


def end_to_end(files: list[Path], tile_files: list[Path], models: Path, checkpoints: list[Path],
               workdir: Path, threads: int, batch_size: int, rounds: int) -> list[dict[str, Any]]:
    """predict_folder over the same images with each backend: resizing (rounds alternating the backends)
    and tiling (one pass each, on ``tile_files``)."""
    folders = {"resize": workdir / "e2e-resize", "tile": workdir / "e2e-tile"}
    link_images(files, folders["resize"])
    link_images(tile_files, folders["tile"])
    predictors = {}
    for backend, sources in (("onnx", [models]), ("torch", checkpoints)):
        for mode in ("resize", "tile"):
            predictors[backend, mode] = open_predictor(sources, backend=backend, provider="cpu", aided=True,
                                                       tile=mode == "tile", threads=threads)
    walls: dict[tuple[str, str], list[float]] = {key: [] for key in predictors}
    counts: dict[tuple[str, str], int] = {}
    for mode, passes in (("resize", rounds), ("tile", 1)):
        for _ in range(passes):
            for backend in ("onnx", "torch"):
                key = (backend, mode)
                wall, count = timed_predict(folders[mode], workdir / f"out-{backend}-{mode}", predictors[key],
                                            mode == "tile", batch_size)
                walls[key].append(wall)
                counts[key] = count
    rows = []
    for (backend, mode), times in sorted(walls.items(), key=lambda kv: (kv[0][1] == "tile", kv[0][0])):
        rows.append({"backend": backend, "running_on": predictors[backend, mode].running_on, "mode": mode,
                     "images": counts[backend, mode], "passes": len(times), "wall_s": times,
                     "images_per_s": counts[backend, mode] / statistics.median(times),
                     "images_per_s_best": counts[backend, mode] / min(times)})
    return rows


def mask_quality(files: list[Path], models: Path, workdir: Path, threads: int,
                 batch_size: int) -> list[dict[str, Any]]:
    """mIoU at the images' original size, resize vs tile (onnxruntime, aided), against BUSI's masks."""
    names = link_images(files, workdir / "quality")
    truths = []
    for path in files:
        masks = sorted(path.parent.glob(f"{path.stem}_mask*.png"))
        truths.append(read_mask(masks) if masks else np.zeros(read_grey(path).shape, dtype=bool))
    lesion = np.array([t.any() for t in truths])
    quality = []
    for mode in ("resize", "tile"):
        predictor = open_predictor([models], provider="cpu", aided=True, tile=mode == "tile", threads=threads)
        out = workdir / f"quality-{mode}"
        wall, _ = timed_predict(workdir / "quality", out, predictor, mode == "tile", batch_size)
        scores = []
        for name, truth in zip(names, truths, strict=True):
            pred = np.asarray(Image.open(out / "masks" / f"{Path(name).stem}.png")) > 127
            scores.append(float(iou(pred, truth)[0]))
        scores_array = np.array(scores)
        quality.append({"mode": mode, "images": len(scores), "lesion_images": int(lesion.sum()),
                        "miou_seed": float(scores_array.mean()),
                        "miou_lesion": float(scores_array[lesion].mean()) if lesion.any() else None,
                        "wall_s": wall})
    return quality


def memory_profile(workdir: Path, count: int, threads: int, batch_size: int) -> dict[str, Any]:
    """RSS every 100 images while predicting ``count`` small synthetic images (onnxruntime, aided, resize).

    Memory flatness does not depend on the models' size, so small random ones (64 px, U-Net width 8) keep
    this quick.
    """
    small = workdir / "small"
    small.mkdir()
    export_onnx(*random_checkpoints(small, MEMORY_MODEL_SIZE, MEMORY_MODEL_SIZE, 8), small / "models")
    models = small / "models"
    folder = workdir / "many"
    rng = np.random.default_rng(0)
    for i in range(count):
        sub = folder / f"{i // 500:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (96, 128), dtype=np.uint8)).save(sub / f"{i:05d}.png")
    predictor = open_predictor([models], backend="onnx", provider="cpu", aided=True, threads=threads)
    samples: list[tuple[int, float]] = [(0, rss_mib())]

    def log(message: str) -> None:
        if message.endswith("images done"):
            samples.append((int(message.split()[0]), rss_mib()))

    start = time.perf_counter()
    settings = PredictSettings(aided=True, batch_size=batch_size)
    predict_folder(folder, workdir / "many-out", predictor, settings, log=log)
    wall = time.perf_counter() - start
    samples.append((count, rss_mib()))
    after_first = [m for n, m in samples if n >= 100]
    return {"images": count, "image_size": "128x96", "model_size": MEMORY_MODEL_SIZE, "wall_s": wall,
            "rss_mib": samples,
            "rss_growth_after_first_100_mib": (max(after_first) - min(after_first)) if after_first else None}


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [
        "# Two-stage predict on the CPU: onnxruntime vs PyTorch eager",
        "",
        f"Generated by `benchmarks/predict.py` on {s['date']} — {s['cpu']}, {s['threads']} threads for both "
        f"runtimes; torch {s['torch']}, onnxruntime {s['onnxruntime']}, dlmi {s['dlmi']}.",
        "",
        f"- Models: {s['weights']}. Classifier seed-cnn at {s['classifier_size']}×{s['classifier_size']} "
        f"({s['classifier_params']:,} parameters); U-Net base width {s['base_channels']} at "
        f"{s['size']}×{s['size']} ({s['segmenter_params']:,} parameters); fp32.",
        f"- Images: {s['images']} BUSI images (every k-th file over normal/benign/malignant, "
        f"{s['image_sizes']}), greyscale, resized to {s['size']}×{s['size']}; the same arrays for both "
        "runtimes.",
        f"- images/s = images ÷ wall time of one pass over all of them in batches; ms/image = that wall time "
        f"÷ images (at batch 1: the per-image latency). {s['rounds']} timed rounds after one warm-up pass; "
        "each round runs every runtime once, in turn, with a 0.2 s pause between. *median* = the median "
        "round, *best* = the fastest (least disturbed by other load on the machine).",
        "",
        "## Model only (two_stage.onnx vs the same TwoStage module in eager PyTorch)",
        "",
        "| runtime | batch | images/s (median) | ms/image (median) | images/s (best round) "
        "| vs PyTorch eager (median / best) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for batch in s["batch_sizes"]:
        rows = [r for r in result["model_only"] if r["batch_size"] == batch]
        base = next(r for r in rows if r["runtime"] == "PyTorch eager")
        for r in rows:
            lines.append(f"| {r['runtime']} | {batch} | {r['images_per_s']:.2f} | "
                         f"{r['latency_ms_per_image']:.1f} | {r['images_per_s_best']:.2f} | "
                         f"{r['images_per_s'] / base['images_per_s']:.2f}× / "
                         f"{r['images_per_s_best'] / base['images_per_s_best']:.2f}× |")
    lines += [
        "",
        "## End to end (`predict_folder`: read, preprocess, predict, resize back, write PNGs and tables)",
        "",
        f"Aided (two-stage), batch size {s['e2e_batch_size']}, the {s['images']} images above at their "
        f"original size. Resize: {s['rounds']} passes per backend, alternating, median (best). Tile: one "
        f"pass per backend over the first {s['tile_images']} images; overlapping {s['size']}×{s['size']} "
        "tiles (50% overlap, Hann blending) at the image's own resolution, the classifier on the whole image "
        "resized.",
        "",
        "| backend | mode | images | images/s (median) | images/s (best) | vs torch (median) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in result["end_to_end"]:
        torch_row = next(t for t in result["end_to_end"]
                         if t["backend"] == "torch" and t["mode"] == r["mode"])
        lines.append(f"| {r['backend']} ({r['running_on']}) | {r['mode']} | {r['images']} | "
                     f"{r['images_per_s']:.2f} | {r['images_per_s_best']:.2f} | "
                     f"{r['images_per_s'] / torch_row['images_per_s']:.2f}× |")
    lines += ["", "## Resize vs tile: mask quality", ""]
    if result["quality"]:
        q0 = result["quality"][0]
        lines += [f"onnxruntime, aided (two-stage), {q0['images']} images ({s['quality_images']}), "
                  f"{q0['lesion_images']} of them with a lesion; masks at the images' original size against "
                  f"BUSI's OR-merged masks. {IOU_DEFINITION}; {EMPTY_MASK_RULE}. mIoU (seed) = mean over all "
                  "images; lesion mIoU = mean over the images with a lesion.", "",
                  "| mode | mIoU (seed) | lesion mIoU | wall s |", "|---|---:|---:|---:|"]
        lines += [f"| {q['mode']} | {q['miou_seed']:.4f} | "
                  f"{q['miou_lesion']:.4f} | {q['wall_s']:.0f} |" for q in result["quality"]]
    else:
        lines.append("Not measured: the models have random weights (no trained checkpoints were given), so "
                     "only speed is compared. Run with `--classifier RUN --segmenter RUN` for mIoU.")
    m = result.get("memory")
    if m:
        samples = ", ".join(f"{n}: {r:.0f}" for n, r in m["rss_mib"])
        lines += ["", "## Memory over many images", "",
                  f"{m['images']} synthetic {m['image_size']} PNGs, onnxruntime, aided, resize, small random "
                  f"models ({m['model_size']} px, U-Net width 8; memory flatness does not depend on the "
                  f"models' size): RSS (MiB) "
                  f"after n images — {samples}. Growth after the first 100 images: "
                  f"{m['rss_growth_after_first_100_mib']:.1f} MiB "
                  f"({m['images'] / m['wall_s']:.1f} images/s)."]
    lines += ["", "## Notes", "", *[f"- {n}" for n in result["notes"]], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "busi")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=256, help="U-Net input side (random weights)")
    parser.add_argument("--classifier-size", type=int, default=256, help="classifier input side (random)")
    parser.add_argument("--base-channels", type=int, default=32, help="U-Net width (random weights)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--classifier", type=Path, help="trained classifier run folder or .pt")
    parser.add_argument("--segmenter", type=Path, help="trained segmenter run folder or .pt")
    parser.add_argument("--split", type=Path, help="split file: mIoU on its test side (trained models)")
    parser.add_argument("--tile-images", type=int, default=8, help="images for the end-to-end tile timing")
    parser.add_argument("--memory-images", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="predict-cpu", help="results file name (without .md / .json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="dlmi-bench-") as tmp:
        work = Path(tmp)
        if args.classifier and args.segmenter:
            cls_path, seg_path = args.classifier, args.segmenter
            weights = f"trained ({args.classifier}, {args.segmenter})"
        else:
            cls_path, seg_path = random_checkpoints(work, args.size, args.classifier_size, args.base_channels)
            weights = "random initialisation (speed only)"
        cls, seg = load_trained(cls_path), load_trained(seg_path)
        start = time.perf_counter()
        export_onnx(cls_path, seg_path, work / "models")
        export_s = time.perf_counter() - start
        print(f"exported in {export_s:.1f} s", file=sys.stderr)

        files = busi_images(args.data, args.images)
        sizes = [Image.open(p).size for p in files]
        inputs = np.stack([model_input(read_grey(p), seg.image_size) for p in files])
        pipeline = TwoStage(cls.model, seg.model, normal_index=cls.normal_index or 0,
                            classifier_size=cls.image_size, segmenter_size=seg.image_size,
                            threshold=seg.threshold, temperature=cls.temperature).eval()
        check = open_session(work / "models" / "two_stage.onnx", "cpu", args.threads)
        with torch.inference_mode():
            want = pipeline(torch.from_numpy(inputs[:4]))[:3]
        got = check.run(["class_probs", "mask_probs", "gated"], {"image": inputs[:4]})
        parity = float(max(np.abs(g.astype(np.float64) - w.numpy().astype(np.float64)).max()
                           for g, w in zip(got, want, strict=True)))

        print("model only ...", file=sys.stderr)
        model_rows = model_only(pipeline, work / "models" / "two_stage.onnx", inputs, batch_sizes,
                                args.threads, args.rounds)
        print("end to end ...", file=sys.stderr)
        e2e_batch = max(batch_sizes)
        e2e = end_to_end(files, files[:args.tile_images], work / "models", [cls_path, seg_path], work,
                         args.threads, e2e_batch, args.rounds)
        quality: list[dict[str, Any]] = []
        if "trained" in weights:
            print("quality ...", file=sys.stderr)
            if args.split:
                keys = json.loads(args.split.read_text())["test"]
                quality_files = [args.data / k for k in keys]
                quality_set = f"the test side of {args.split}"
            else:
                quality_files = files
                quality_set = "the images above; they may include the models' training images"
            quality = mask_quality(quality_files, work / "models", work, args.threads, e2e_batch)
        print("memory ...", file=sys.stderr)
        memory = memory_profile(work, args.memory_images, args.threads, e2e_batch) \
            if args.memory_images else None

    def params(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    widths = sorted({w for w, _ in sizes}), sorted({h for _, h in sizes})
    result = {
        "setup": {
            "date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
            "threads": args.threads, "torch": torch.__version__, "onnxruntime": ort.__version__,
            "dlmi": __version__, "weights": weights, "size": seg.image_size,
            "classifier_size": cls.image_size,
            "base_channels": (seg.meta.get("model_options") or {}).get("base_channels", 64),
            "classifier_params": params(cls.model), "segmenter_params": params(seg.model),
            "images": len(files), "image_sizes": f"{widths[0][0]}–{widths[0][-1]} px wide, "
                                                 f"{widths[1][0]}–{widths[1][-1]} px high",
            "batch_sizes": batch_sizes, "e2e_batch_size": e2e_batch, "rounds": args.rounds,
            "tile_images": min(args.tile_images, len(files)),
            "quality_images": quality_set if quality else None,
            "export_s": export_s,
            "parity_max_abs_diff": parity,
        },
        "model_only": model_rows,
        "end_to_end": e2e,
        "quality": quality,
        "memory": memory,
        "notes": [],
    }
    result["notes"].append(f"Parity on these images: max |onnxruntime − PyTorch| over all outputs = "
                           f"{parity:.2e}.")
    result["notes"].append(f"Export (3 graphs, torch.onnx dynamo exporter + parity checks) took "
                           f"{export_s:.0f} s.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
