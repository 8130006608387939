"""Markdown tables of an evaluation result (the dict :func:`dlmi.evaluation.evaluate_run` returns)."""

from __future__ import annotations

from typing import Any


def fmt(entry: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    """``0.612 [0.551, 0.668]`` for a scored number; ``n/a`` where it is undefined."""
    if not entry or entry.get("value") is None:
        return "n/a"
    spec = f"{'+' if signed else ''}.{digits}f"
    text = f"{entry['value']:{spec}}"
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f" [{entry['low']:{spec}}, {entry['high']:{spec}}]"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def context_line(result: dict[str, Any]) -> str:
    """Which split side, image size and dataset produced the numbers."""
    ctx = result["context"]
    parts = [f"dataset **{ctx['dataset']}**", f"split side **{ctx['side']}** ({ctx['n_images']} images)",
             f"image size **{ctx['image_size']} px**", f"split file `{ctx['split_file']}`",
             f"checkpoint `{ctx['checkpoint']}`"]
    if ctx.get("aid"):
        parts.append(f"aid `{ctx['aid']['checkpoint']}` ({ctx['aid']['image_size']} px)")
    return "; ".join(parts) + "."


def intervals_line(intervals: dict[str, Any]) -> str:
    return (f"Values: estimate [{intervals['confidence']:.0%} interval], {intervals['method']} "
            f"({intervals['resamples']} resamples, seed {intervals['seed']}).")


def classification_lines(summary: dict[str, Any], heading: str) -> list[str]:
    lines = [f"### {heading}", ""]
    rows = [["accuracy", fmt(summary["accuracy"]), str(summary["accuracy"]["n"])]]
    if "detect_accuracy" in summary:
        rows.append(["detect accuracy (tumour vs normal, from the 3-class prediction)",
                     fmt(summary["detect_accuracy"]), str(summary["detect_accuracy"]["n"])])
    for name, scores in summary["per_class"].items():
        rows.append([f"precision {name}", fmt(scores["precision"]), str(scores["precision"]["n"])])
        rows.append([f"recall {name}", fmt(scores["recall"]), str(scores["recall"]["n"])])
    lines += _table(["metric", "value [95 % CI]", "images"], rows)
    classes = summary["confusion_matrix"]["classes"]
    lines += ["", "Confusion matrix (rows: true class, columns: predicted class):", ""]
    lines += _table(["true \\ predicted", *classes],
                    [[name, *map(str, row)] for name, row in
                     zip(classes, summary["confusion_matrix"]["matrix"], strict=True)])
    return lines + [""]


SEGMENTATION_ROWS = (
    ("miou_seed", "seed mIoU (all images; empty truth + empty prediction = 1)"),
    ("lesion_dice", "lesion Dice (lesion images only)"),
    ("lesion_iou", "lesion IoU (lesion images only)"),
    ("mdice_seed", "mean Dice (all images; same empty-mask rule)"),
    ("empty_truth_false_positive_rate", "false-positive rate on empty-truth images"),
)


def segmentation_lines(variants: dict[str, dict[str, Any]], heading: str) -> list[str]:
    """One column per variant (unaided, aided), one row per number."""
    names = list(variants)
    first = variants[names[0]]
    lesion = ", ".join(first.get("lesion_classes") or []) or "non-empty truth"
    rows = [[label.replace("lesion images only", f"lesion images only: {lesion}"),
             *(fmt(variants[v][key]) for v in names)] for key, label in SEGMENTATION_ROWS]
    for cls in first.get("per_class", {}):
        for metric in ("dice", "iou"):
            n = first["per_class"][cls]["n"]
            rows.append([f"{metric} {cls} (n={n})",
                         *(fmt(variants[v]["per_class"][cls][metric]) for v in names)])
    lines = [f"### {heading}", ""]
    lines += _table(["metric", *names], rows)
    rule, lesion_rule = first["empty_mask_rule"], first["lesion_rule"]
    lines += ["", f"{rule[0].upper()}{rule[1:]}.", f"{lesion_rule[0].upper()}{lesion_rule[1:]}.", ""]
    return lines


def calibration_lines(calibration: dict[str, Any], side: str) -> list[str]:
    """ECE, Brier score and NLL before and after temperature scaling, with their definitions."""
    before, after = calibration["before"], calibration["after"]
    fitted = calibration.get("calibrated_on") or "nothing (no temperature was fitted: T = 1)"
    lines = [f"### Calibration of the {calibration['model']} ({side} side)", "",
             f"Temperature T = {calibration['temperature']:.4g}, fitted on {fitted}.", ""]
    rows = [[name, fmt(before[key]), fmt(after[key])] for key, name in (("ece", "ECE"), ("brier", "Brier"))]
    rows.append(["NLL", fmt({"value": before["nll"]["value"]}), fmt({"value": after["nll"]["value"]})])
    lines += _table(["metric", "before scaling", "after scaling"], rows)
    lines += ["", f"ECE: {before['ece']['definition']}.", f"Brier: {before['brier']['definition']}.",
              f"NLL: {before['nll']['definition']}.", ""]
    return lines


def markdown_report(result: dict[str, Any]) -> str:
    """The evaluation of one side as Markdown: a context line, then one table per task."""
    ctx = result["context"]
    lines = [f"# Evaluation: {ctx['run']} — {ctx['dataset']}, {ctx['side']} side, {ctx['image_size']} px", "",
             context_line(result), ""]
    intervals = None
    if "classification" in result:
        summary = result["classification"]
        intervals = summary["intervals"]
        lines += classification_lines(summary, f"Classification ({ctx['side']} side, {ctx['image_size']} px)")
    if "segmentation" in result:
        seg = result["segmentation"]
        intervals = next(iter(seg["variants"].values()))["intervals"]
        lines += segmentation_lines(seg["variants"],
                                    f"Segmentation ({ctx['side']} side, {ctx['image_size']} px)")
        effect = seg.get("aid_effect")
        if effect:
            lines += ["Aid effect (aided − unaided, paired): "
                      f"seed mIoU {fmt(effect['miou_seed'], signed=True)}, "
                      f"lesion Dice {fmt(effect['lesion_dice'], signed=True)}.", ""]
        post = seg.get("postprocess")
        if post:
            lines += [f"Post-processing: {post['note']}", ""]
    if "aid_classification" in result:
        aid_ctx = ctx["aid"]
        lines += classification_lines(
            result["aid_classification"],
            f"Aid classifier ({ctx['side']} side, {aid_ctx['image_size']} px)")
    if "calibration" in result:
        lines += calibration_lines(result["calibration"], ctx["side"])
    if intervals:
        lines += [intervals_line(intervals), ""]
    figures = result.get("figures") or {}
    if figures:
        lines += ["Figures: " + ", ".join(f"{k} `{v}`" for k, v in figures.items()), ""]
    return "\n".join(lines).rstrip() + "\n"
