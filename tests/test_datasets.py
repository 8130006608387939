"""The built-in datasets on real files (shared data, skipped where absent) and generated data (always)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlmi.datasets.base import DatasetSource, FileDataset, Sample, list_samples, load_sample
from dlmi.datasets.loader import ImageDataset
from dlmi.datasets.synthetic import SyntheticDataset
from dlmi.errors import DlmiError
from dlmi.imageio import image_size, read_mask
from dlmi.plugins import get_dataset, get_plugins

BUSI_COUNTS = {"normal": 120, "benign": 393, "malignant": 189}
BRAIN_MRI_COUNTS = {"no": 88, "yes": 139}


def _per_class(source: DatasetSource, samples) -> dict[str, int]:
    return dict(Counter(source.classes[s.label] for s in samples))


def test_builtins_follow_the_protocol():
    for name in ("busi", "brain-mri", "synthetic"):
        source = get_dataset(name)
        assert isinstance(source, DatasetSource)
        assert source.name == name
        assert source.normal_class in source.classes
        assert get_plugins().datasets.get(name).source == "built-in"



class _Returning(SyntheticDataset):
    """A synthetic source whose ``load`` returns what a test sets (to break the protocol)."""

    name = "returning"

    def __init__(self, result) -> None:
        super().__init__(count=3, size=16)
        self.result = result

    def load(self, sample):
        return self.result(*super().load(sample))


@pytest.mark.parametrize(("result", "cause"), [
    (lambda image, mask: (image, mask[:8]), "the mask is 16x8 but the image is 16x16"),
    (lambda image, mask: (image, mask[:, :, None]), r"a mask of shape \(16, 16, 1\)"),
    (lambda image, mask: (image / 255.0, mask), "image of dtype float64; expected uint8"),
    (lambda image, mask: (image[None], mask), r"image of shape \(1, 16, 16\)"),
    (lambda image, mask: (image, mask.astype(np.uint8) * 255), "mask of dtype uint8; expected bool"),
    (lambda image, mask: (image.tolist(), mask), "image of type list"),
    (lambda image, mask: image, "not an \\(image, mask\\) pair"),
])
def test_load_sample_holds_every_source_to_the_protocol(result, cause):
    source = _Returning(result)
    sample = source.samples(None)[1]
    with pytest.raises(DlmiError, match=cause) as info:
        load_sample(source, sample)
    assert str(info.value).startswith(f"dataset 'returning' cannot load {sample.key}: ")
    assert "\n" not in str(info.value)
    image, mask = load_sample(SyntheticDataset(count=3, size=16), sample)  # the source itself is fine
    assert image.dtype == np.uint8 and mask.dtype == bool and image.shape == mask.shape == (16, 16)


class _Listing(SyntheticDataset):
    """A synthetic source whose ``samples`` returns what a test makes of the real list."""

    name = "listing"

    def __init__(self, listed) -> None:
        super().__init__(count=3, size=16)
        self.listed = listed

    def samples(self, data_dir=None):
        return self.listed(super().samples(data_dir))


def _raise(found):
    raise ConnectionError("the PACS is down")


@pytest.mark.parametrize(("listed", "cause"), [
    (lambda found: [*found, found[0]], "sample normal/synthetic_0000.png is listed twice"),
    (lambda found: [Sample(found[0].key, 3), *found[1:]], "sample normal/synthetic_0000.png has label 3"),
    (lambda found: [Sample(found[0].key, -1), *found[1:]], "has label -1"),
    (lambda found: [Sample(found[0].key, True), *found[1:]], "has label True"),
    (lambda found: [*found, "benign/x.png"], "listed a str, not a Sample"),
    (lambda found: iter(found), "returned list_iterator, not a list"),
    (_raise, "cannot list its samples: ConnectionError: the PACS is down"),
])
def test_list_samples_holds_every_source_to_the_protocol(listed, cause):
    with pytest.raises(DlmiError, match=cause) as info:
        list_samples(_Listing(listed), None)
    assert str(info.value).startswith("dataset 'listing'") and "\n" not in str(info.value)
    assert [s.label for s in list_samples(_Listing(lambda found: found), None)] == [0, 1, 2]


def test_the_disk_cache_checks_what_the_source_loads(tmp_path):
    from dlmi.training.data.cache import DiskCachedSource, ResizedDiskCache

    class WideMasks(FileDataset):
        name = "wide-masks"
        has_masks = True

        def load(self, sample):
            image, mask = super().load(sample)
            return image, np.zeros((image.shape[0], image.shape[1] + 4), bool)

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(image)
    cached = DiskCachedSource(WideMasks(), 16, ResizedDiskCache(tmp_path / "cache"))
    with pytest.raises(DlmiError, match=r"the mask is 14x12 but the image is 10x12"):
        load_sample(cached, Sample("a/a.png", 0, image_path=image))

# ---- BUSI -----------------------------------------------------------------------------------------------


def test_busi_counts_keys_and_masks(busi_dir):
    source = get_dataset("busi")
    assert source.classes == ("normal", "benign", "malignant") and source.normal_class == "normal"
    samples = source.samples(busi_dir)
    assert len(samples) == 702
    assert _per_class(source, samples) == BUSI_COUNTS
    keys = [s.key for s in samples]
    assert len(set(keys)) == len(keys)
    for sample in samples:
        class_name, file_name = sample.key.split("/")
        assert class_name == source.classes[sample.label]
        assert sample.image_path == busi_dir / class_name / file_name
        assert "_mask" not in file_name
        assert sample.mask_paths, sample.key  # BUSI ships a mask (black for normal) with every image
    assert sum(len(s.mask_paths) for s in samples) == 719


def test_busi_extra_masks_are_or_merged(busi_dir):
    source = get_dataset("busi")
    samples = {s.key: s for s in source.samples(busi_dir)}
    sample = samples["benign/benign (100).png"]
    assert [p.name for p in sample.mask_paths] == ["benign (100)_mask.png", "benign (100)_mask_1.png"]
    image, mask = source.load(sample)
    first, second = (read_mask([p]) for p in sample.mask_paths)
    assert mask.shape == image.shape
    assert (second & ~first).any()  # the extra mask really adds lesion pixels
    np.testing.assert_array_equal(mask, first | second)
    assert [p.name for p in samples["benign/benign (195).png"].mask_paths][-1] == "benign (195)_mask_2.png"


def test_busi_normal_masks_are_empty_and_lesion_masks_are_not(busi_dir):
    source = get_dataset("busi")
    samples = source.samples(busi_dir)
    for class_name in ("normal", "benign", "malignant"):
        sample = next(s for s in samples if s.key.startswith(f"{class_name}/"))
        image, mask = source.load(sample)
        assert image.dtype == np.uint8 and image.ndim == 2
        assert mask.dtype == bool and mask.shape == image.shape
        assert mask.any() == (class_name != "normal")


# ---- brain MRI ------------------------------------------------------------------------------------------


def test_brain_mri_counts_and_mixed_files(brain_mri_dir):
    source = get_dataset("brain-mri")
    assert source.classes == ("no", "yes") and source.normal_class == "no" and not source.has_masks
    samples = source.samples(brain_mri_dir)
    assert len(samples) == 227
    assert _per_class(source, samples) == BRAIN_MRI_COUNTS
    suffixes = {s.image_path.suffix for s in samples}
    assert {".jpg", ".JPG"} <= suffixes  # letter case of the suffix does not matter
    assert all(s.mask_paths == () for s in samples)


def test_brain_mri_reads_every_colour_mode(brain_mri_dir):
    from PIL import Image

    source = get_dataset("brain-mri")
    by_mode: dict[str, object] = {}
    for sample in source.samples(brain_mri_dir):
        with Image.open(sample.image_path) as image:
            by_mode.setdefault(image.mode, sample)
    assert {"L", "RGB", "RGBA", "P"} <= set(by_mode)
    for sample in by_mode.values():
        image, mask = source.load(sample)
        assert mask is None
        assert image.dtype == np.uint8 and image.ndim == 2
        assert image.shape[::-1] == image_size(sample.image_path)
        assert image.std() > 5  # real content, not a black frame


# ---- synthetic ------------------------------------------------------------------------------------------


def test_synthetic_defaults_and_keys():
    source = get_dataset("synthetic")
    assert not source.needs_data_dir and source.has_masks
    assert source.classes == ("normal", "benign", "malignant")
    samples = source.samples(None)
    assert len(samples) == 300
    assert _per_class(source, samples) == {"normal": 100, "benign": 100, "malignant": 100}
    assert samples[7].key == "benign/synthetic_0007.png" and samples[7].label == 1
    assert source.samples(Path("/ignored")) == samples


def test_synthetic_is_deterministic_by_seed_and_index():
    first, again = get_dataset("synthetic"), get_dataset("synthetic")
    sample = first.samples(None)[5]
    image, mask = first.load(sample)
    image2, mask2 = again.load(sample)
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(mask, mask2)
    other_seed = get_plugins().datasets.create("synthetic", seed=1)
    assert not np.array_equal(other_seed.load(sample)[0], image)
    assert not np.array_equal(first.load(first.samples(None)[8])[0], image)  # another malignant one


def test_synthetic_masks_match_classes_and_options():
    source = get_plugins().datasets.create("synthetic", count=12, size=48, seed=3)
    samples = source.samples(None)
    assert len(samples) == 12
    for sample in samples:
        image, mask = source.load(sample)
        assert image.shape == mask.shape == (48, 48)
        assert image.dtype == np.uint8 and mask.dtype == bool
        assert mask.any() == (sample.label != 0)
        if mask.any():  # the lesion is darker than its surroundings (hypoechoic)
            assert image[mask].mean() < image[~mask].mean()


def test_synthetic_refuses_bad_options_and_foreign_keys():
    from dlmi.datasets.base import Sample
    from dlmi.errors import DlmiError

    with pytest.raises(DlmiError, match="count"):
        get_plugins().datasets.create("synthetic", count=0)
    source = get_plugins().datasets.create("synthetic", count=10)
    with pytest.raises(DlmiError, match="synthetic_0042"):
        source.load(Sample("normal/synthetic_0042.png", 0))
    with pytest.raises(DlmiError, match="is 'benign'"):
        source.load(Sample("normal/synthetic_0001.png", 0))


# ---- the shared loader ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["busi", "brain-mri", "synthetic"])
def test_image_dataset_gives_resized_tensors(request, name):
    data_dir = {"busi": "busi_dir", "brain-mri": "brain_mri_dir"}.get(name)
    source = get_dataset(name)
    samples = source.samples(request.getfixturevalue(data_dir) if data_dir else None)
    chosen = [samples[0], samples[len(samples) // 2], samples[-1]]
    dataset = ImageDataset(source, chosen, image_size=64, cache=True)
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["image"].shape == item["mask"].shape == (1, 64, 64)
        assert item["image"].dtype == item["mask"].dtype == torch.float32
        assert item["image"].min() >= 0 and item["image"].max() <= 1 and item["image"].std() > 0
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["label"].item() == chosen[index].label
        if source.has_masks:
            assert bool(item["mask"].any()) == (chosen[index].label != source.normal_index)
        else:
            assert not item["mask"].any()
        again = dataset[index]  # from the cache: equal values
        assert torch.equal(again["image"], item["image"]) and torch.equal(again["mask"], item["mask"])


# ---- writing synthetic data to disk, reading it back as BUSI, and `dlmi data summary` ----------------------


def test_synth_command_writes_a_busi_folder_that_reads_back_identically(cli, tmp_path):
    out = tmp_path / "synth"
    result = cli("data", "synth", "--out", str(out), "--count", "6", "--size", "32", "--seed", "2")
    assert result.returncode == 0, result.stderr
    generated = get_plugins().datasets.create("synthetic", count=6, size=32, seed=2)
    busi = get_dataset("busi")
    on_disk = busi.samples(out)
    assert [s.key for s in on_disk] == sorted((s.key for s in generated.samples(None)),
                                              key=lambda k: (busi.classes.index(k.split("/")[0]), k))
    by_key = {s.key: s for s in generated.samples(None)}
    for sample in on_disk:
        image, mask = busi.load(sample)
        expected_image, expected_mask = generated.load(by_key[sample.key])
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(mask, expected_mask)
    manifest = json.loads((out / "dlmi-dataset.json").read_text())
    assert manifest["options"] == {"count": 6, "size": 32, "seed": 2}
    refused = cli("data", "synth", "--out", str(out), "--count", "3")
    assert refused.returncode == 2 and "not empty" in refused.stderr and str(out) in refused.stderr


def test_summary_json_on_busi(cli, busi_dir):
    result = cli("data", "summary", "--dataset", "busi", "--data-dir", str(busi_dir), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {name: c["images"] for name, c in summary["classes"].items()} == BUSI_COUNTS
    assert {name: c["masks"] for name, c in summary["classes"].items()} == BUSI_COUNTS
    assert summary["total"]["images"] == 702 and summary["total"]["mask_files"] == 719
    assert summary["problems"] == []
    total = summary["total"]
    assert 0 < total["min_width"] < total["max_width"] and 0 < total["min_height"] < total["max_height"]


def test_summary_json_on_brain_mri(cli, brain_mri_dir):
    result = cli("data", "summary", "--dataset", "brain-mri", "--data-dir", str(brain_mri_dir), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {name: c["images"] for name, c in summary["classes"].items()} == BRAIN_MRI_COUNTS
    assert summary["total"]["images"] == 227 and summary["total"]["masks"] == 0


def test_summary_of_synthetic_needs_no_folder(cli):
    result = cli("data", "summary", "--dataset", "synthetic", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["data_dir"] is None
    assert {name: c["images"] for name, c in summary["classes"].items()} == {
        "normal": 100, "benign": 100, "malignant": 100}
    assert (summary["total"]["min_width"], summary["total"]["max_width"]) == (128, 128)


def test_summary_reports_a_wrong_size_mask_and_a_wrong_layout(cli, tmp_path):
    from PIL import Image

    out = tmp_path / "synth"
    assert cli("data", "synth", "--out", str(out), "--count", "6", "--size", "32").returncode == 0
    bad = out / "malignant" / "synthetic_0002_mask.png"
    Image.fromarray(np.zeros((10, 12), dtype=bool)).save(bad)
    result = cli("data", "summary", "--dataset", "busi", "--data-dir", str(out), "--json")
    assert result.returncode == 1
    problems = json.loads(result.stdout)["problems"]
    assert len(problems) == 1 and str(bad) in problems[0] and "12x10" in problems[0]
    wrong = cli("data", "summary", "--dataset", "busi", "--data-dir", str(out / "benign"))
    assert wrong.returncode == 2
    assert wrong.stderr.count("\n") == 1 and "Traceback" not in wrong.stderr
    assert str(out / "benign") in wrong.stderr


# ---- difficulty of the generated data -------------------------------------------------------------------


@pytest.mark.slow
def test_synthetic_takes_a_few_epochs_to_learn():
    """The seed CNN at 64 px is far from perfect after one epoch and good after ten (fresh-seed test set)."""
    from torch.nn import functional

    from dlmi.plugins import create_model

    def tensors(seed: int):
        source = get_plugins().datasets.create("synthetic", count=300, seed=seed)
        dataset = ImageDataset(source, source.samples(None), image_size=64)
        items = [dataset[i] for i in range(len(dataset))]
        return torch.stack([i["image"] for i in items]), torch.stack([i["label"] for i in items])

    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = tensors(0), tensors(1)
    model = create_model("seed-cnn", num_classes=3, image_size=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    accuracies = []
    for _ in range(10):
        model.train()
        for batch in torch.randperm(len(x_train)).split(16):
            loss = functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracies.append((model(x_test).argmax(1) == y_test).float().mean().item())
    assert accuracies[0] < 0.9, accuracies  # test accuracy (fraction correct) after epoch 1
    assert max(accuracies) >= 0.7, accuracies
