"""Re-verifying a split, including one made by hand: every near-duplicate pair that straddles two sides.

The images the split names are hashed (through the cache) and every pair within the threshold — the
split's own, or the default for a hand-made file without one — whose images sit on different sides is a
leak. For a k-fold split, the sides are each fold's ``train`` and ``val`` and the shared ``test``. A key
listed on two sides is a leak of distance 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlmi.datasets.base import DatasetSource, list_samples
from dlmi.errors import DlmiError
from dlmi.splits.audit import Progress, audit_samples, check_threshold
from dlmi.splits.cache import HashCache
from dlmi.splits.split import Split, split_samples


@dataclass(frozen=True)
class Leak:
    """Near-duplicate images ``first`` (on ``side_first``) and ``second`` (on ``side_second``)."""

    first: str
    side_first: str
    second: str
    side_second: str
    distance: int
    kind: str

    def to_json(self) -> dict[str, Any]:
        return {"a": self.first, "side_a": self.side_first, "b": self.second, "side_b": self.side_second,
                "distance": self.distance, "kind": self.kind}


@dataclass
class SplitCheck:
    """The result of :func:`check_split`: ``ok`` when there is no leak."""

    dataset: str
    threshold: int
    images: int
    leaks: list[Leak] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.leaks

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "threshold": self.threshold, "images": self.images, "ok": self.ok,
                "leaks": [leak.to_json() for leak in self.leaks]}


def _side_sets(split: Split) -> list[tuple[str, set[str], str, set[str]]]:
    """The pairs of sides that must share no duplicates, as (name, keys, name, keys)."""
    test = set(split.test)
    if split.folds:
        pairs = []
        for n, fold in enumerate(split.folds):
            train, val = set(fold["train"]), set(fold["val"])
            pairs += [(f"fold {n} train", train, f"fold {n} val", val),
                      (f"fold {n} train", train, "test", test),
                      (f"fold {n} val", val, "test", test)]
        return pairs
    train, val = set(split.train), set(split.val)
    return [("train", train, "val", val), ("train", train, "test", test), ("val", val, "test", test)]


def check_split(
    split: Split,
    data_dir: Path | None,
    *,
    threshold: int | None = None,
    source: DatasetSource | None = None,
    cache: HashCache | None = None,
    progress: Progress | None = None,
) -> SplitCheck:
    """List every near-duplicate pair across the sides of ``split`` (a :class:`SplitCheck`)."""
    from dlmi.plugins import get_dataset

    threshold = check_threshold(threshold if threshold is not None else split.threshold)
    source = source if source is not None else get_dataset(split.dataset)
    folder = Path(data_dir) if data_dir is not None else None
    samples = list_samples(source, folder)
    named: list[str] = list(dict.fromkeys(
        [*split.train, *split.val, *split.test,
         *(k for fold in (split.folds or []) for side in ("train", "val") for k in fold[side])]))
    everything = Split(dataset=split.dataset, seed=None, threshold=None, dlmi_version="",
                       train=named, val=[], test=[])
    chosen = split_samples(everything, samples, "train")
    if not chosen:
        raise DlmiError(f"split of {split.dataset!r} names no images")
    audit = audit_samples(source, chosen, threshold=threshold, data_dir=folder, cache=cache,
                          progress=progress, masks=False)
    leaks: list[Leak] = []
    side_pairs = _side_sets(split)
    for name_a, keys_a, name_b, keys_b in side_pairs:
        for key in sorted(keys_a & keys_b):
            leaks.append(Leak(key, name_a, key, name_b, 0, "same-key"))
    for pair in audit.pairs:
        for name_a, keys_a, name_b, keys_b in side_pairs:
            if pair.first in keys_a and pair.second in keys_b:
                leaks.append(Leak(pair.first, name_a, pair.second, name_b, pair.distance, pair.kind))
            elif pair.second in keys_a and pair.first in keys_b:
                leaks.append(Leak(pair.second, name_a, pair.first, name_b, pair.distance, pair.kind))
    return SplitCheck(dataset=split.dataset, threshold=threshold, images=len(chosen), leaks=leaks)
