"""Leakage-free splits: groups whole on one side, stratification, k-fold, the cross-label policy, split
files, `split_samples`, `check_split` and the CLI; on planted folders, synthetic data and the shared sets."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dlmi
from dlmi.errors import DlmiError
from dlmi.plugins import get_dataset, get_plugins
from dlmi.splits import Split, check_split, load_split, make_split, save_split, split_samples
from dlmi.splits.cache import HashCache

SIDES = ("train", "val", "test")


def _plant_groups(root: Path, per_class: int = 20, seed: int = 0) -> list[set[str]]:
    """A brain-MRI-layout folder: ``per_class`` generated images per class, some of them with one or two
    duplicates (a copy, a rescale); and one image copied into the other class. Returns the planted groups."""
    source = get_plugins().datasets.create("synthetic", count=2 * per_class, size=96, seed=seed)
    images = [source.load(s)[0] for s in source.samples(None)]
    groups: list[set[str]] = []
    for folder in ("no", "yes"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        folder = ("no", "yes")[index % 2]
        name = f"img_{index:02d}.png"
        Image.fromarray(image).save(root / folder / name)
        if index < 8:  # four groups per class: a copy, plus a rescaled copy for every other one
            members = {f"{folder}/{name}"}
            shutil.copyfile(root / folder / name, root / folder / f"img_{index:02d}_copy.png")
            members.add(f"{folder}/img_{index:02d}_copy.png")
            if index % 4 < 2:
                Image.fromarray(image).resize((72, 72)).save(root / folder / f"img_{index:02d}_small.png")
                members.add(f"{folder}/img_{index:02d}_small.png")
            groups.append(members)
    shutil.copyfile(root / "no" / "img_10.png", root / "yes" / "img_10_moved.png")  # a cross-label pair
    groups.append({"no/img_10.png", "yes/img_10_moved.png"})
    return groups


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, list[set[str]]]:
    root = tmp_path_factory.mktemp("grouped")
    return root, _plant_groups(root)


@pytest.fixture
def cache(tmp_path) -> HashCache:
    return HashCache(tmp_path / "cache")


def _side_of(split: Split) -> dict[str, str]:
    return {key: side for side in SIDES for key in getattr(split, side)}


def test_split_keeps_groups_whole_and_stratifies(planted, cache):
    root, groups = planted
    split = make_split("brain-mri", root, val=0.2, test=0.2, seed=1, cache=cache)
    samples = get_dataset("brain-mri").samples(root)
    side = _side_of(split)
    assert sorted(side) == sorted(s.key for s in samples)  # every image on exactly one side
    assert sum(len(getattr(split, s)) for s in SIDES) == len(samples)
    for group in groups:
        assert len({side[k] for k in group}) == 1, group
    labels = {s.key: s.label for s in samples}
    for name, fraction in (("val", 0.2), ("test", 0.2)):
        per_class = Counter(labels[k] for k in getattr(split, name))
        for label, total in Counter(labels.values()).items():
            assert abs(per_class[label] - fraction * total) <= 3, (name, label, per_class)
    assert split.dataset == "brain-mri" and split.seed == 1 and split.threshold is not None
    assert split.dlmi_version == dlmi.__version__


def test_cross_label_groups_go_to_train_only(planted, cache):
    root, _ = planted
    moved = ["no/img_10.png", "yes/img_10_moved.png"]
    for seed in range(4):
        split = make_split("brain-mri", root, seed=seed, cache=cache)
        assert set(moved) <= set(split.train)
        assert split.cross_label == [moved]
        kfold = make_split("brain-mri", root, folds=3, seed=seed, cache=cache)
        assert all(set(moved) <= set(fold["train"]) for fold in kfold.folds)
        assert not set(moved) & set(kfold.test)


def test_split_is_reproducible_and_the_seed_matters(planted, cache):
    root, _ = planted
    first = make_split("brain-mri", root, seed=7, cache=cache)
    again = make_split("brain-mri", root, seed=7, cache=cache)
    other = make_split("brain-mri", root, seed=8, cache=cache)
    assert first.to_json() == again.to_json()
    assert (first.val, first.test) != (other.val, other.test)


def test_k_fold_partitions_the_non_test_images(planted, cache):
    root, groups = planted
    split = make_split("brain-mri", root, folds=4, test=0.2, seed=3, cache=cache)
    assert len(split.folds) == 4 and split.val == []
    development = set(split.train)
    assert not development & set(split.test)
    vals = [set(f["val"]) for f in split.folds]
    assert set().union(*vals) | {k for g in split.cross_label for k in g} == development
    assert sum(len(v) for v in vals) == len(set().union(*vals))  # the folds' val parts are disjoint
    for fold, val in zip(split.folds, vals, strict=True):
        assert set(fold["train"]) == development - val
        for group in groups:
            inside = {k in val for k in group}
            assert len(inside) == 1, (group, "straddles a fold")
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 3
    assert [s.key for s in split_samples(split, get_dataset("brain-mri").samples(root), "val", fold=2)] == \
        split.folds[2]["val"]


def test_save_and_load_round_trip(planted, cache, tmp_path):
    root, _ = planted
    split = make_split("brain-mri", root, folds=3, seed=2, cache=cache)
    path = save_split(split, tmp_path / "runs" / "split.json")
    data = json.loads(path.read_text())
    for field in ("dataset", "seed", "threshold", "dlmi_version", "train", "val", "test", "folds"):
        assert field in data
    assert load_split(path) == split
    assert Split.from_json(split.to_json()) == split


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON (line 1"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"train": []}', 'missing "dataset"'),
        ('{"dataset": "busi"}', 'missing "train"'),
        ('{"dataset": "busi", "train": "a.png"}', '"train" must be a list'),
        ('{"dataset": "busi", "train": [], "folds": [3]}', '"folds" must be a list'),
        ('{"dataset": "busi", "train": [], "seed": "x"}', '"seed" must be a whole number'),
    ],
)
def test_load_split_rejects_a_bad_file_in_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DlmiError) as caught:
        load_split(path)
    text = str(caught.value)
    assert message in text and str(path) in text and "\n" not in text


def test_load_split_missing_file(tmp_path):
    with pytest.raises(DlmiError, match="split file not found"):
        load_split(tmp_path / "absent.json")


def test_split_samples_names_missing_keys_and_checks_folds(planted):
    root, _ = planted
    samples = get_dataset("brain-mri").samples(root)
    split = Split(dataset="brain-mri", seed=None, threshold=None, dlmi_version="x",
                  train=["no/img_00.png", "no/gone.png"], val=[], test=["yes/img_01.png"])
    with pytest.raises(DlmiError, match="'no/gone.png'"):
        split_samples(split, samples, "train")
    assert [s.key for s in split_samples(split, samples, "test")] == ["yes/img_01.png"]
    with pytest.raises(DlmiError, match="has no folds"):
        split_samples(split, samples, "test", fold=0)
    with pytest.raises(DlmiError, match="unknown split side"):
        split_samples(split, samples, "holdout")


def test_bad_fractions_are_user_errors(planted, cache):
    root, _ = planted
    with pytest.raises(DlmiError, match="leaves nothing to train"):
        make_split("brain-mri", root, val=0.5, test=0.5, cache=cache)
    with pytest.raises(DlmiError, match="at least 2 folds"):
        make_split("brain-mri", root, folds=1, cache=cache)


def test_check_split_flags_a_hand_made_leaky_split(planted, cache):
    root, _ = planted
    made = make_split("brain-mri", root, seed=0, cache=cache)
    assert check_split(made, root, cache=cache).ok
    hand = Split(dataset="brain-mri", seed=None, threshold=None, dlmi_version="by hand",
                 train=["no/img_00.png", "no/img_02.png", "yes/img_03.png"],
                 val=["no/img_00_small.png", "no/img_04.png"],
                 test=["no/img_00_copy.png", "no/img_02.png"])
    result = check_split(hand, root, cache=cache)
    found = {(leak.first, leak.side_first, leak.second, leak.side_second, leak.kind) for leak in result.leaks}
    assert ("no/img_00.png", "train", "no/img_00_small.png", "val", "near") in found
    assert ("no/img_00.png", "train", "no/img_00_copy.png", "test", "identical-file") in found
    assert ("no/img_00_small.png", "val", "no/img_00_copy.png", "test", "near") in found
    assert ("no/img_02.png", "train", "no/img_02.png", "test", "same-key") in found
    assert len(result.leaks) == 4 and not result.ok


@pytest.mark.slow
def test_split_and_check_split_cli(planted, tmp_path, cli):
    root, _ = planted
    env = {"DLMI_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "split.json"
    done = cli("data", "split", "--dataset", "brain-mri", "--data-dir", str(root), "--out", str(out),
               "--folds", "3", "--seed", "5", env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["dataset"] == "brain-mri" and data["seed"] == 5 and len(data["folds"]) == 3
    checked = cli("data", "check-split", str(out), "--data-dir", str(root), "--json", env=env)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["ok"] is True
    # Move one image of a group to the test side by hand: check-split must fail and name the pair.
    data["test"].append("no/img_00_copy.png")
    for fold in data["folds"]:
        for side in ("train", "val"):
            fold[side] = [k for k in fold[side] if k != "no/img_00_copy.png"]
    data["train"].remove("no/img_00_copy.png")
    (tmp_path / "leaky.json").write_text(json.dumps(data))
    leaky = cli("data", "check-split", str(tmp_path / "leaky.json"), "--data-dir", str(root), env=env)
    assert leaky.returncode == 1
    assert "no/img_00_copy.png (test)" in leaky.stdout and "leaking pairs" in leaky.stdout
    (tmp_path / "broken.json").write_text("{")
    broken = cli("data", "check-split", str(tmp_path / "broken.json"), "--data-dir", str(root), env=env)
    assert broken.returncode == 2 and "broken.json" in broken.stderr and "Traceback" not in broken.stderr


def test_synthetic_split_needs_no_folder(tmp_path):
    source = get_plugins().datasets.create("synthetic", count=60, size=48, seed=0)
    split = make_split("synthetic", None, source=source, cache=HashCache(tmp_path / "cache"))
    assert sum(len(getattr(split, s)) for s in SIDES) == 60  # 20 per class, 15 % of each is 3
    assert Counter(k.split("/")[0] for k in split.test) == Counter({"normal": 3, "benign": 3, "malignant": 3})
    assert check_split(split, None, source=source, cache=HashCache(tmp_path / "cache")).ok


# --- the shared sets ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "dlmi-shared-hash-cache"  # the same folder in both test files
    path.mkdir(exist_ok=True)
    return path


def _random_file_split(keys: list[str], seed: int = 0) -> Split:
    keys = list(keys)
    random.Random(seed).shuffle(keys)
    cut_val, cut_test = int(0.7 * len(keys)), int(0.85 * len(keys))
    return Split(dataset="brain-mri", seed=seed, threshold=None, dlmi_version="by hand",
                 train=keys[:cut_val], val=keys[cut_val:cut_test], test=keys[cut_test:])


@pytest.mark.slow
def test_brain_mri_random_split_leaks_and_dlmis_does_not(brain_mri_dir, shared_cache, tmp_path, cli):
    cache = HashCache(shared_cache)
    keys = [s.key for s in get_dataset("brain-mri").samples(brain_mri_dir)]
    random_split = _random_file_split(keys)
    leaks = check_split(random_split, brain_mri_dir, cache=cache).leaks
    assert leaks and any(leak.kind == "identical-file" for leak in leaks)
    ours = make_split("brain-mri", brain_mri_dir, cache=cache)
    assert check_split(ours, brain_mri_dir, cache=cache).ok
    env = {"DLMI_CACHE_DIR": str(shared_cache)}
    save_split(random_split, tmp_path / "random.json")
    flagged = cli("data", "check-split", str(tmp_path / "random.json"), "--data-dir", str(brain_mri_dir),
                  env=env)
    assert flagged.returncode == 1 and "leak:" in flagged.stdout
    made = cli("data", "split", "--dataset", "brain-mri", "--data-dir", str(brain_mri_dir), "--out",
               str(tmp_path / "ours.json"), "--folds", "5", env=env)
    assert made.returncode == 0, made.stderr
    passed = cli("data", "check-split", str(tmp_path / "ours.json"), "--data-dir", str(brain_mri_dir),
                 env=env)
    assert passed.returncode == 0, passed.stdout + passed.stderr


@pytest.mark.slow
def test_busi_split_keeps_cross_label_images_out_of_evaluation(busi_dir, shared_cache):
    cache = HashCache(shared_cache)
    split = make_split("busi", busi_dir, cache=cache)
    contested = {k for g in split.cross_label for k in g}
    assert {"benign/benign (433).png", "malignant/malignant (145).png"} <= contested
    assert contested <= set(split.train)
    assert check_split(split, busi_dir, cache=cache).ok
    labels = Counter(k.split("/")[0] for k in split.test)
    assert set(labels) == {"normal", "benign", "malignant"}
    assert np.isclose(len(split.test) / 702, 0.15, atol=0.03)
