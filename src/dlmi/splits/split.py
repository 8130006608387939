"""Leakage-free splits: stratified by class, every duplicate group whole on one side.

The unit of assignment is a duplicate group of the audit (a single image is a group of one). Groups are
dealt to sides class by class — largest groups first, ties in a seeded random order — each to the side
whose share of that class is furthest below its target, so every side gets about its fraction of every
class and no group straddles two sides.

Cross-label policy: a group whose images are filed under more than one class goes whole to ``train`` (to
the training part of every fold), never to ``val`` or ``test``; its images are listed under
``cross_label``. Evaluation then never scores an image whose true label is contested, and no copy of it
leaks into training from an evaluation side.

With ``folds=K``, ``test`` is held out first (as above) and the rest is dealt into K folds of equal
size; fold k's ``val`` is its own part and its ``train`` the other parts plus the cross-label groups.
``train`` then lists every non-test image and ``val`` is empty.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlmi.atomic import write_json_atomic
from dlmi.datasets.base import DatasetSource, Sample, list_samples
from dlmi.errors import DlmiError
from dlmi.splits.audit import AuditResult, audit_samples, check_threshold
from dlmi.splits.cache import HashCache
from dlmi.splits.hashing import HASH_VERSION

SPLIT_FORMAT = "dlmi-split"
SIDES = ("train", "val", "test")
CROSS_LABEL_POLICY = "train"


@dataclass
class Split:
    """A split of a dataset's sample keys into sides (and optionally folds)."""

    dataset: str
    seed: int | None
    threshold: int | None
    dlmi_version: str
    train: list[str]
    val: list[str]
    test: list[str]
    folds: list[dict[str, list[str]]] | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    hash: str | None = None
    cross_label: list[list[str]] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)

    def side(self, name: str, fold: int | None = None) -> list[str]:
        """The keys of side ``name`` (of fold ``fold`` for ``train``/``val`` when given)."""
        if name not in SIDES:
            raise DlmiError(f"unknown split side {name!r}; expected one of {', '.join(SIDES)}")
        if fold is None:
            if name == "val" and self.folds:
                raise DlmiError(
                    f"this split of {self.dataset} has {len(self.folds)} folds: choose a fold for 'val'"
                )
            return list(getattr(self, name))
        if not self.folds:
            raise DlmiError(f"fold {fold} asked for, but this split of {self.dataset} has no folds")
        if not 0 <= fold < len(self.folds):
            raise DlmiError(f"fold {fold} out of range: this split has folds 0..{len(self.folds) - 1}")
        return list(self.test) if name == "test" else list(self.folds[fold][name])

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": SPLIT_FORMAT,
            "dataset": self.dataset,
            "seed": self.seed,
            "threshold": self.threshold,
            "hash": self.hash,
            "dlmi_version": self.dlmi_version,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "cross_label_policy": CROSS_LABEL_POLICY,
            "counts": {name: len(getattr(self, name)) for name in SIDES},
            "train": self.train,
            "val": self.val,
            "test": self.test,
            "folds": self.folds,
            "cross_label": self.cross_label,
            "groups": self.groups,
        }
        return data

    @classmethod
    def from_json(cls, data: Any, origin: str = "split") -> Split:
        """Read a split from parsed JSON; a one-line :class:`DlmiError` naming ``origin`` on a bad one.

        Only ``dataset`` and ``train`` are required, so a hand-made split reads too.
        """
        if not isinstance(data, dict):
            raise DlmiError(f"{origin}: a split file must hold a JSON object, not {type(data).__name__}")
        if "dataset" not in data or not isinstance(data["dataset"], str) or not data["dataset"]:
            raise DlmiError(f"{origin}: missing \"dataset\" (the registered dataset name)")
        if "train" not in data:
            raise DlmiError(f"{origin}: missing \"train\" (a list of sample keys)")

        def keys(value: Any, where: str) -> list[str]:
            if value is None:
                return []
            if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
                raise DlmiError(f"{origin}: \"{where}\" must be a list of sample keys (strings)")
            return list(value)

        def groups(value: Any, where: str) -> list[list[str]]:
            if value is None:
                return []
            if not isinstance(value, list):
                raise DlmiError(f"{origin}: \"{where}\" must be a list of lists of sample keys")
            return [keys(g, f"{where}[{n}]") for n, g in enumerate(value)]

        folds = data.get("folds")
        if folds is not None:
            if not isinstance(folds, list) or not all(isinstance(f, dict) for f in folds):
                raise DlmiError(f"{origin}: \"folds\" must be a list of {{\"train\": [...], \"val\": [...]}}")
            folds = [{"train": keys(f.get("train"), f"folds[{n}].train"),
                      "val": keys(f.get("val"), f"folds[{n}].val")} for n, f in enumerate(folds)]
            folds = folds or None

        def number(name: str, kind: type) -> Any:
            value = data.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
                wanted = "number" if kind is float else "whole number"
                raise DlmiError(f"{origin}: \"{name}\" must be a {wanted}")
            return kind(value)

        return cls(
            dataset=data["dataset"],
            seed=number("seed", int),
            threshold=number("threshold", int),
            dlmi_version=str(data.get("dlmi_version") or "unknown"),
            train=keys(data.get("train"), "train"),
            val=keys(data.get("val"), "val"),
            test=keys(data.get("test"), "test"),
            folds=folds,
            val_fraction=number("val_fraction", float),
            test_fraction=number("test_fraction", float),
            hash=data.get("hash") if isinstance(data.get("hash"), str) else None,
            cross_label=groups(data.get("cross_label"), "cross_label"),
            groups=groups(data.get("groups"), "groups"),
        )


def _deal(
    units: Sequence[tuple[int, list[str]]], fractions: Sequence[float], rng: random.Random
) -> list[list[str]]:
    """Deal ``(label, keys)`` units into ``len(fractions)`` parts, stratified by label.

    Per label: largest units first (ties in ``rng``'s order), each to the part whose count of that label
    is furthest below its target (ties to the earlier part).
    """
    parts: list[list[str]] = [[] for _ in fractions]
    by_label: dict[int, list[list[str]]] = {}
    for label, keys in units:
        by_label.setdefault(label, []).append(keys)
    for label in sorted(by_label):
        members = by_label[label]
        rng.shuffle(members)
        members.sort(key=len, reverse=True)
        total = sum(len(m) for m in members)
        targets = [total * f for f in fractions]
        counts = [0] * len(fractions)
        for keys in members:
            side = max(range(len(fractions)), key=lambda s: (targets[s] - counts[s], -s))
            parts[side].extend(keys)
            counts[side] += len(keys)
    return parts


def _check_fractions(val: float, test: float, folds: int | None) -> None:
    for name, value in (("--val", val), ("--test", test)):
        if not 0.0 <= value < 1.0:
            raise DlmiError(f"{name} {value}: must be a fraction in [0, 1)")
    if folds is None and val + test >= 1.0:
        raise DlmiError(f"--val {val} + --test {test} leaves nothing to train on (must sum below 1)")
    if folds is not None and folds < 2:
        raise DlmiError(f"--folds {folds}: k-fold needs at least 2 folds")


def check_fold_count(folds: int, images: int, units: int) -> None:
    """Every fold needs at least one val image: at most one fold per unit (an image, or a near-duplicate
    group that moves as one)."""
    if folds > units:
        grouped = f" in {units} units (near-duplicate groups move together)" if units != images else ""
        raise DlmiError(f"--folds {folds}: only {images} development images{grouped} to deal into folds; "
                        f"choose at most {units} folds")


def split_from_audit(
    audit: AuditResult,
    samples: Sequence[Sample],
    *,
    val: float = 0.15,
    test: float = 0.15,
    folds: int | None = None,
    seed: int = 0,
) -> Split:
    """Build a split from an audit of ``samples`` (see the module docstring for the rules)."""
    from dlmi import __version__

    _check_fractions(val, test, folds)
    label_of = {s.key: s.label for s in samples}
    order = {s.key: n for n, s in enumerate(samples)}
    grouped = {key for group in audit.groups for key in group}
    crossing = {tuple(g) for g in audit.cross_label}
    units = [(label_of[g[0]], list(g)) for g in audit.groups if tuple(g) not in crossing]
    units += [(label_of[s.key], [s.key]) for s in samples if s.key not in grouped]
    units.sort(key=lambda unit: order[unit[1][0]])  # a fixed order before the seeded shuffle
    contested = sorted((k for g in audit.cross_label for k in g), key=order.__getitem__)
    rng = random.Random(seed)

    def ordered(keys: Sequence[str]) -> list[str]:
        return sorted(keys, key=order.__getitem__)

    if folds is None:
        train, val_keys, test_keys = _deal(units, [1.0 - val - test, val, test], rng)
        fold_list = None
        train = ordered(train + contested)
    else:
        development, test_keys = _deal(units, [1.0 - test, test], rng)
        development_set = set(development)
        development_units = [u for u in units if u[1][0] in development_set]
        check_fold_count(folds, len(development), len(development_units))
        parts = _deal(development_units, [1.0 / folds] * folds, rng)
        fold_list = [
            {"train": ordered([k for n, p in enumerate(parts) if n != k_fold for k in p] + contested),
             "val": ordered(parts[k_fold])}
            for k_fold in range(folds)
        ]
        train, val_keys = ordered(development + contested), []
    return Split(
        dataset=audit.dataset,
        seed=seed,
        threshold=audit.threshold,
        dlmi_version=__version__,
        train=train,
        val=ordered(val_keys),
        test=ordered(test_keys),
        folds=fold_list,
        val_fraction=None if folds is not None else val,
        test_fraction=test,
        hash=HASH_VERSION,
        cross_label=[list(g) for g in audit.cross_label],
        groups=[list(g) for g in audit.groups],
    )


def with_folds(split: Split, samples: Sequence[Sample], folds: int, *, seed: int = 0) -> Split:
    """``split`` with its train and val sides re-dealt into ``folds`` folds; ``test`` stays as it is.

    The same rules as a k-fold split made from scratch: the recorded near-duplicate groups move as one unit,
    stratified by label; cross-label groups stay in every fold's train part. So models trained on the folds
    are scored on exactly the test images of the original split.
    """
    from dlmi import __version__

    _check_fractions(0.0, split.test_fraction or 0.0, folds)
    label_of = {s.key: s.label for s in samples}
    development = [k for k in (*split.train, *split.val) if k in label_of]
    missing = sorted((set(split.train) | set(split.val)) - set(label_of))
    if missing:
        raise DlmiError(f"the split names {len(missing)} images the dataset lacks, e.g. {missing[0]}")
    order = {k: n for n, k in enumerate(development)}
    contested = {k for g in split.cross_label for k in g}
    in_group: set[str] = set()
    units: list[tuple[int, list[str]]] = []
    for group in split.groups:
        keys = [k for k in group if k in order and k not in contested]
        in_group.update(group)
        if keys:
            units.append((label_of[keys[0]], keys))
    units += [(label_of[k], [k]) for k in development if k not in in_group and k not in contested]
    units.sort(key=lambda unit: order[unit[1][0]])
    check_fold_count(folds, len(development), len(units))
    parts = _deal(units, [1.0 / folds] * folds, random.Random(seed))

    def ordered(keys: Sequence[str]) -> list[str]:
        return sorted(keys, key=order.__getitem__)

    kept = ordered([k for k in development if k in contested])
    fold_list = [{"train": ordered([k for n, p in enumerate(parts) if n != f for k in p] + kept),
                  "val": ordered(parts[f])} for f in range(folds)]
    return dataclasses.replace(split, train=ordered(development), val=[], folds=fold_list, val_fraction=None,
                               dlmi_version=__version__)


def make_split(
    dataset_name: str,
    data_dir: Path | None,
    *,
    val: float = 0.15,
    test: float = 0.15,
    folds: int | None = None,
    seed: int = 0,
    threshold: int | None = None,
    source: DatasetSource | None = None,
    cache: HashCache | None = None,
) -> Split:
    """Audit the dataset and split it without leakage (pass ``source`` to use a configured instance)."""
    from dlmi.plugins import get_dataset

    _check_fractions(val, test, folds)
    threshold = check_threshold(threshold)
    source = source if source is not None else get_dataset(dataset_name)
    folder = Path(data_dir) if data_dir is not None else None
    samples = list_samples(source, folder)
    if not samples:
        raise DlmiError(f"{folder or dataset_name}: the dataset has no images to split")
    audit = audit_samples(source, samples, threshold=threshold, data_dir=folder, cache=cache, masks=False)
    split = split_from_audit(audit, samples, val=val, test=test, folds=folds, seed=seed)
    split.dataset = dataset_name
    return split


def save_split(split: Split, path: str | Path) -> Path:
    """Write ``split`` as JSON, atomically."""
    return write_json_atomic(path, split.to_json())


def load_split(path: str | Path) -> Split:
    """Read a split file; a one-line :class:`DlmiError` naming the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DlmiError(f"{path}: split file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DlmiError(f"{path}: cannot read split file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DlmiError(f"{path}: not valid JSON ({where}: {exc.msg})") from None
    return Split.from_json(data, origin=str(path))


def split_samples(
    split: Split, samples: Sequence[Sample], side: str, fold: int | None = None
) -> list[Sample]:
    """The samples on ``side`` (train, val, test; of fold ``fold`` if given), in the split's order.

    Without ``fold``, ``train`` of a k-fold split is every non-test sample. A one-line :class:`DlmiError`
    names keys that the dataset lacks.
    """
    keys = split.side(side, fold)
    by_key = {s.key: s for s in samples}
    missing = [k for k in keys if k not in by_key]
    if missing:
        shown = ", ".join(repr(k) for k in missing[:3])
        if len(missing) > 3:
            shown += f" and {len(missing) - 3} more"
        raise DlmiError(
            f"split of {split.dataset!r}: {len(missing)} {side} key(s) not in the dataset: {shown} "
            "(wrong --data-dir or dataset?)"
        )
    return [by_key[k] for k in keys]
