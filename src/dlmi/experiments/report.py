"""The reproduction's results: collected from the run folders into ``reproduce-<profile>.json`` and ``.md``.

Both files are rewritten atomically after every experiment, so a crash leaves the last complete state.
Every number names its split side, image size and profile; intervals are the evaluation's 95 % bootstrap
intervals over images (``docs/metrics.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dlmi.atomic import write_json_atomic, write_text_atomic
from dlmi.experiments.plan import Experiment
from dlmi.experiments.reference_numbers import (
    REFERENCE_CLASSIFICATION,
    REFERENCE_SEGMENTATION,
    REFERENCE_SOURCE,
)

SIDES = ("train", "val", "test")
SEG_KEYS = ("miou_seed", "mdice_seed", "lesion_dice", "lesion_iou", "empty_truth_false_positive_rate")
CLS_KEYS = ("accuracy", "detect_accuracy")

@dataclass(frozen=True)
class ReproductionState:
    """What the report needs to know about a reproduction, as plain data (the runner fills it in).

    ``machine`` carries ``load_before`` / ``load_after``: the 1-minute load average when the invocation
    started and when the report was written (``None`` where ``os.getloadavg`` is missing).
    """

    profile: dict[str, Any]
    experiments: list[Experiment]
    run_dirs: dict[str, Path]
    status: dict[str, str]
    data_root: Path
    out: Path
    results: Path
    started: str
    completed: str | None
    machine: dict[str, Any]
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


DEFINITIONS = {
    "seed mIoU": "mean over ALL images of the side (normal ones included) of per-image IoU = |P∩T|/|P∪T|; "
                 "seed empty-mask rule: an image whose true and predicted masks are both empty scores 1, an "
                 "empty true mask with any predicted pixel scores 0 — the metric of the seed's tables",
    "lesion Dice": "mean over lesion images only (BUSI benign + malignant) of per-image Dice = "
                   "2|P∩T|/(|P|+|T|) — the number papers usually report",
    "accuracy": "fraction of images whose arg-max predicted class is the true class",
    "detect accuracy": "tumour vs normal read from the 3-class prediction: correct when truth and prediction "
                       "are both normal or both not normal",
    "aided": "the U-Net's mask replaced by an empty mask wherever the classifier's arg-max class is normal "
             "(dlmi.runtime.gating); 'aided training' applies the same gate during training (gated images "
             "give no gradient)",
    "95 % interval": "percentile bootstrap over images (resamples per the profile), from dlmi evaluate",
    "masks scored at": "the U-Net's input size (true masks resized by nearest neighbour)",
}


def _number(entry: Any) -> dict[str, Any] | None:
    if not isinstance(entry, dict) or "value" not in entry:
        return None
    return {k: entry.get(k) for k in ("value", "low", "high", "n")}


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file holding an object; ``None`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _scores(run_dir: Path, task: str) -> dict[str, Any]:
    """The headline numbers of each evaluated side of a run folder."""
    out: dict[str, Any] = {}
    for side in SIDES:
        result = read_json_object(run_dir / f"eval-{side}.json")
        if result is None:
            continue
        entry: dict[str, Any] = {"n_images": result.get("context", {}).get("n_images"),
                                 "image_size": result.get("context", {}).get("image_size")}
        if task == "classification":
            summary = result.get("classification", {})
            entry.update({k: _number(summary.get(k)) for k in CLS_KEYS if k in summary})
        else:
            seg = result.get("segmentation", {})
            entry["variants"] = {name: {k: _number(v.get(k)) for k in SEG_KEYS}
                                 for name, v in seg.get("variants", {}).items()}
            if "aid_effect" in seg:
                entry["aid_effect"] = {k: _number(v) for k, v in seg["aid_effect"].items()}
            entry["postprocess"] = seg.get("postprocess", {}).get("note")
            aid = result.get("aid_classification")
            if aid:
                entry["aid_classification"] = {k: _number(aid.get(k)) for k in CLS_KEYS if k in aid}
        out[side] = entry
    return out


def _timing(run_dir: Path) -> dict[str, Any]:
    timing = read_json_object(run_dir / "reproduce-timing.json") or {}
    from dlmi.training.folder.run_folder import RunFolder

    rows = RunFolder(run_dir).read_metrics()
    best = [r["epoch"] for r in rows if r.get("best")]
    runtime = read_json_object(run_dir / "runtime.json") or {}
    return {
        "precision": runtime.get("precision"),
        "channels_last": runtime.get("channels_last"),
        "train_wall_s": timing.get("train_wall_s"),
        "eval_wall_s": timing.get("eval_wall_s"),
        "epoch_seconds_sum": round(sum(float(r.get("seconds", 0.0)) for r in rows), 1),
        "epochs_trained": rows[-1]["epoch"] if rows else 0,
        "best_epoch": best[-1] if best else None,
    }


def collect(repro: ReproductionState, complete: bool) -> dict[str, Any]:
    """The results document (JSON-able) from the run folders as they are now."""
    experiments = []
    for experiment in repro.experiments:
        run_dir = repro.run_dirs[experiment.name]
        entry = {**experiment.describe(), "status": repro.status[experiment.name], "run_dir": str(run_dir),
                 "timing": _timing(run_dir)}
        if experiment.name in repro.errors:
            entry["error"] = repro.errors[experiment.name]
        if repro.status[experiment.name].startswith("done"):
            entry["scores"] = _scores(run_dir, experiment.task)
        experiments.append(entry)
    walls = [(e["timing"]["train_wall_s"] or 0) + (e["timing"]["eval_wall_s"] or 0) for e in experiments]
    split_s = sum(s.get("seconds") or 0 for s in repro.splits.values())
    return {
        "kind": "dlmi reproduce",
        "complete": complete and all(s.startswith("done") for s in repro.status.values()),
        "profile": repro.profile,
        "data_root": str(repro.data_root),
        "out": str(repro.out),
        "started": repro.started,
        "completed": repro.completed,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": repro.machine,
        "splits": repro.splits,
        "definitions": DEFINITIONS,
        "seed": {  # the reference report's numbers (the key is kept: reproduce-*.json files hold it)
            "source": REFERENCE_SOURCE,
            "classification": [{"dataset": d, "metric": m, **v}
                               for (d, m), v in REFERENCE_CLASSIFICATION.items()],
            "segmentation_miou": REFERENCE_SEGMENTATION,
        },
        "total_wall_s": round(sum(walls) + split_s, 1),
        "skipped_this_invocation": list(repro.skipped),
        "experiments": experiments,
    }


# --- Markdown --------------------------------------------------------------------------------------------
def _fmt(number: dict[str, Any] | None, ci: bool = True) -> str:
    if not number or number.get("value") is None:
        return "—"
    text = f"{number['value']:.3f}"
    if ci and number.get("low") is not None:
        text += f" [{number['low']:.3f}, {number['high']:.3f}]"
    return text


def _reference(value: float | None) -> str:
    """A number of the reference report, or a dash where it gives none."""
    return "—" if value is None else str(value)


def _minutes(seconds: float | None) -> str:
    if not seconds:
        return "—"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _elapsed(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in doc["experiments"]}


def _side(exp: dict[str, Any] | None, side: str) -> dict[str, Any]:
    return ((exp or {}).get("scores") or {}).get(side) or {}


def _variant(exp: dict[str, Any] | None, side: str, variant: str, key: str) -> dict[str, Any] | None:
    return (_side(exp, side).get("variants") or {}).get(variant, {}).get(key)


def _classification_table(doc: dict[str, Any]) -> list[str]:
    exps = _by_name(doc)
    lines = [
        "| experiment | metric | seed train | seed test | ours train | ours test [95 % CI] | test n | size "
        "| epochs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("brain-mri-cls", "brain-mri", "accuracy", "accuracy (2 classes)"),
            ("busi-cls", "busi", "accuracy", "accuracy (3 classes)"),
            ("busi-cls", "busi", "detect_accuracy", "detect accuracy"),
            ("busi-cls-improved", None, "accuracy", "accuracy (3 classes)"),
            ("busi-cls-improved", None, "detect_accuracy", "detect accuracy")]
    for name, reference_key, key, label in rows:
        exp = exps.get(name)
        if exp is None:
            continue
        reference = REFERENCE_CLASSIFICATION.get((reference_key, key), {}) if reference_key else {}
        test = _side(exp, "test")
        lines.append(
            f"| {name}{'' if exp['status'].startswith('done') else ' (' + exp['status'] + ')'} | {label} | "
            f"{_reference(reference.get('train'))} | {_reference(reference.get('test'))} | "
            f"{_fmt(_side(exp, 'train').get(key))} | "
            f"{_fmt(test.get(key))} | {test.get('n_images', '—')} | {exp['image_size']}² | {exp['epochs']} |")
    return lines


def _segmentation_table(doc: dict[str, Any], improved: bool) -> list[str]:
    lines = [
        "| loss | training | evaluation | seed train mIoU | seed test mIoU | ours train mIoU | "
        "ours test mIoU [95 % CI] | ours train lesion Dice | ours test lesion Dice [95 % CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for exp in doc["experiments"]:
        if exp["task"] != "segmentation" or (exp["variant"] == "improved") != improved:
            continue
        loss = exp["loss"]
        training = "aided" if exp["trained_aided"] else "unaided"
        if exp["variant"] == "improved":
            training = "unaided, augment, cosine lr"
        status = "" if exp["status"].startswith("done") else f" ({exp['status']})"
        for variant in ("unaided", "aided"):
            # The reference report's row sits beside ours where the evaluation matches the training.
            reference = REFERENCE_SEGMENTATION.get(loss, {}).get(training, {}) if training == variant else {}
            aid = f" ({exp['eval_aid']})" if variant.startswith("aided") else ""
            lines.append(
                f"| {loss}{status} | {training} | {variant}{aid} | "
                f"{_reference(reference.get('train'))} | {_reference(reference.get('test'))} | "
                f"{_fmt(_variant(exp, 'train', variant, 'miou_seed'), ci=False)} | "
                f"{_fmt(_variant(exp, 'test', variant, 'miou_seed'))} | "
                f"{_fmt(_variant(exp, 'train', variant, 'lesion_dice'), ci=False)} | "
                f"{_fmt(_variant(exp, 'test', variant, 'lesion_dice'))} |")
    return lines


def _profile_lines(doc: dict[str, Any]) -> list[str]:
    p, m = doc["profile"], doc["machine"]
    return [
        f"- **profile `{p['name']}`** — {p['description']}",
        f"- classifier (seed CNN): {p['classifier_image_size']}² greyscale, "
        f"batch {p['classifier_batch_size']}, {p['classifier_epochs']} epochs "
        f"(improved: {p['improved_classifier_epochs'] or p['classifier_epochs']})",
        f"- U-Net: {p['segmenter_image_size']}² greyscale, base channels {p['segmenter_base_channels']}, "
        "batch "
        f"{p['segmenter_batch_size']}, {p['segmenter_epochs']} epochs "
        f"(improved: {p['improved_segmenter_epochs'] or p['segmenter_epochs']})",
        "- optimisers as the seed: classifier AdamW lr 1e-3 wd 1e-5, U-Net Adam lr 1e-3 wd 0, "
        "grad-norm clip 5; "
        f"seed {p['seed']}; best checkpoint by validation score (the split's val side)",
        *([f"- BUSI read from a copy resized once to {p['busi_copy_size']} px with the loader's own resize "
           "(bilinear images, nearest masks; lossless PNG): the classifier sees exactly the inputs the "
           f"originals give at {p['busi_copy_size']}², "
           + (f"and so does the U-Net at {p['segmenter_image_size']}²"
              if p['segmenter_image_size'] == p['busi_copy_size']
              else f"the U-Net resizes that copy to {p['segmenter_image_size']}²")
           + "; splits are made from the originals"]
          if p.get("busi_copy_size") else []),
        f"- device `{p['device']}`, torch threads {p['threads'] or 'default'}, bootstrap resamples "
        f"{p['resamples']}",
        f"- machine: {m['platform']}, {m['cpu_count']} CPUs ({m['processor']}), "
        f"{'GPU ' + m['cuda'] if m.get('cuda') else 'no GPU'}; python {m['python']}, torch {m['torch']}, "
        f"dlmi {m['dlmi_version']}",
        f"- started {doc['started']}, last updated {doc['updated']}; total wall time (sum of the splits, "
        f"the BUSI copy and every experiment's training and evaluation) {_minutes(doc['total_wall_s'])}"
        + (f"; first start to completion {_minutes(_elapsed(doc['started'], doc['completed']))}"
           if doc.get("completed") else ""),
    ]


def _load_line(machine: dict[str, Any]) -> str:
    """What the measured load average says about the wall times."""
    before, after, cores = machine.get("load_before"), machine.get("load_after"), machine.get("cpu_count")
    if before is None or after is None or not cores:
        return ("Load average: not measured on this machine, so whether other jobs shared the CPU cores (and "
                "inflated the wall times) is unknown.")
    line = (f"Load average (1 minute): {before} when this invocation started, {after} when this report was "
            f"written, on {cores} CPU cores. ")
    if max(before, after) > cores:
        return line + ("A load above the core count means more processes wanted the cores than there were: "
                       "other jobs shared them, so read the wall times as upper bounds.")
    return line + ("Neither is above the core count, so the cores were not visibly shared and the wall times "
                   "stand (the two samples cannot rule out a busy spell in between).")


def _split_lines(doc: dict[str, Any]) -> list[str]:
    lines = ["| dataset | split file | train | val | test | near-duplicate groups (images) "
             "| cross-label groups |",
             "|---|---|---|---|---|---|---|"]
    for name, s in doc["splits"].items():
        lines.append(f"| {name} | `{s.get('recorded_as') or s['file']}` | {s['train']} | {s['val']} | "
                     f"{s['test']} | "
                     f"{s['groups']} ({s['grouped_images']}) | {s['cross_label']} |")
    return lines


def _time_lines(doc: dict[str, Any]) -> list[str]:
    lines = ["| experiment | status | epochs | best epoch | train wall | eval wall | mean epoch "
             "| precision |",
             "|---|---|---|---|---|---|---|---|"]
    for e in doc["experiments"]:
        t = e["timing"]
        mean = t["epoch_seconds_sum"] / t["epochs_trained"] if t["epochs_trained"] else None
        lines.append(f"| {e['name']} | {e['status']}{' — ' + e['error'] if e.get('error') else ''} | "
                     f"{t['epochs_trained']}/{e['epochs']} | {t['best_epoch'] or '—'} | "
                     f"{_minutes(t['train_wall_s'])} | {_minutes(t['eval_wall_s'])} | "
                     f"{'—' if mean is None else f'{mean:.0f} s'} | "
                     f"{t.get('precision') or '—'}{', channels-last' if t.get('channels_last') else ''} |")
    return lines


def _value(number: dict[str, Any] | None) -> float | None:
    return None if not number else number.get("value")


def _findings(doc: dict[str, Any]) -> list[str]:
    """Statements computed from the numbers above (nothing here is claimed without a measurement)."""
    exps = _by_name(doc)
    notes: list[str] = []
    brain = _value(_side(exps.get("brain-mri-cls"), "test").get("accuracy"))
    split = doc["splits"].get("brain-mri", {})
    if brain is not None and brain < 1.0:
        notes.append(
            f"**Brain MRI test accuracy {brain:.3f} < the seed's 1.0.** The seed split at random, and its "
            "own "
            "report notes that many brain MRI test images have near-identical twins in training, so its 1.0 "
            "partly measures recall of seen images. Our split (`dlmi.splits.make_split`) puts each group of "
            f"near-duplicates on one side ({split.get('groups', '?')} groups holding "
            f"{split.get('grouped_images', '?')} images), so test images are unseen; the profile's smaller "
            "input and fewer epochs also cost accuracy. Not measured here: how much of the gap each cause "
            "makes.")
    busi = exps.get("busi-cls")
    improved = exps.get("busi-cls-improved")
    for key, label in (("accuracy", "3-class accuracy"), ("detect_accuracy", "detect accuracy")):
        a, b = _side(busi, "test").get(key), _side(improved, "test").get(key)
        if _value(a) is not None and _value(b) is not None:
            overlap = a["low"] <= b["high"] and b["low"] <= a["high"]
            verdict = ("intervals overlap: no difference shown at this test size" if overlap
                       else "intervals do not overlap")
            notes.append(f"Improved classifier (class-balanced sampler + augment + cosine lr), test {label}: "
                         f"{_fmt(b)} vs seed settings {_fmt(a)} — {verdict}.")
    seg_best = None
    for exp in doc["experiments"]:
        if exp["task"] == "segmentation" and exp["variant"] == "seed":
            value = _value(_variant(exp, "test", "unaided", "lesion_dice"))
            if value is not None and (seg_best is None or value > seg_best[1]):
                seg_best = (exp["name"], value, _variant(exp, "test", "unaided", "lesion_dice"))
    seg_improved = exps.get("busi-unet-dice-bce-improved")
    improved_dice = _variant(seg_improved, "test", "unaided", "lesion_dice")
    if seg_best and _value(improved_dice) is not None:
        other = seg_best[2]
        overlap = other["low"] <= improved_dice["high"] and improved_dice["low"] <= other["high"]
        verdict = "intervals overlap: no difference shown" if overlap else "intervals do not overlap"
        notes.append(f"Improved U-Net (Dice+BCE, augment, cosine lr), test lesion Dice {_fmt(improved_dice)} "
                     "vs "
                     f"the best seed-setting U-Net ({seg_best[0]}) {_fmt(other)} — {verdict}. The improved "
                     "run also trains for more epochs (see the profile), so a difference would not be due to "
                     "the loss and augmentation alone.")
    for exp in doc["experiments"]:
        effect = (_side(exp, "test").get("aid_effect") or {}).get("miou_seed")
        if exp["task"] == "segmentation" and effect and effect.get("value") is not None:
            verdict = ("raises it" if effect["low"] > 0 else "lowers it" if effect["high"] < 0
                       else "interval spans 0: no change shown")
            dice = (_side(exp, "test").get("aid_effect") or {}).get("lesion_dice") or {}
            dice_text = (f"; test lesion Dice {dice['value']:+.3f} [{dice['low']:+.3f}, {dice['high']:+.3f}]"
                         if dice.get("value") is not None else "")
            notes.append(f"{exp['name']}: aid at evaluation minus none, test seed mIoU "
                         f"{effect['value']:+.3f} [{effect['low']:+.3f}, {effect['high']:+.3f}] ({verdict})"
                         f"{dice_text} — paired bootstrap over the same images.")
    return notes


def _target_lines(doc: dict[str, Any]) -> list[str]:
    """Where the targets are: `dlmi best`'s report holds their one table (`best.TARGETS`)."""
    best = f"best-{doc['profile']['name']}.md"
    return ["## Targets", "",
            f"The targets and the numbers measured against them are in [{best}]({best}) (`dlmi reproduce "
            "--only best`), the one table of them; the runs above reproduce the seed's settings.", ""]


def markdown(doc: dict[str, Any]) -> str:
    p = doc["profile"]
    done = sum(e["status"].startswith("done") for e in doc["experiments"])
    state = ("complete" if doc["complete"] else
             f"PARTIAL — {done} of {len(doc['experiments'])} experiments done (rewritten after each one)")
    seg, cls = p["segmenter_image_size"], p["classifier_image_size"]
    out = [
        f"# Reproducing the seed's experiments — profile `{p['name']}`",
        "",
        f"Status: **{state}**. Written by `dlmi reproduce --profile {p['name']}`; raw numbers in "
        f"`reproduce-{p['name']}.json`, run folders under `{doc['out']}`.",
        "",
        "Seed numbers: " + REFERENCE_SOURCE + ". Ours: leakage-free split (near-duplicates kept on one "
        f"side), classifier at {cls}², U-Net at {seg}² (profile `{p['name']}`), scored on the split sides "
        "named in each column; brackets are 95 % bootstrap intervals over images.",
        "",
        "## Profile and machine",
        "",
        *_profile_lines(doc),
        "",
    ]
    out += [_load_line(doc["machine"]), ""]
    out += [
        "## Splits",
        "",
        "The same split file serves the classifier and every U-Net of a dataset (a copy is kept beside "
        "this report).",
        "",
        *_split_lines(doc),
        "",
        "## Metric definitions",
        "",
        *[f"- **{k}**: {v}" for k, v in doc["definitions"].items()],
        "",
        f"## Classification (classifier input {cls}²)",
        "",
        *_classification_table(doc),
        "",
        f"## Segmentation, seed settings (BUSI, U-Net {seg}², base {p['segmenter_base_channels']})",
        "",
        "Each U-Net is scored without the aid and with the aid at evaluation (`busi-cls`); the seed's "
        "numbers sit on the rows that match its setting (unaided/unaided and aided/aided).",
        "",
        *_segmentation_table(doc, improved=False),
        "",
    ]
    if any(e["variant"] == "improved" and e["task"] == "segmentation" for e in doc["experiments"]):
        out += [
            f"## dlmi improved (BUSI, U-Net {seg}², base {p['segmenter_base_channels']})",
            "",
            "Beyond the seed's settings; aid at evaluation: the improved classifier.",
            "",
            *_segmentation_table(doc, improved=True),
            "",
        ]
    out += _target_lines(doc)
    notes = _findings(doc)
    if notes:
        out += ["## Findings (computed from the numbers above)", "", *[f"- {n}" for n in notes], ""]
    out += ["## Time per experiment", "", *_time_lines(doc), ""]
    return "\n".join(out)


def write_results(repro: ReproductionState, complete: bool) -> Path:
    """Write ``reproduce-<profile>.json`` and ``.md`` atomically; returns the Markdown path."""
    doc = collect(repro, complete)
    repro.results.mkdir(parents=True, exist_ok=True)
    stem = repro.results / f"reproduce-{repro.profile['name']}"
    write_json_atomic(stem.with_suffix(".json"), doc)
    return write_text_atomic(stem.with_suffix(".md"), markdown(doc))
