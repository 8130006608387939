"""The decoded-sample caches: disk entries keyed by content, atomic under concurrent writers, augmentation
still drawn per epoch, and training results independent of the cache and of the data workers."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlmi.datasets.loader import ImageDataset
from dlmi.plugins import get_dataset
from dlmi.training import TrainConfig, train_segmenter
from dlmi.training.data.augment import JointAugment
from dlmi.training.data.cache import DiskCachedSource, ResizedDiskCache, memory_bytes, plan_cache
from dlmi.training.data.sampling import EpochDataset

CLASSES = ("normal", "benign", "malignant")


def write_busi_folder(root: Path, per_class: int = 4, size: int = 40) -> Path:
    """A BUSI-layout folder of real PNGs (some lesions with two mask files)."""
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(10 * label + i)
            image = rng.integers(0, 255, (size, size + 6), dtype=np.uint8)
            stem = f"{name} ({i + 1})"
            Image.fromarray(image).save(root / name / f"{stem}.png")
            mask = np.zeros((size, size + 6), dtype=np.uint8)
            if label:
                mask[5:15, 8:20] = 255
            Image.fromarray(mask).save(root / name / f"{stem}_mask.png")
            if label == 2 and i == 0:
                second = np.zeros_like(mask)
                second[25:30, 25:35] = 255
                Image.fromarray(second).save(root / name / f"{stem}_mask_1.png")
    return root


@pytest.fixture
def busi_like(tmp_path: Path) -> Path:
    return write_busi_folder(tmp_path / "busi")


def busi_samples(folder: Path):
    source = get_dataset("busi")
    return source, source.samples(folder)


def test_disk_cache_returns_the_decoded_arrays_and_hits_later(busi_like: Path, tmp_path: Path) -> None:
    source, samples = busi_samples(busi_like)
    assert any(len(s.mask_paths) == 2 for s in samples)
    plain = ImageDataset(source, samples, 24)
    first = ResizedDiskCache(tmp_path / "cache")
    cached = ImageDataset(DiskCachedSource(source, 24, first), samples, 24)
    for i in range(len(samples)):
        image, mask = cached.load_resized(i)
        expected_image, expected_mask = plain.load_resized(i)
        assert image.dtype == np.uint8 and mask.dtype == bool
        assert np.array_equal(image, expected_image) and np.array_equal(mask, expected_mask)
    assert (first.hits, first.misses) == (0, len(samples))
    entries = list((tmp_path / "cache" / "resized").rglob("*.npy"))
    assert len(entries) == len(samples)
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    later = ResizedDiskCache(tmp_path / "cache")  # a later run: every sample from disk, identical
    again = ImageDataset(DiskCachedSource(source, 24, later), samples, 24)
    for i in range(len(samples)):
        pairs = zip(again.load_resized(i), plain.load_resized(i), strict=True)
        assert all(np.array_equal(a, b) for a, b in pairs)
    assert (later.hits, later.misses) == (len(samples), 0)


def test_disk_key_follows_content_size_and_masks(busi_like: Path, tmp_path: Path) -> None:
    source, samples = busi_samples(busi_like)
    cache = ResizedDiskCache(tmp_path / "cache")
    sample = next(s for s in samples if s.key.startswith("benign/"))
    key = cache.key(source, sample, 24)
    assert key == cache.key(source, sample, 24)
    assert key != cache.key(source, sample, 32)
    # A byte-identical copy elsewhere has the same key (content, not path).
    copy = tmp_path / "copy"
    shutil.copytree(busi_like, copy)
    copied = next(s for s in source.samples(copy) if s.key == sample.key)
    assert cache.key(source, copied, 24) == key
    # Editing the mask file changes the key.
    mask_path = copied.mask_paths[0]
    edited = np.asarray(Image.open(mask_path)).copy()
    edited[0, 0] = 255
    Image.fromarray(edited).save(mask_path)
    os.utime(mask_path, ns=(1, 1))
    assert cache.key(source, copied, 24) != key


def test_unwritable_cache_folder_is_skipped(busi_like: Path, tmp_path: Path) -> None:
    source, samples = busi_samples(busi_like)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    cache = ResizedDiskCache(blocker)
    dataset = ImageDataset(DiskCachedSource(source, 16, cache), samples, 16)
    image, _ = dataset.load_resized(0)
    assert image.shape == (16, 16) and cache.writable is False


def _fill(args: tuple[str, str, int]) -> int:
    folder, cache_dir, size = args
    source, samples = busi_samples(Path(folder))
    dataset = ImageDataset(DiskCachedSource(source, size, ResizedDiskCache(Path(cache_dir))), samples, size)
    for _ in range(3):
        for i in range(len(samples)):
            dataset.load_resized(i)
    return len(samples)


def test_concurrent_writers_leave_whole_entries(busi_like: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        counts = pool.map(_fill, [(str(busi_like), str(cache_dir), 20)] * 3)
    entries = list((cache_dir / "resized").rglob("*.npy"))
    assert len(entries) == counts[0]
    assert not list(cache_dir.rglob("*.tmp"))
    for entry in entries:
        planes = np.load(entry, allow_pickle=False)
        assert planes.shape == (2, 20, 20) and planes.dtype == np.uint8


def test_memory_plan() -> None:
    assert memory_bytes(702, 512) == 702 * 512 * 512 * 2  # BUSI at 512 px: 368 MB (images + masks)
    auto = plan_cache("auto", 702, 512)
    assert auto.memory and not auto.disk and round(auto.estimate_bytes / 1e6) == 368
    assert not plan_cache("auto", 702, 512, processes_per_machine=10**6).memory  # does not fit: disk
    assert plan_cache("auto", 702, 512, processes_per_machine=10**6).disk
    assert (plan_cache("none", 10, 8).memory, plan_cache("none", 10, 8).disk) == (False, False)
    assert (plan_cache("memory", 10, 8).memory, plan_cache("memory", 10, 8).disk) == (True, False)
    assert (plan_cache("disk", 10, 8).memory, plan_cache("disk", 10, 8).disk) == (False, True)


def test_augmentation_is_drawn_per_epoch_after_the_cache(busi_like: Path) -> None:
    source, samples = busi_samples(busi_like)
    dataset = ImageDataset(source, samples, 32, transform=JointAugment(), cache=True)
    items = EpochDataset(dataset, seed=0)
    first = items[(1, 4)]["image"]
    assert torch.equal(items[(1, 4)]["image"], first)  # same (seed, epoch, index): same draw
    items[(1, 2)]
    assert torch.equal(items[(1, 4)]["image"], first)  # whatever was loaded in between
    assert not torch.equal(items[(2, 4)]["image"], first)  # a new epoch: a new draw, from the cached pixels
    assert not torch.equal(EpochDataset(dataset, seed=1)[(1, 4)]["image"], first)


@pytest.mark.slow
def test_cache_and_workers_do_not_change_the_run(busi_like: Path, tmp_path: Path, monkeypatch) -> None:
    """Same seed → same weights whether samples come from memory, disk or files, and with 0 or 1 workers."""
    monkeypatch.setenv("DLMI_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def run(name: str, **changes) -> dict[str, torch.Tensor]:
            config = TrainConfig(task="segmentation", dataset="busi", data_dir=str(busi_like),
                                 out=str(tmp_path / name), image_size=32, epochs=2, batch_size=4,
                                 base_channels=4, quiet=True, device="cpu", augment=True, seed=1, **changes)
            return torch.load(train_segmenter(config) / "last.pt", weights_only=True)["model"]

        reference = run("none", cache="none")
        variants = {"memory": run("memory", cache="memory"), "disk": run("disk", cache="disk"),
                    "disk-again": run("disk-again", cache="disk"),
                    "workers": run("workers", cache="memory", workers=1)}
    finally:
        torch.set_num_threads(threads)
    for name, weights in variants.items():
        assert all(torch.equal(weights[k], reference[k]) for k in reference), name
    runtime = json.loads((tmp_path / "disk" / "runtime.json").read_text())
    assert runtime["cache"]["disk"] is True and runtime["cache"]["memory"] is False
    split = json.loads((tmp_path / "disk" / "split.json").read_text())
    loaded = len(split["train"]) + len(split["val"])  # the test side is never read by training
    assert len(list((tmp_path / "cache" / "resized").rglob("*.npy"))) == loaded


# --- one mechanism for every cache (issue 18): one root, content keys, atomic entries, corrupt ones rebuilt


def _damage(path: Path, how: str) -> None:
    """Truncate ``path`` to half, or flip a byte near its end (same size: only a checksum can tell)."""
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[-40] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_resized_entry_is_rebuilt_with_a_warning(busi_like: Path, tmp_path: Path, capsys,
                                                         how: str) -> None:
    source, samples = busi_samples(busi_like)
    plain = ImageDataset(source, samples, 24)
    first = ResizedDiskCache(tmp_path / "cache")
    filled = ImageDataset(DiskCachedSource(source, 24, first), samples, 24)
    for i in range(len(samples)):
        filled.load_resized(i)
    damaged = first.path(first.key(source, samples[3], 24))
    _damage(damaged, how)
    capsys.readouterr()
    later = ResizedDiskCache(tmp_path / "cache")
    again = ImageDataset(DiskCachedSource(source, 24, later), samples, 24)
    for i in range(len(samples)):
        pairs = zip(again.load_resized(i), plain.load_resized(i), strict=True)
        assert all(np.array_equal(a, b) for a, b in pairs), i
    err = capsys.readouterr().err
    assert "warning" in err and str(damaged) in err and "Traceback" not in err
    assert (later.hits, later.misses) == (len(samples) - 1, 1)
    rebuilt = ResizedDiskCache(tmp_path / "cache")  # the entry was written whole again
    ImageDataset(DiskCachedSource(source, 24, rebuilt), samples, 24).load_resized(3)
    assert rebuilt.hits == 1


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_hash_entry_is_rebuilt_with_a_warning(busi_like: Path, tmp_path: Path, capsys,
                                                      how: str) -> None:
    from dlmi.splits.audit import audit_dataset, hash_samples
    from dlmi.splits.cache import HashCache

    source, samples = busi_samples(busi_like)
    fresh = hash_samples(source, samples, cache=HashCache(tmp_path / "fresh"))
    hash_samples(source, samples, cache=HashCache(tmp_path / "cache"))
    entries = sorted((tmp_path / "cache").rglob("*.npz"))
    assert len(entries) == len(samples)
    _damage(entries[0], how)
    capsys.readouterr()
    again = hash_samples(source, samples, cache=HashCache(tmp_path / "cache"))
    err = capsys.readouterr().err
    assert "warning" in err and str(entries[0]) in err
    assert again.cache_hits == len(samples) - 1
    assert np.array_equal(again.hashes, fresh.hashes) and again.pixels == fresh.pixels
    audit = audit_dataset("busi", busi_like, cache=HashCache(tmp_path / "cache"))
    assert audit.cache_hits == len(samples)  # rebuilt whole


def test_corrupt_resized_copy_is_rebuilt_with_a_warning(busi_like: Path, tmp_path: Path, capsys) -> None:
    from dlmi.experiments.resized import MARKER, resized_copy

    source, original = busi_samples(busi_like)
    copy = resized_copy("busi", busi_like, 16, tmp_path / "cache")
    expected = [ImageDataset(source, original, 16)[i] for i in range(len(original))]

    def read_back() -> None:
        again = ImageDataset(source, source.samples(copy), 16)
        for i, item in enumerate(expected):
            assert torch.equal(again[i]["image"], item["image"])
            assert torch.equal(again[i]["mask"], item["mask"])

    one = copy / "benign" / "benign (2).png"
    _damage(one, "truncate")
    capsys.readouterr()
    assert resized_copy("busi", busi_like, 16, tmp_path / "cache") == copy
    err = capsys.readouterr().err
    assert "warning" in err and str(one) in err
    read_back()
    (copy / MARKER).write_text('{"key": ')  # a half-written marker
    assert resized_copy("busi", busi_like, 16, tmp_path / "cache") == copy
    assert "warning" in capsys.readouterr().err
    read_back()
    # An edited source image is new content: the copy is remade (no warning: stale, not corrupt).
    edited = busi_like / "normal" / "normal (1).png"
    Image.fromarray(np.full((40, 46), 7, dtype=np.uint8)).save(edited)
    resized_copy("busi", busi_like, 16, tmp_path / "cache")
    redone = ImageDataset(source, source.samples(copy), 16)
    key = next(i for i, s in enumerate(source.samples(copy)) if s.key == "normal/normal (1).png")
    assert torch.all(redone[key]["image"] == redone[key]["image"].flatten()[0])
    assert not list((tmp_path / "cache").glob(".*"))  # no build folder left behind


def test_cache_root_setting_is_honoured_by_all_three(busi_like: Path, tmp_path: Path, monkeypatch) -> None:
    from dlmi.cache import cache_root
    from dlmi.experiments.profiles import get_profile
    from dlmi.experiments.reproduction import Reproduction
    from dlmi.experiments.resized import resized_copy
    from dlmi.splits.audit import hash_samples
    from dlmi.splits.cache import HashCache
    from dlmi.training.data.cache import CachePlan, cached_source

    root = tmp_path / "root"
    monkeypatch.setenv("DLMI_CACHE_DIR", str(root))
    assert cache_root() == root
    source, samples = busi_samples(busi_like)
    ImageDataset(cached_source(source, 16, CachePlan(memory=False, disk=True, estimate_bytes=0)),
                 samples, 16).load_resized(0)
    hash_samples(source, samples[:2], cache=HashCache())
    copy = resized_copy("busi", busi_like, 16)
    assert len(list((root / "resized").rglob("*.npy"))) == 1
    assert len(list((root / "image-hashes").rglob("*.npz"))) == 2
    assert copy.is_relative_to(root) and (copy / "benign" / "benign (1).png").is_file()
    reproduction = Reproduction(tmp_path / "data", get_profile("cpu"), tmp_path / "out", tmp_path / "res")
    assert reproduction.cache_dir.is_relative_to(root)


def test_unwritable_cache_root_warns_once_and_each_cache_goes_on(busi_like: Path, tmp_path: Path, capsys,
                                                                 monkeypatch) -> None:
    from dlmi.errors import DlmiError
    from dlmi.experiments.resized import resized_copy
    from dlmi.splits.audit import hash_samples
    from dlmi.splits.cache import HashCache

    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache root would go")
    monkeypatch.setenv("DLMI_CACHE_DIR", str(blocker))
    source, samples = busi_samples(busi_like)
    fresh = hash_samples(source, samples, cache=HashCache(tmp_path / "fresh"))
    capsys.readouterr()
    hashed = hash_samples(source, samples, cache=HashCache(), workers=1)
    assert np.array_equal(hashed.hashes, fresh.hashes)
    cache = ResizedDiskCache()
    dataset = ImageDataset(DiskCachedSource(source, 16, cache), samples, 16)
    for i in range(len(samples)):
        dataset.load_resized(i)
    err = capsys.readouterr().err
    assert err.count("warning") == 2 and err.count("cannot be written") == 2 and str(blocker) in err
    with pytest.raises(DlmiError, match="resized copy") as failure:
        resized_copy("busi", busi_like, 16)
    assert str(blocker) in str(failure.value) and "\n" not in str(failure.value)
