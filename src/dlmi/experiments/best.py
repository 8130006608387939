"""dlmi's best configuration ("dlmi best"): a fold ensemble of joint models on BUSI, a classifier ensemble on
brain MRI, scored once on the test side of the same leakage-free splits the seed rows use.

``dlmi reproduce --profile cpu --only best --out DIR`` trains (resumably) into ``DIR/busi-best`` and
``DIR/brain-mri-best``, exports each ensemble to ``DIR/<name>/exported`` (so ``dlmi predict --aided`` runs
it on other data), evaluates the test sides, measures an ablation (each step's effect, paired over the same
test images) and writes ``best-<profile>.json`` / ``.md`` into the results folder.

Every setting was chosen without the test side: the recipe from the val curves of single models and
cross-validation, the threshold and the lesion-size rule from out-of-fold predictions (``ensemble.json``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dlmi.atomic import write_json_atomic, write_text_atomic
from dlmi.errors import DlmiError
from dlmi.experiments.plan import DATA_FOLDERS
from dlmi.experiments.profiles import Profile, get_profile

BUSI_BEST = "busi-best"
BRAIN_BEST = "brain-mri-best"
TIMING_FILE = "timing.json"
LOAD_FILE = "load.json"
TARGETS = {"lesion_dice": 0.76, "lesion_iou": 0.65, "miou_seed_aided": 0.65, "accuracy_3class": 0.85,
           "detect_accuracy": 0.95, "empty_fpr_aided": 0.15, "brain_accuracy": 0.88}
LOWER_IS_BETTER = {"empty_fpr_aided"}
# The members' checkpoint of an ensemble.json written before dlmi recorded it (its member_checkpoint).
LEGACY_MEMBER_CHECKPOINT = "best.pt"
Log = Callable[[str], None]


@dataclass(frozen=True)
class BestRecipe:
    """The settings of the best configuration for one profile."""

    image_size: int
    base_channels: int
    epochs: int
    batch_size: int
    folds: int
    lr: float = 2e-3
    ema: float = 0.995
    warmup_epochs: int = 2
    augment_recipe: str = "ultrasound"
    brain_model: str = "seed-cnn"
    brain_image_size: int = 192
    brain_epochs: int = 80
    brain_folds: int = 5
    brain_lr: float = 1e-3
    # A ResNet encoder for the BUSI joint models when torchvision's ImageNet file for it is in torchvision's
    # cache (see busi_encoder); its U-Net decoder then has base encoder_base_channels.
    encoder: str | None = None
    encoder_base_channels: int = 16

    def busi_settings(self, encoder: bool = False) -> dict[str, Any]:
        """The BUSI joint models' settings; ``encoder``: on :attr:`encoder` from its ImageNet weights."""
        options = {"model_options": {"encoder": self.encoder, "weights": "imagenet"}} if encoder else {}
        base = self.encoder_base_channels if encoder else self.base_channels
        return {"task": "joint", "model": "unet-mt", "loss": "dice-bce", "image_size": self.image_size,
                **options, "base_channels": base, "epochs": self.epochs, "batch_size": self.batch_size,
                "lr": self.lr, "weight_decay": 1e-4, "optimizer": "adamw", "scheduler": "poly",
                "warmup_epochs": self.warmup_epochs, "ema": self.ema, "augment": True,
                "augment_recipe": self.augment_recipe, "best_metric": "val_score"}

    def brain_settings(self) -> dict[str, Any]:
        return {"task": "classification", "model": self.brain_model, "image_size": self.brain_image_size,
                "epochs": self.brain_epochs, "batch_size": 16, "lr": self.brain_lr, "weight_decay": 1e-4,
                "optimizer": "adamw", "scheduler": "cosine", "warmup_epochs": self.warmup_epochs, "ema": 0.99,
                "augment": True, "augment_recipe": "basic", "best_metric": "val_accuracy"}


RECIPES: dict[str, BestRecipe] = {
    "cpu": BestRecipe(image_size=128, base_channels=16, epochs=48, batch_size=16, folds=5),
    "gpu": BestRecipe(image_size=512, base_channels=64, epochs=120, batch_size=8, folds=5,
                      brain_image_size=512, brain_epochs=80, encoder="resnet34"),
    "tiny": BestRecipe(image_size=32, base_channels=4, epochs=1, batch_size=8, folds=2, warmup_epochs=0,
                       brain_model="seed-cnn", brain_image_size=64, brain_epochs=1, brain_folds=2),
}


def best_command(data_root: Path, profile: str, out: Path) -> str:
    """The command that trains (or resumes) this configuration and leaves its exported ONNX folders."""
    return f"dlmi reproduce --data-root {data_root} --profile {profile} --only best --out {out}"


def _timing(out: Path) -> dict[str, float]:
    path = out / TIMING_FILE
    try:
        return {k: float(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _timed(out: Path, name: str, work: Callable[[], Any]) -> Any:
    """Run ``work`` and add its wall time to ``out/timing.json`` (a resumed stage adds its remainder); the
    1-minute load average at its start and end goes to ``out/load.json``."""
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    result = work()
    timing = _timing(out)
    timing[name] = timing.get(name, 0.0) + time.perf_counter() - started
    write_json_atomic(out / TIMING_FILE, timing)
    loads = _read_loads(out)
    loads[name] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    write_json_atomic(out / LOAD_FILE, loads)
    return result


def _read_loads(out: Path) -> dict[str, Any]:
    try:
        data = json.loads((out / LOAD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def busi_encoder(recipe: BestRecipe) -> tuple[bool, str]:
    """Whether the BUSI joint models use the recipe's ResNet encoder from ImageNet weights — only when
    torchvision's file is already in its cache (``torch.hub.get_dir()/checkpoints``) — and a sentence
    saying which encoder they use and why."""
    if recipe.encoder is None:
        return False, "BUSI joint models: the classic U-Net encoder (this profile has no pretrained encoder)"
    from dlmi.models.pretrained import imagenet_file

    file = imagenet_file(recipe.encoder)
    if file.is_file():
        return True, (f"BUSI joint models: encoder={recipe.encoder} weights=imagenet ({file}), decoder base "
                      f"{recipe.encoder_base_channels}")
    return False, (f"BUSI joint models: the classic U-Net encoder, base {recipe.base_channels} ({file} is "
                   f"not there; place torchvision's file there to train on the {recipe.encoder} ImageNet "
                   "encoder)")


def train_best(data_root: Path, profile: Profile, out: Path, *, quiet: bool = True,
               log: Log = print) -> dict[str, Path]:
    """Train (or finish training) both ensembles; returns their folders."""
    from dlmi.training.config import TrainConfig
    from dlmi.training.folds import train_folds

    recipe = RECIPES[profile.name]
    common = {"device": profile.device, "seed": profile.seed, "quiet": quiet}
    use_encoder, encoder_note = busi_encoder(recipe)
    if recipe.encoder is not None:
        log(encoder_note)
    folders = {}
    for name, dataset, settings, folds in (
        (BUSI_BEST, "busi", recipe.busi_settings(use_encoder), recipe.folds),
        (BRAIN_BEST, "brain-mri", recipe.brain_settings(), recipe.brain_folds),
    ):
        folder = out / name
        data_dir = data_root / DATA_FOLDERS[dataset]
        if not data_dir.is_dir():
            raise DlmiError(f"{data_dir}: no such folder (expected {DATA_FOLDERS[dataset]}/ in --data-root)")
        config = TrainConfig(dataset=dataset, data_dir=str(data_dir), out=str(folder), **settings, **common)
        if not (folder / "ensemble.json").is_file():
            log(f"training {name}: {folds} folds × {settings['epochs']} epochs, {settings['image_size']} px")
            _timed(out, name, lambda config=config, folds=folds: train_folds(config, folds))
        folders[name] = folder
    return folders


def _export(folder: Path) -> Path:
    from dlmi.export.onnx_export import export_onnx

    exported = folder / "exported"
    if not (exported / "export.json").is_file() and (folder / "ensemble.json").is_file():
        kind = "segmenter" if BUSI_BEST in folder.name else "classifier"
        export_onnx(**{kind: folder}, out=exported)
    return exported


# --- scoring -------------------------------------------------------------------------------------------


@dataclass
class Scored:
    """Per-image results of one variant on the test side (same image order for every variant)."""

    name: str
    keys: list[str]
    labels: np.ndarray
    pred_class: np.ndarray
    aided_iou: np.ndarray
    aided_dice: np.ndarray
    any_pixel: np.ndarray
    lesion: np.ndarray  # the images of a lesion class (every class but the normal one)


def _score_variant(name: str, trained: Any, source: Any, samples: list[Any]) -> Scored:
    from dlmi.evaluation.predict import predict_side
    from dlmi.metrics.segmentation import dice_from_counts, iou_from_counts, mask_counts

    preds = predict_side(source, samples, segmenter=trained, batch_size=16)
    aided = preds.aided_masks()
    counts = mask_counts(aided, preds.true_masks)
    return Scored(name=name, keys=preds.keys, labels=preds.labels,
                  pred_class=preds.class_logits.argmax(1), aided_iou=iou_from_counts(*counts),
                  aided_dice=dice_from_counts(*counts), any_pixel=counts[1] > 0,
                  lesion=preds.labels != trained.normal_index)


def _variants(folder: Path, extra: dict[str, Path]) -> list[tuple[str, Any]]:
    """(name, loaded model) of each ablation step, simplest first."""
    import dataclasses

    from dlmi.runtime.ensemble import JointEnsemble, TrainedEnsemble, load_ensemble
    from dlmi.runtime.trained import load_trained

    full = load_ensemble(folder)
    single = full.members[0]  # fold 0's checkpoint by the ensemble's own rule (ensemble.json)
    plain_meta = {**full.meta, "threshold": 0.5, "min_lesion_pixels": 0, "normal_threshold": None}

    def ensemble_of(members: list[Any], flip: bool, meta: dict[str, Any]) -> TrainedEnsemble:
        return TrainedEnsemble(model=JointEnsemble([m.model for m in members], flip_tta=flip).eval(),
                               meta=meta, checkpoint=full.checkpoint, run_dir=full.run_dir, members=members)

    steps: list[tuple[str, Any]] = []
    for label, path in extra.items():
        steps.append((label, load_trained(path)))
    steps += [
        ("one joint model (fold 0)", single),
        ("+ flip TTA", ensemble_of([single], True, plain_meta)),
        (f"+ {len(full.members)}-fold ensemble", ensemble_of(full.members, True, plain_meta)),
        ("+ post-processing chosen out of fold (= dlmi best)", dataclasses.replace(full)),
    ]
    return steps


def _paired(a: Scored, b: Scored, resamples: int) -> dict[str, Any]:
    """(b − a) per image with paired bootstrap intervals: lesion Dice, seed mIoU, 3-class accuracy."""
    from dlmi.metrics.bootstrap import scored_mean

    lesion = a.lesion
    opts = {"resamples": resamples}
    return {
        "lesion_dice": scored_mean(b.aided_dice[lesion] - a.aided_dice[lesion],
                                   "mean over test lesion images of the per-image Dice difference (aided)",
                                   **opts),
        "miou_seed_aided": scored_mean(b.aided_iou - a.aided_iou,
                                       "mean over all test images of the per-image IoU difference (aided)",
                                       **opts),
        "accuracy_3class": scored_mean((b.pred_class == b.labels).astype(float)
                                       - (a.pred_class == a.labels).astype(float),
                                       "difference in 3-class correctness, mean over test images", **opts),
    }


def ablation(folder: Path, source: Any, samples: list[Any], resamples: int,
             extra: dict[str, Path] | None = None) -> list[dict[str, Any]]:
    """Each step's numbers and its effect over the previous step, on the same test images."""
    from dlmi.metrics.bootstrap import scored_mean

    rows = []
    previous: Scored | None = None
    for name, trained in _variants(folder, extra or {}):
        scored = _score_variant(name, trained, source, samples)
        lesion = scored.lesion
        row = {
            "step": name,
            "lesion_dice": scored_mean(scored.aided_dice[lesion], "mean over test lesion images, aided",
                                       resamples=resamples),
            "miou_seed_aided": scored_mean(scored.aided_iou, "mean over all test images, aided",
                                           resamples=resamples),
            "accuracy_3class": scored_mean((scored.pred_class == scored.labels).astype(float),
                                           "fraction of test images", resamples=resamples),
            "empty_fpr_aided": scored_mean(scored.any_pixel[~lesion].astype(float),
                                           "normal test images with any lesion pixel, aided",
                                           resamples=resamples),
        }
        compare_to = previous
        if previous is not None and name.startswith("one joint model"):
            compare_to = None  # the recipe variants are compared with the full recipe below
        if compare_to is not None:
            row["effect_vs_previous"] = _paired(compare_to, scored, resamples)
        rows.append(row)
        previous = scored
    return rows


def _value(entry: dict[str, Any]) -> dict[str, Any]:
    return {"value": entry["value"], "low": entry["low"], "high": entry["high"]}


def score_best(folders: dict[str, Path], data_root: Path, profile: Profile, out: Path, *, resamples: int,
               extra: dict[str, Path] | None = None) -> dict[str, Any]:
    """Evaluate both ensembles on their test sides and measure the BUSI ablation."""
    from dlmi.evaluation.evaluator import evaluate_run, load_inputs

    busi = evaluate_run(folders[BUSI_BEST], side="test", resamples=resamples, device=profile.device)
    brain = evaluate_run(folders[BRAIN_BEST], side="test", resamples=resamples, device=profile.device)
    aided = busi["segmentation"]["variants"]["aided"]
    classes = busi["classification"]
    timing = _timing(out)
    headline = {
        "lesion_dice": _value(aided["lesion_dice"]),
        "lesion_iou": _value(aided["lesion_iou"]),
        "miou_seed_aided": _value(aided["miou_seed"]),
        "accuracy_3class": _value(classes["accuracy"]),
        "detect_accuracy": _value(classes["detect_accuracy"]),
        "empty_fpr_aided": _value(aided["empty_truth_false_positive_rate"]),
        "brain_accuracy": _value(brain["classification"]["accuracy"]),
        "train_minutes": round(timing.get(BUSI_BEST, float("nan")) / 60, 1),
        "command": best_command(data_root, profile.name, out),
    }
    inputs = load_inputs(folders[BUSI_BEST], device="cpu")
    rows = ablation(folders[BUSI_BEST], inputs.source, inputs.sides["test"], resamples, extra)
    return {"headline": headline, "busi": busi, "brain": brain, "ablation": rows, "timing": timing,
            "postprocess": postprocess_note(folders[BUSI_BEST]), "oof": _oof_scores(folders)}


def _manifest(folder: Path) -> dict[str, Any] | None:
    """An ensemble folder's ``ensemble.json``, or ``None`` where it cannot be read."""
    try:
        manifest = json.loads((folder / "ensemble.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def postprocess_note(folder: Path) -> str:
    """The post-processing an ensemble's ``ensemble.json`` chose, in words."""
    manifest = _manifest(folder)
    if manifest is None:
        return "see ensemble.json"
    gate = ("the arg-max class is normal" if manifest.get("normal_threshold") is None
            else f"P(normal) ≥ {manifest['normal_threshold']}")
    chosen = manifest.get("postprocess", {}).get("selected_on", "out-of-fold predictions")
    smallest = manifest.get("min_lesion_pixels", 0)
    size_rule = f"lesions under {smallest} px called empty" if smallest else "no lesion-size rule"
    return f"threshold {manifest.get('threshold', 0.5)}, {size_rule}, gate: {gate}; chosen on {chosen}"


def _oof_line(oof: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, (int, float)) else "—"

    busi, brain = oof.get(BUSI_BEST, {}), oof.get(BRAIN_BEST, {})
    return ("Out of fold (each development image scored by the member that did not train on it — where "
            f"recipes are compared, never on the test side; {_checkpoint_rule(oof)}): BUSI 3-class accuracy "
            f"{fmt(busi.get('accuracy'))}, lesion Dice aided {fmt(busi.get('lesion_dice_aided'))}, "
            f"seed mIoU aided {fmt(busi.get('miou_seed_aided'))}, "
            f"empty FPR aided {fmt(busi.get('empty_fpr_aided'))}; "
            f"brain MRI accuracy {fmt(brain.get('accuracy'))}.")


def _checkpoint_rule(oof: dict[str, Any]) -> str:
    """Which checkpoint of each member the out-of-fold numbers used, and what that means for them."""
    rules = {entry.get("member_checkpoint", LEGACY_MEMBER_CHECKPOINT) for entry in oof.values()}
    if rules == {"last.pt"}:
        return "each member's last.pt, its final epoch, so no member was chosen on the images it scores"
    return ("members' " + " / ".join(sorted(rules)) + "; a member's best.pt was chosen on its own val fold, "
            "the images it scores out of fold, so these numbers are optimistic (measured on BUSI: 3-class "
            "0.788 with best.pt, 0.780 with last.pt)")


def _oof_scores(folders: dict[str, Path]) -> dict[str, Any]:
    """What each ensemble scored out of fold (the development images, not the test side)."""
    scores: dict[str, Any] = {}
    for name, folder in folders.items():
        manifest = _manifest(folder)
        if manifest is None:
            continue
        best = manifest.get("postprocess", {})
        scores[name] = {"member_checkpoint": manifest.get("member_checkpoint", LEGACY_MEMBER_CHECKPOINT),
                        "accuracy": best.get("oof_accuracy", manifest.get("oof_accuracy")),
                        **{k: v for k, v in best.get("oof_best", {}).items() if k.endswith("_aided")}}
    return scores


# --- report --------------------------------------------------------------------------------------------


def _fmt(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "—"
    low, high = entry.get("low"), entry.get("high")
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{entry['value']:.3f}{interval}"


def _signed(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "—"
    return f"{entry['value']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]"


def _loads(loads: dict[str, Any] | None) -> str:
    if not loads:
        return "not recorded (a run started before dlmi recorded it)"
    return "; ".join(f"{name} {pair[0]} → {pair[1]}" for name, pair in loads.items())


def markdown(result: dict[str, Any], profile: Profile, recipe: BestRecipe, machine: dict[str, Any]) -> str:
    head = result["headline"]
    busi_ctx = result["busi"]["context"]
    brain_ctx = result["brain"]["context"]
    lines = [
        f"# dlmi best — profile `{profile.name}`",
        "",
        f"Written by `{head['command']}`; raw numbers in `best-{profile.name}.json`.",
        "",
        f"- **BUSI**: an ensemble of {recipe.folds} `unet-mt` joint models (one per cross-validation fold of "
        f"the split's train+val images), {recipe.image_size}² grey, "
        f"{result.get('busi_encoder') or f'base {recipe.base_channels}'}, "
        f"{recipe.epochs} epochs, batch {recipe.batch_size}, AdamW lr {recipe.lr} wd 1e-4, "
        f"{recipe.warmup_epochs} warm-up epochs then poly decay, EMA {recipe.ema}, "
        f"`{recipe.augment_recipe}` augmentation, Dice+BCE with deep supervision + cross-entropy "
        "(label smoothing 0.1); flip TTA; its class head is the gate; "
        "post-processing chosen on out-of-fold predictions "
        f"({result.get('postprocess', 'see ensemble.json')}).",
        f"- **Brain MRI**: an ensemble of {recipe.brain_folds} `{recipe.brain_model}` classifiers from "
        f"scratch, {recipe.brain_image_size}², {recipe.brain_epochs} epochs, AdamW, cosine, EMA, "
        "flips/affine, flip TTA.",
        f"- **Test sides**: BUSI {busi_ctx['n_images']} images, brain MRI {brain_ctx['n_images']} images — "
        "the test sides of the same leakage-free splits as the seed rows "
        "(`reproduce-cpu-split-*.json`); scored once, at the model's input size (true masks resized, "
        "nearest). Brackets: 95 % percentile bootstrap over images.",
        f"- **Machine**: {machine.get('cpu_count')} CPUs, torch {machine.get('torch')}; 1-minute load "
        f"average at the start and end of training: {_loads(machine.get('training_load'))}; "
        f"{machine.get('load_before')} before and {machine.get('load_after')} after scoring "
        "(a load above the core count means other jobs shared the cores, so wall times are upper bounds).",
        "",
        "## Headline (test side)",
        "",
        "| measure | definition | dlmi best [95 % CI] | target |",
        "|---|---|---|---|",
    ]
    definitions = {
        "lesion_dice": "mean per-image Dice over benign+malignant images, aided (a gated lesion image "
                       "scores 0)",
        "lesion_iou": "mean per-image IoU over benign+malignant images, aided",
        "miou_seed_aided": "mean per-image IoU over all images, aided; empty truth ∩ empty prediction = 1",
        "accuracy_3class": "arg-max class = true class (normal / benign / malignant)",
        "detect_accuracy": "tumour vs normal read from the 3-class prediction",
        "empty_fpr_aided": "normal images given any lesion pixel, aided",
        "brain_accuracy": "brain MRI tumour yes/no accuracy",
    }
    for key, text in definitions.items():
        sign = "≤" if key in LOWER_IS_BETTER else "≥"
        lines.append(f"| {key} | {text} | {_fmt(head[key])} | {sign} {TARGETS[key]} |")
    lines += [
        "",
        f"Whole training of the BUSI ensemble: **{head['train_minutes']} min** wall time "
        f"(brain MRI ensemble: {round(result['timing'].get(BRAIN_BEST, float('nan')) / 60, 1)} min).",
        "",
        _oof_line(result.get("oof", {})),
        "",
        "## Ablation (BUSI test side, each step against the one above it; paired bootstrap over the same "
        "images)",
        "",
        "| step | lesion Dice | seed mIoU aided | 3-class acc. | empty FPR aided | Δ lesion Dice | Δ mIoU | "
        "Δ accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["ablation"]:
        effect = row.get("effect_vs_previous") or {}
        lines.append(
            f"| {row['step']} | {_fmt(row['lesion_dice'])} | {_fmt(row['miou_seed_aided'])} | "
            f"{_fmt(row['accuracy_3class'])} | {_fmt(row['empty_fpr_aided'])} | "
            f"{_signed(effect.get('lesion_dice'))} | {_signed(effect.get('miou_seed_aided'))} | "
            f"{_signed(effect.get('accuracy_3class'))} |")
    lines += ["", "The ONNX files: `exported/` inside each ensemble folder; run them on other data with "
              "`dlmi predict --aided FOLDER --models DIR/busi-best/exported --out OUT`.", ""]
    return "\n".join(lines)


def encoder_used(folder: Path) -> str | None:
    """What the BUSI members trained on, read from a member's config.json: ``None`` for the classic U-Net
    encoder, else the encoder, the weights' source and their sha256."""
    configs = sorted(folder.glob("fold-*/config.json"))
    if not configs:
        return None
    config = json.loads(configs[0].read_text(encoding="utf-8"))
    encoder = (config.get("model_options") or {}).get("encoder")
    if encoder is None:
        return None
    weights = config.get("pretrained_weights") or {}
    return (f"encoder `{encoder}` from `{weights.get('source', 'random')}` weights (sha256 "
            f"`{weights.get('sha256', '–')}`), decoder base {config.get('base_channels')}")


def run_best(data_root: str | os.PathLike[str], profile_name: str = "cpu",
             out: str | os.PathLike[str] | None = None,
             results: str | os.PathLike[str] = "benchmarks/results", *, quiet: bool = True,
             resamples: int | None = None, log: Log = print) -> Path:
    """Train, export, score and report dlmi's best configuration; returns the Markdown results file."""
    from dlmi.experiments.reproduction import machine_info

    profile = get_profile(profile_name)
    if profile.name not in RECIPES:
        raise DlmiError(f"profile {profile.name!r} has no best recipe; expected one of {', '.join(RECIPES)}")
    data_root = Path(data_root)
    out = Path(out) if out is not None else Path(f"runs/best-{profile.name}")
    out.mkdir(parents=True, exist_ok=True)
    folders = train_best(data_root, profile, out, quiet=quiet, log=log)
    for folder in folders.values():
        log(f"exported: {_export(folder)}")
    machine = machine_info()
    machine["load_before"] = round(os.getloadavg()[0], 2)
    machine["training_load"] = _read_loads(out)
    result = score_best(folders, data_root, profile, out, resamples=resamples or profile.resamples)
    machine["load_after"] = round(os.getloadavg()[0], 2)
    recipe = RECIPES[profile.name]
    result["busi_encoder"] = encoder_used(folders[BUSI_BEST])
    results_dir = Path(results)
    results_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(result["headline"])
    write_json_atomic(results_dir / f"best-{profile.name}.json", payload)
    detail = {"profile": profile.to_dict(), "recipe": recipe.__dict__, "machine": machine,
              "created": datetime.now(UTC).isoformat(timespec="seconds"), **result}
    write_json_atomic(results_dir / f"best-{profile.name}-detail.json", detail)
    path = results_dir / f"best-{profile.name}.md"
    write_text_atomic(path, markdown(result, profile, recipe, machine))
    return path
