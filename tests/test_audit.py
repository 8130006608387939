"""The duplicate audit: recall and precision on planted duplicates and look-alikes, cross-label groups,
mask conflicts, the hash cache, the CLI, and the shared sets."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dlmi.errors import DlmiError
from dlmi.plugins import get_dataset, get_plugins
from dlmi.splits.audit import audit_dataset, check_threshold
from dlmi.splits.cache import HashCache
from dlmi.splits.hashing import DEFAULT_THRESHOLD, image_hashes, near_pairs

BASE_SIDE = 192


# --- planted duplicates ------------------------------------------------------------------------------


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("L"))


def _rescale(image: np.ndarray, factor: float) -> np.ndarray:
    height, width = image.shape
    size = (round(width * factor), round(height * factor))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _crop(image: np.ndarray, top: float, left: float, bottom: float, right: float) -> np.ndarray:
    height, width = image.shape
    return image[round(top * height): height - round(bottom * height),
                 round(left * width): width - round(right * width)].copy()


def _caliper(image: np.ndarray) -> np.ndarray:
    """Two '+' calipers joined by a dotted line, and a text label, drawn in white."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    height, width = image.shape
    ends = [(round(0.32 * width), round(0.42 * height)), (round(0.62 * width), round(0.55 * height))]
    arm = max(3, width // 40)
    for x, y in ends:
        draw.line([(x - arm, y), (x + arm, y)], fill=255)
        draw.line([(x, y - arm), (x, y + arm)], fill=255)
    for t in np.linspace(0, 1, 12):
        draw.point((round(ends[0][0] + t * (ends[1][0] - ends[0][0])),
                    round(ends[0][1] + t * (ends[1][1] - ends[0][1]))), fill=255)
    draw.text((round(0.05 * width), round(0.85 * height)), "LT 1.2cm", fill=255)
    return np.asarray(picture)


# Each planted duplicate: how it is made from its original, and the file suffix it is saved with.
PLANTED = {
    "copy": (None, ".png"),
    "jpeg": (lambda a: _jpeg(a, 60), ".jpg"),
    "smaller": (lambda a: _rescale(a, 0.6), ".png"),
    "larger": (lambda a: _rescale(a, 1.5), ".png"),
    "crop": (lambda a: _crop(a, 0.06, 0.0, 0.0, 0.05), ".png"),
    "centre-crop": (lambda a: _crop(a, 0.04, 0.04, 0.04, 0.04), ".png"),
    "caliper": (_caliper, ".png"),
    "crop+caliper": (lambda a: _crop(_caliper(a), 0.0, 0.05, 0.04, 0.0), ".png"),
}


def plant_dataset(root: Path, originals: int = 16, seed: int = 0) -> set[frozenset[str]]:
    """Write a brain-MRI-layout folder of generated look-alike images with planted duplicates.

    The originals are the `synthetic` dataset's ultrasound-like images (same layered texture, other
    content); ``len(PLANTED)`` of them get a duplicate each. Two further look-alikes are the left and right
    halves of one image (same texture, no shared content). Returns the planted pairs of keys.
    """
    source = get_plugins().datasets.create("synthetic", count=originals + 1, size=BASE_SIDE, seed=seed)
    samples = source.samples(None)
    for folder in ("no", "yes"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    planted: set[frozenset[str]] = set()
    kinds = list(PLANTED)
    for index, sample in enumerate(samples[:originals]):
        image, _ = source.load(sample)
        folder = ("no", "yes")[index % 2]
        original = root / folder / f"original_{index:02d}.png"
        Image.fromarray(image).save(original)
        if index < len(kinds):
            kind = kinds[index]
            make, suffix = PLANTED[kind]
            duplicate = root / folder / f"dup_{index:02d}_{kind.replace('+', '_')}{suffix}"
            if make is None:
                shutil.copyfile(original, duplicate)
            else:
                Image.fromarray(make(image)).save(duplicate, **({"quality": 92} if suffix == ".jpg" else {}))
            planted.add(frozenset({f"{folder}/{original.name}", f"{folder}/{duplicate.name}"}))
    wide, _ = source.load(samples[originals])
    wide = _rescale(wide, 2.0)
    half = wide.shape[1] // 2
    Image.fromarray(wide[:, :half]).save(root / "no" / "lookalike_left.png")
    Image.fromarray(wide[:, half:]).save(root / "no" / "lookalike_right.png")
    return planted


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, set[frozenset[str]]]:
    root = tmp_path_factory.mktemp("planted")
    return root, plant_dataset(root)


@pytest.fixture
def cache(tmp_path) -> HashCache:
    return HashCache(tmp_path / "cache")


def test_audit_finds_every_planted_duplicate_and_no_look_alike(planted, cache):
    root, truth = planted
    result = audit_dataset("brain-mri", root, cache=cache)
    found = {frozenset({p.first, p.second}) for p in result.pairs}
    recall = len(found & truth) / len(truth)
    precision = len(found & truth) / len(found) if found else 1.0
    missed = sorted(tuple(sorted(p)) for p in truth - found)
    extra = sorted(tuple(sorted(p)) for p in found - truth)
    assert recall == 1.0, f"recall {recall:.2f}; missed {missed}"
    assert precision == 1.0, f"precision {precision:.2f}; wrong pairs {extra}"
    assert len(result.groups) == len(truth) and all(len(g) == 2 for g in result.groups)
    kinds = {frozenset({p.first, p.second}): p.kind for p in result.pairs}
    copy_pair = next(p for p in truth if any("_copy" in k for k in p))
    assert kinds[copy_pair] == "identical-file"
    assert result.cross_label == []  # every planted pair shares its folder


def test_planted_duplicates_sit_well_inside_the_threshold_and_look_alikes_far_outside(planted, cache):
    """Margins, not just the verdict: duplicates at most the threshold minus 2, look-alikes at least 2x it."""
    root, truth = planted
    source = get_dataset("brain-mri")
    samples = source.samples(root)
    hashes = np.stack([image_hashes(source.load(s)[0]) for s in samples])
    keys = [s.key for s in samples]
    distances = {frozenset({keys[m.first], keys[m.second]}): m.distance for m in near_pairs(hashes, 128)}
    worst_duplicate = max(distances[p] for p in truth)
    closest_other = min(d for p, d in distances.items() if p not in truth)
    assert worst_duplicate <= DEFAULT_THRESHOLD - 2, worst_duplicate
    assert closest_other >= 2 * DEFAULT_THRESHOLD, closest_other


def test_hashes_are_cached_by_content(planted, tmp_path):
    root, _ = planted
    cache_dir = tmp_path / "cache"
    first = audit_dataset("brain-mri", root, cache=HashCache(cache_dir))
    assert first.cache_hits <= 1  # only the planted byte-identical copy can hit on a cold cache
    second = audit_dataset("brain-mri", root, cache=HashCache(cache_dir))
    assert second.cache_hits == len(second.keys)
    assert [p.to_json() for p in second.pairs] == [p.to_json() for p in first.pairs]
    # A copy of the folder hits the cache too (the key is the content, not the path) ...
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    third = audit_dataset("brain-mri", moved, cache=HashCache(cache_dir))
    assert third.cache_hits == len(third.keys)
    # ... and an edited file misses it.
    edited = moved / "no" / "original_00.png"
    image = np.asarray(Image.open(edited)).copy()
    image[:8, :8] = 255 - image[:8, :8]
    Image.fromarray(image).save(edited)
    fourth = audit_dataset("brain-mri", moved, cache=HashCache(cache_dir))
    assert fourth.cache_hits == len(fourth.keys) - 1


def test_threshold_out_of_range_is_a_one_line_error():
    with pytest.raises(DlmiError, match="between 0 and 128"):
        check_threshold(129)
    assert check_threshold(None) == DEFAULT_THRESHOLD


# --- cross-label groups and mask conflicts (BUSI layout) ----------------------------------------------


def _busi_like(root: Path) -> None:
    """Generated images in BUSI layout, with a byte-identical pair filed as benign and malignant under
    different masks, and a rescaled benign pair whose masks agree."""
    source = get_plugins().datasets.create("synthetic", count=9, size=128, seed=3)
    for folder in ("normal", "benign", "malignant"):
        (root / folder).mkdir(parents=True)
    images = [source.load(s)[0] for s in source.samples(None)]

    def write(folder: str, name: str, image: np.ndarray, mask: np.ndarray) -> None:
        Image.fromarray(image).save(root / folder / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / folder / f"{name}_mask.png")

    empty = np.zeros((128, 128), dtype=bool)
    left, right = empty.copy(), empty.copy()
    left[40:70, 20:50] = True
    right[60:90, 80:110] = True
    for n in range(3):
        write("normal", f"normal ({n + 1})", images[n], empty)
    write("benign", "benign (1)", images[3], left)
    write("malignant", "malignant (1)", images[3], right)  # same pixels, other label, other lesion
    write("benign", "benign (2)", images[4], left)
    small = np.asarray(Image.fromarray(images[4]).resize((96, 96), Image.Resampling.BILINEAR))
    small_mask = np.asarray(Image.fromarray(left.astype(np.uint8) * 255).resize((96, 96))) > 127
    write("benign", "benign (3)", small, small_mask)  # a rescaled copy, mask agreeing
    write("benign", "benign (4)", images[5], right)
    write("malignant", "malignant (2)", images[6], right)


def test_cross_label_group_and_mask_conflict(tmp_path, cache):
    _busi_like(tmp_path / "busi")
    result = audit_dataset("busi", tmp_path / "busi", cache=cache)
    assert sorted(map(sorted, result.groups)) == [
        ["benign/benign (1).png", "malignant/malignant (1).png"],
        ["benign/benign (2).png", "benign/benign (3).png"],
    ]
    assert result.cross_label == [["benign/benign (1).png", "malignant/malignant (1).png"]]
    assert result.mask_conflicts == [["benign/benign (1).png", "malignant/malignant (1).png"]]
    ious = {frozenset({p.first, p.second}): p.mask_iou for p in result.pairs}
    assert ious[frozenset({"benign/benign (2).png", "benign/benign (3).png"})] > 0.8
    assert ious[frozenset({"benign/benign (1).png", "malignant/malignant (1).png"})] == 0.0


@pytest.mark.slow
def test_audit_cli_json_and_contact_sheet(tmp_path, cli):
    _busi_like(tmp_path / "busi")
    sheet = tmp_path / "groups.png"
    env = {"DLMI_CACHE_DIR": str(tmp_path / "cache")}
    done = cli("data", "audit", "--dataset", "busi", "--data-dir", str(tmp_path / "busi"), "--json",
               "--sheet", str(sheet), env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["threshold"] == DEFAULT_THRESHOLD
    assert report["cross_label"] == [["benign/benign (1).png", "malignant/malignant (1).png"]]
    assert report["mask_conflicts"] == report["cross_label"]
    assert all(not Path(k).is_absolute() and k.count("/") == 1 for g in report["groups"] for k in g)
    with Image.open(sheet) as picture:
        assert picture.mode == "RGB" and picture.width > 128 and picture.height > 2 * 128
    text = cli("data", "audit", "--dataset", "busi", "--data-dir", str(tmp_path / "busi"), "--no-sheet",
               env=env)
    assert text.returncode == 0, text.stderr
    assert "1 groups cross labels" in text.stdout and "benign/benign (1).png [benign]" in text.stdout
    bad = cli("data", "audit", "--dataset", "busi", "--data-dir", str(tmp_path / "nowhere"), "--no-sheet",
              env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nowhere" in bad.stderr


# --- the shared sets --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One hash cache for every test on the shared sets in this session."""
    path = tmp_path_factory.getbasetemp() / "dlmi-shared-hash-cache"  # the same folder in both test files
    path.mkdir(exist_ok=True)
    return path


def _check_audit_structure(result, data_dir: Path) -> None:
    members = [k for g in result.groups for k in g]
    assert len(members) == len(set(members)), "groups must be disjoint"
    grouped = set(members)
    for pair in result.pairs:
        assert pair.distance <= result.threshold
        assert pair.first in grouped and pair.second in grouped
        if pair.kind == "identical-file":
            assert (data_dir / pair.first).read_bytes() == (data_dir / pair.second).read_bytes()
    for group in result.cross_label:
        assert len({result.labels[k] for k in group}) > 1


@pytest.mark.slow
def test_audit_busi(busi_dir, shared_cache):
    result = audit_dataset("busi", busi_dir, cache=HashCache(shared_cache))
    _check_audit_structure(result, busi_dir)
    # The data README's known case: byte-identical under two labels, with different masks (their IoU,
    # about 0.77, is above the conflict level: the outlines differ but mark the same lesion).
    known = ["benign/benign (433).png", "malignant/malignant (145).png"]
    group = next(g for g in result.groups if set(known) <= set(g))
    assert group in result.cross_label
    pair = next(p for p in result.pairs if {p.first, p.second} == set(known))
    assert pair.kind == "identical-file" and 0.5 < pair.mask_iou < 0.95
    # A normal image whose duplicate is filed as benign with a lesion mask: both a label and a mask conflict.
    assert any(len({result.labels[k] for k in g}) > 1 and "normal" in {result.labels[k] for k in g}
               for g in result.mask_conflicts)


@pytest.mark.slow
def test_audit_brain_mri(brain_mri_dir, shared_cache):
    result = audit_dataset("brain-mri", brain_mri_dir, cache=HashCache(shared_cache))
    _check_audit_structure(result, brain_mri_dir)
    assert not result.has_masks and result.mask_conflicts == []
    identical = [p for p in result.pairs if p.kind == "identical-file"]
    assert identical, "the README lists byte-identical files in brain_mri"
    assert any(p.kind == "near" for p in result.pairs), "and re-encoded near duplicates"
