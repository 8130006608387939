"""Calibration and uncertainty of a trained fold ensemble, out of fold (issue 19 §3).

Given a fold-ensemble folder (``dlmi train joint|classifier --folds K``, e.g. ``runs/best-cpu/busi-best``):

1. every development image's class logits from the member that did not train on it, with flip TTA — the
   out-of-fold machinery ``train_folds`` uses (:func:`dlmi.training.folds.out_of_fold`);
2. the temperature fitted on all of them (what ``train_folds`` records), and the ECE and Brier score before
   and after, with 95 % bootstrap intervals (:mod:`dlmi.metrics.calibration`). Fitting and scoring on the
   same logits is optimistic, so also a 2-fold **cross-fit**: the images split in two halves at random
   (seeded), T fitted on one half scores the other, and the other way round; the pooled cross-fitted
   probabilities are scored;
3. whether high uncertainty finds the errors: out of fold, each image's uncertainty is the held-out
   member's (a single network's definition, :mod:`dlmi.runtime.uncertainty`: ``|P_plain(normal) −
   P_mirrored(normal)|``, temperature-scaled) — the fraction of wrong 3-class predictions (arg-max ≠ truth)
   among the top decile of uncertainty against the fraction overall.

Usage (from the repository root):

    PYTHONPATH=src .venv/bin/python benchmarks/calibration_busi.py runs/best-cpu/busi-best --name busi-best

Results: ``benchmarks/results/calibration-<name>.md`` and ``.json`` (``--results DIR``), written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"
DECILE = 0.1
CROSS_FIT_SEED = 0


def member_uncertainty(folder: Path, members: list[str], temperature: float,
                       device: str) -> dict[str, float]:
    """Sample key → the held-out member's plain-vs-mirrored uncertainty of P(normal) (temperature-scaled)."""
    import torch
    from torch.utils.data import DataLoader

    from dlmi.datasets.loader import EvalImages
    from dlmi.runtime.graphs import JointOutput
    from dlmi.runtime.trained import load_trained
    from dlmi.runtime.uncertainty import class_votes, probability_spread
    from dlmi.splits import load_split, split_samples
    from dlmi.training.config import TrainConfig
    from dlmi.training.data.split_data import load_dataset_samples
    from dlmi.training.folds import MEMBER_CHECKPOINT

    split = load_split(folder / "split.json")
    found: dict[str, float] = {}
    for fold, name in enumerate(members):
        member = load_trained(folder / name, checkpoint_name=MEMBER_CHECKPOINT, map_location=device)
        source, samples = load_dataset_samples(TrainConfig.load(folder / name / "config.json"))
        val = list(split_samples(split, samples, "val", fold=fold))
        head = JointOutput(member.model, JointOutput.CLASSES) if member.task == "joint" else member.model
        loader = DataLoader(EvalImages(source, val, member.image_size), batch_size=16)
        spreads = []
        with torch.inference_mode():
            for batch in loader:
                _, votes, ensemble = class_votes(head, batch["image"].to(device))
                spreads.append(probability_spread(votes, member.normal_index, temperature, ensemble).cpu())
        values = torch.cat(spreads).numpy() if spreads else np.zeros(0)
        found.update({s.key: float(v) for s, v in zip(val, values, strict=True)})
    return found


def cross_fit(logits: np.ndarray, labels: np.ndarray, resamples: int) -> dict[str, Any]:
    """T fitted on one random half scores the other half, and the other way round; the pooled probabilities
    scored together."""
    from dlmi.metrics.calibration import calibration_scores, fit_temperature, scaled_probabilities

    order = np.random.default_rng(CROSS_FIT_SEED).permutation(len(labels))
    halves = [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])]
    probs = np.zeros(logits.shape, dtype=np.float64)
    temperatures = []
    for fit_on, score_on in ((halves[0], halves[1]), (halves[1], halves[0])):
        temperature = fit_temperature(logits[fit_on], labels[fit_on])
        temperatures.append(temperature)
        probs[score_on] = scaled_probabilities(logits[score_on], temperature)
    scores = calibration_scores(probs, labels, resamples=resamples)
    return {"temperatures": temperatures, "halves": [len(h) for h in halves], "seed": CROSS_FIT_SEED,
            "ece": scores["ece"], "brier": scores["brier"]}


def error_finding(probs: np.ndarray, labels: np.ndarray, uncertainty: np.ndarray) -> dict[str, Any]:
    """The fraction of wrong arg-max predictions among the top decile of uncertainty and overall."""
    from dlmi.metrics.bootstrap import bootstrap_mean

    wrong = (probs.argmax(1) != labels).astype(np.float64)
    top = max(1, math.ceil(DECILE * len(labels)))
    chosen = np.argsort(-uncertainty, kind="stable")[:top]

    def scored(values: np.ndarray) -> dict[str, Any]:
        interval = bootstrap_mean(values)
        return {"value": float(values.mean()), "low": interval.low if interval else None,
                "high": interval.high if interval else None, "n": int(values.size)}

    overall, in_top = scored(wrong), scored(wrong[chosen])
    return {"definition": "fraction of wrong 3-class predictions (arg-max ≠ truth) among the "
                          f"{top} images of highest uncertainty (top decile) and among all images",
            "uncertainty": "the held-out member's |P_plain(normal) − P_mirrored(normal)| "
                           "(temperature-scaled)",
            "top_decile": in_top, "overall": overall,
            "lift": in_top["value"] / overall["value"] if overall["value"] else None,
            "uncertainty_threshold": float(uncertainty[chosen].min()) if len(chosen) else None}


def measure(folder: Path, *, device: str = "cpu", resamples: int = 2000) -> dict[str, Any]:
    from dlmi.errors import DlmiError
    from dlmi.metrics.calibration import calibration_report, fit_temperature, scaled_probabilities
    from dlmi.runtime.ensemble import is_ensemble, read_manifest
    from dlmi.training.folds import out_of_fold

    if not is_ensemble(folder):
        raise DlmiError(f"{folder}: not a fold-ensemble folder (no ensemble.json)")
    manifest = read_manifest(folder)
    members, flip_tta = [str(m) for m in manifest["members"]], bool(manifest.get("flip_tta", True))
    started = time.perf_counter()
    oof = out_of_fold(folder, members, flip_tta=flip_tta, device=device)
    logits, labels = oof["class_logits"].astype(np.float64), oof["labels"].astype(np.int64)
    temperature = fit_temperature(logits, labels)
    report = calibration_report(logits, labels, temperature, resamples=resamples)
    for part in ("before", "after"):
        report[part].pop("reliability")
    spread = member_uncertainty(folder, members, temperature, device)
    uncertainty = np.array([spread[key] for key in oof["keys"]])
    return {
        "ensemble": str(folder), "members": len(members), "flip_tta": flip_tta, "images": int(len(labels)),
        "recorded_temperature": manifest.get("temperature"),
        "out_of_fold": report,
        "cross_fit": cross_fit(logits, labels, resamples),
        "error_finding": error_finding(scaled_probabilities(logits, temperature), labels, uncertainty),
        "accuracy": float((logits.argmax(1) == labels).mean()),
        "seconds": round(time.perf_counter() - started, 1),
        "device": device, "resamples": resamples,
    }


def _fmt(entry: dict[str, Any]) -> str:
    if entry.get("value") is None:
        return "n/a"
    text = f"{entry['value']:.4f}"
    if entry.get("low") is not None:
        text += f" [{entry['low']:.4f}, {entry['high']:.4f}]"
    return text


def markdown(result: dict[str, Any], name: str) -> str:
    oof, cross, errors = result["out_of_fold"], result["cross_fit"], result["error_finding"]
    recorded = result["recorded_temperature"]
    lines = [
        f"# Calibration and uncertainty: {name}", "",
        f"Fold ensemble `{result['ensemble']}` ({result['members']} members, flip TTA "
        f"{'on' if result['flip_tta'] else 'off'}); {result['images']} development images, each predicted by "
        f"the member that did not train on it (out of fold); out-of-fold accuracy {result['accuracy']:.3f}. "
        f"{result['seconds']:.0f} s on {result['device']}. Values: estimate [95 % percentile bootstrap "
        f"interval over images, {result['resamples']} resamples].", "",
        f"Temperature fitted on all out-of-fold logits: **T = {oof['temperature']:.4f}**"
        + (f" (ensemble.json records {recorded:.4f})." if recorded is not None else
           " (ensemble.json records none: trained before dlmi fitted temperatures)."), "",
        "| | ECE | Brier |", "|---|---|---|",
        f"| before scaling (T = 1) | {_fmt(oof['before']['ece'])} | {_fmt(oof['before']['brier'])} |",
        f"| after, fitted and scored on the same images (optimistic) | {_fmt(oof['after']['ece'])} | "
        f"{_fmt(oof['after']['brier'])} |",
        f"| after, 2-fold cross-fit (T = {cross['temperatures'][0]:.3f} / {cross['temperatures'][1]:.3f}) | "
        f"{_fmt(cross['ece'])} | {_fmt(cross['brier'])} |", "",
        f"NLL {oof['before']['nll']['value']:.4f} before, {oof['after']['nll']['value']:.4f} after.", "",
        f"- ECE: {oof['before']['ece']['definition']}.",
        f"- Brier: {oof['before']['brier']['definition']}.",
        f"- Cross-fit: the images split in two random halves (seed {cross['seed']}; {cross['halves'][0]} and "
        f"{cross['halves'][1]} images); T fitted on one half scales the other half, and the other way round; "
        "the pooled probabilities are scored.", "",
        "## Does high uncertainty find the errors?", "",
        f"Uncertainty: {errors['uncertainty']}. {errors['definition']}.", "",
        "| images | wrong 3-class predictions |", "|---|---|",
        f"| top decile of uncertainty ({errors['top_decile']['n']}; uncertainty ≥ "
        f"{errors['uncertainty_threshold']:.4f}) | {_fmt(errors['top_decile'])} |",
        f"| all ({errors['overall']['n']}) | {_fmt(errors['overall'])} |", "",
        (f"The top decile is wrong {errors['lift']:.2f} times as often as all images."
         if errors["lift"] is not None else "No image is wrong, so there is no error to find."), "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from dlmi.atomic import write_json_atomic, write_text_atomic
    from dlmi.errors import DlmiError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a fold-ensemble folder (with ensemble.json)")
    parser.add_argument("--name", default=None, help="results name (default: the folder's name)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    name = args.name or args.folder.name
    try:
        result = measure(args.folder, device=args.device, resamples=args.resamples)
    except DlmiError as exc:
        print(f"calibration_busi: error: {exc}", file=sys.stderr)
        return 2
    result["name"] = name
    json_path = write_json_atomic(args.results / f"calibration-{name}.json", result)
    md_path = write_text_atomic(args.results / f"calibration-{name}.md", markdown(result, name))
    print(json.dumps({"json": str(json_path), "markdown": str(md_path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
