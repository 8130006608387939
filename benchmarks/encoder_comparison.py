"""Compare the joint model on a pretrained ResNet-18 encoder with today's ``unet-mt``, on BUSI, out of fold,
at the same wall-clock training budget per model.

Protocol (each step is what the results file states):

1. One k-fold split (``--folds``, default 5) of BUSI's train+val images (dlmi's default leakage-free split,
   its train and val sides re-dealt into folds by ``dlmi.splits.split.with_folds``; the test side is not
   used), shared by both models.
2. Two models, everything else equal — dlmi's ``cpu`` best recipe for BUSI (``dlmi.experiments.best``:
   ``--image-size`` grey, AdamW, poly schedule with warm-up, EMA, ``ultrasound`` augmentation, Dice+BCE
   with deep supervision + cross-entropy):
   - ``unet-mt``: today's joint model (classic U-Net encoder, base 16, random start);
   - ``unet-mt-resnet18``: ``--model-option encoder=resnet18 weights=imagenet`` (decoder base 16;
     ``--weights PATH`` to give a state-dict file instead of torchvision's cached ImageNet file, ``--weights
    none`` for a random start: the like-for-like from-scratch comparison).
3. Same wall-clock budget per model (``--budget-minutes``, for all its folds together): a pilot trains one
   epoch of fold 0 and is timed (start-up and first-epoch caching included, so the estimate is on the
   high side); the model then gets ``epochs = max(1, floor(budget / (folds × pilot seconds)))`` per fold.
   The measured training time of each model is reported next to the budget.
4. Every development image is predicted by the fold model that did not train on it (its ``last.pt``, with
   flip TTA, as dlmi's ensembles and ``ensemble.json`` do) — out-of-fold predictions.
5. Metrics on those predictions, each with a 95 % percentile bootstrap interval over images (2000 resamples,
   ``dlmi.metrics.bootstrap``):
   - 3-class accuracy: the fraction of images whose arg-max class (normal / benign / malignant) is the true
     class;
   - lesion Dice: the mean per-image Dice ``2|P∩T| / (|P| + |T|)`` of the unaided mask ``P = σ(logit) > 0.5``
     over the images whose true mask ``T`` is not empty;
   - the paired difference (ResNet-18 minus ``unet-mt``) of each, per image over the same images.

Usage (from the repository root; trains for about ``2 × --budget-minutes``):

    .venv/bin/python benchmarks/encoder_comparison.py --data-dir ../shared/data/busi --budget-minutes 60
    .venv/bin/python benchmarks/encoder_comparison.py --dry-run     # synthetic data, a few seconds' budget

Results: ``benchmarks/results/encoder-comparison-cpu.md`` and ``.json`` (``--dry-run``: into its work folder,
unless ``--results`` is given).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlmi import __version__
from dlmi.atomic import write_json_atomic, write_text_atomic
from dlmi.errors import DlmiError
from dlmi.experiments.best import RECIPES
from dlmi.metrics.bootstrap import BOOTSTRAP_METHOD, scored_mean
from dlmi.metrics.segmentation import dice
from dlmi.models.pretrained import load_encoder_weights
from dlmi.training.config import TrainConfig
from dlmi.training.folds import MEMBER_CHECKPOINT, out_of_fold, train_folds

BASELINE = "unet-mt"
ENCODER = "unet-mt-resnet18"
ACCURACY = "accuracy_3class"
LESION_DICE = "lesion_dice"
DEFINITIONS = {
    ACCURACY: "fraction of development images whose arg-max class is the true class, out of fold",
    LESION_DICE: "mean per-image Dice 2|P∩T|/(|P|+|T|) of the unaided mask P = σ(logit) > 0.5 over images "
                 "with a non-empty true mask T, out of fold",
}
RESAMPLES = 2000


def base_config(args: argparse.Namespace, work: Path) -> TrainConfig:
    """The shared recipe (dlmi's cpu best recipe for BUSI) at ``--image-size``, one epoch for now."""
    settings = RECIPES["cpu"].busi_settings()
    settings.update(image_size=args.image_size, epochs=1, batch_size=args.batch_size)
    if args.dry_run:
        settings.update(base_channels=4, warmup_epochs=0, batch_size=8)
    dataset, data_dir = ("synthetic", None) if args.dry_run else ("busi", str(args.data_dir))
    return TrainConfig(dataset=dataset, data_dir=data_dir, out=str(work), device="cpu", seed=args.seed,
                       quiet=True, **settings)


def model_configs(base: TrainConfig, weights: str) -> dict[str, TrainConfig]:
    """The two models: the same recipe, the second on the ResNet-18 encoder from ``weights`` (``none``: a
    random start, as the first)."""
    options = {"encoder": "resnet18"} if weights == "none" else {"encoder": "resnet18", "weights": weights}
    encoder = dataclasses.replace(base, model_options=options)
    return {BASELINE: base, ENCODER: encoder}


def shared_split(config: TrainConfig, folds: int, path: Path) -> Path:
    """The k-fold split both models train on (dlmi's default split, train+val re-dealt into folds)."""
    from dlmi.splits import save_split
    from dlmi.splits.split import with_folds
    from dlmi.training.data.split_data import load_dataset_samples, make_default_split

    if not path.is_file():
        _, samples = load_dataset_samples(config)
        save_split(with_folds(make_default_split(config), samples, folds, seed=config.seed), path)
    return path


def pilot_seconds(config: TrainConfig, split: Path, work: Path) -> float:
    """Wall seconds of one epoch of fold 0 (start-up included), in a scratch run folder."""
    from dlmi.training.start import train

    out = work / "pilot"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    train(dataclasses.replace(config, out=str(out), split=str(split), fold=0, epochs=1, warmup_epochs=0))
    return time.perf_counter() - started


def oof_scores(folder: Path, folds: int) -> dict[str, Any]:
    """Per-image out-of-fold correctness and lesion Dice, keyed by image."""
    members = [f"fold-{k}" for k in range(folds)]
    oof = out_of_fold(folder, members, flip_tta=True)
    correct = (oof["class_probs"].argmax(1) == oof["labels"]).astype(np.float64)
    truth = oof["true_masks"].astype(bool)
    per_image_dice = dice(oof["mask_probs"] > 0.5, truth)
    lesion = truth.reshape(len(truth), -1).any(1)
    return {"keys": list(oof["keys"]), "correct": correct, "dice": per_image_dice, "lesion": lesion}


def summarise(scores: dict[str, Any]) -> dict[str, Any]:
    return {ACCURACY: scored_mean(scores["correct"], DEFINITIONS[ACCURACY], resamples=RESAMPLES),
            LESION_DICE: scored_mean(scores["dice"][scores["lesion"]], DEFINITIONS[LESION_DICE],
                                     resamples=RESAMPLES)}


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b − a`` per image over the images both scored (matched by key)."""
    index = {key: i for i, key in enumerate(a["keys"])}
    common = [(index[key], j) for j, key in enumerate(b["keys"]) if key in index]
    ia, ib = (np.array(x, dtype=int) for x in zip(*common, strict=True))
    lesion = a["lesion"][ia]
    return {
        ACCURACY: scored_mean(b["correct"][ib] - a["correct"][ia],
                              "per-image difference of correctness (ResNet-18 − unet-mt)",
                              resamples=RESAMPLES),
        LESION_DICE: scored_mean(b["dice"][ib][lesion] - a["dice"][ia][lesion],
                                 "per-image difference of lesion Dice (ResNet-18 − unet-mt)",
                                 resamples=RESAMPLES),
    }


def _fmt(entry: dict[str, Any]) -> str:
    if entry["value"] is None:
        return "–"
    return f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}] (n {entry['n']})"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# ResNet-18 encoder vs today's `unet-mt` on BUSI, out of fold, same wall-clock budget",
        "",
        f"Written by `{result['command']}` on {result['created']} (dlmi {result['dlmi_version']}, "
        f"{result['machine']['cpus']} CPUs, torch threads {result['machine']['torch_threads']}).",
        "",
        f"Protocol: {result['folds']}-fold split of the development images (test side unused), "
        f"{result['image_size']}² grey, dlmi's cpu BUSI recipe; budget {result['budget_minutes']:g} min of "
        "training per model (all folds), epochs per fold from a timed 1-epoch pilot; out-of-fold predictions "
        f"with flip TTA from each fold's `{MEMBER_CHECKPOINT}`. Intervals: 95 % {BOOTSTRAP_METHOD} "
        f"({RESAMPLES} resamples).",
        "",
        "| model | weights | epochs/fold | pilot s/epoch | trained min | 3-class accuracy | lesion Dice |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, model in result["models"].items():
        weights = model.get("pretrained_weights") or {}
        source = f"`{weights['source']}` `{weights['sha256'][:12]}…`" if weights else "random"
        lines.append(f"| `{name}` | {source} | {model['epochs']} | {model['pilot_seconds']:.1f} | "
                     f"{model['train_seconds'] / 60:.1f} | {_fmt(model['metrics'][ACCURACY])} | "
                     f"{_fmt(model['metrics'][LESION_DICE])} |")
    diff = result["difference"]
    lines += ["", f"Paired difference (ResNet-18 − unet-mt, same images): 3-class accuracy "
              f"{_fmt(diff[ACCURACY])}; lesion Dice {_fmt(diff[LESION_DICE])}.", "", "Definitions:", ""]
    lines += [f"- {name}: {text}." for name, text in DEFINITIONS.items()]
    if result["dry_run"]:
        lines += ["", "**Dry run** on synthetic data with a seconds-long budget: checks the script, not the "
                      "models."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/busi"))
    parser.add_argument("--budget-minutes", type=float, default=60.0,
                        help="wall-clock training budget per model, all folds together")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--weights", default="imagenet",
                        help="the ResNet-18 weights: imagenet (torchvision's cache), a state-dict file, or "
                             "none (from scratch, like unet-mt: the issue's CPU comparison)")
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None,
                        help="run folders (default runs/encoder-comparison)")
    parser.add_argument("--results", type=Path, default=None,
                        help="results folder (default benchmarks/results; --dry-run: the work folder)")
    parser.add_argument("--dry-run", action="store_true",
                        help="synthetic data, 2 folds, 32² images, a seconds-long budget, random weights")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dry_run:
        args.folds, args.image_size, args.budget_minutes = 2, 32, min(args.budget_minutes, 0.1)
        args.work = args.work or Path(tempfile.mkdtemp(prefix="encoder-comparison-"))
    work = args.work or Path("runs/encoder-comparison")
    results = args.results or (work if args.dry_run else Path("benchmarks/results"))
    work.mkdir(parents=True, exist_ok=True)
    weights = args.weights
    if args.dry_run and weights == "imagenet":  # no download in a dry run: torchvision's keys, random values
        import torchvision

        weights = str(work / "resnet18-random.pth")
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    if not args.dry_run and not args.data_dir.is_dir():
        raise DlmiError(f"{args.data_dir}: no such BUSI folder (--data-dir)")
    if weights != "none":
        load_encoder_weights("resnet18", weights)  # checked (or fetched) before hours of training
    base = base_config(args, work)
    split = shared_split(base, args.folds, work / "split.json")
    budget = args.budget_minutes * 60
    models: dict[str, Any] = {}
    scores: dict[str, Any] = {}
    for name, config in model_configs(base, weights).items():
        pilot = pilot_seconds(config, split, work)
        epochs = max(1, math.floor(budget / (args.folds * pilot)))
        print(f"{name}: pilot {pilot:.1f} s/epoch → {epochs} epochs per fold")
        folder = work / name
        started = time.perf_counter()
        warmup = min(config.warmup_epochs, epochs - 1)  # the recipe's warm-up, shorter than the run
        train_folds(dataclasses.replace(config, out=str(folder), split=str(split), epochs=epochs,
                                        warmup_epochs=warmup), args.folds)
        seconds = time.perf_counter() - started
        run_config = json.loads((folder / "fold-0" / "config.json").read_text(encoding="utf-8"))
        scores[name] = oof_scores(folder, args.folds)
        models[name] = {"epochs": epochs, "pilot_seconds": pilot, "train_seconds": seconds,
                        "model_options": run_config["model_options"],
                        "base_channels": run_config["base_channels"],
                        "pretrained_weights": run_config.get("pretrained_weights"),
                        "metrics": summarise(scores[name])}
    given = sys.argv[1:] if argv is None else argv
    result = {
        "command": " ".join(["benchmarks/encoder_comparison.py", *given]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "dlmi_version": __version__,
        "dry_run": args.dry_run, "folds": args.folds, "image_size": args.image_size,
        "budget_minutes": args.budget_minutes, "split": str(split), "definitions": DEFINITIONS,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__},
        "models": models, "difference": paired(scores[BASELINE], scores[ENCODER]),
    }
    results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results / "encoder-comparison-cpu.json", result)
    path = write_text_atomic(results / "encoder-comparison-cpu.md", markdown(result))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    try:
        main()
    except DlmiError as exc:
        raise SystemExit(f"error: {exc}") from None
