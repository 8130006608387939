"""Third-party plugins: the example package plugins/dlmi-extra-losses, and the examples of docs/plugins.md."""

from __future__ import annotations

import importlib
import json
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlmi.datasets.loader import ImageDataset
from dlmi.errors import DlmiError
from dlmi.plugins import create_loss, load_plugins, reset_plugins

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGINS_DOC = REPO_ROOT / "docs" / "plugins.md"
EXTRA = "dlmi-extra-losses"


@pytest.fixture
def extra_installed() -> None:
    try:
        distribution(EXTRA)
    except PackageNotFoundError:
        pytest.skip(f"{EXTRA} not installed (scripts/test.sh installs it; pip install -e plugins/{EXTRA})")


def plugin_rows(result) -> dict[str, dict]:
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)["plugins"]}


def test_extra_losses_listed_with_their_source(cli, extra_installed):
    rows = plugin_rows(cli("plugins", "--json"))
    for name in ("focal", "tversky"):
        assert rows[name]["source"] == EXTRA
        assert rows[name]["task"] == "segmentation"
    assert rows["dice"]["source"] == "built-in"


def test_disable_plugins_leaves_only_the_builtins(cli, extra_installed):
    rows = plugin_rows(cli("plugins", "--json", env={"DLMI_DISABLE_PLUGINS": "1"}))
    assert "focal" not in rows and "tversky" not in rows
    assert {row["source"] for row in rows.values()} == {"built-in"}
    assert "dice" in rows and "unet" in rows


def test_tversky_through_the_process_wide_registry(extra_installed):
    reset_plugins()
    try:
        tversky = create_loss("tversky")
        target = torch.zeros(2, 1, 16, 16)
        target[:, :, 4:12, 4:12] = 1
        perfect = torch.where(target > 0, 30.0, -30.0)
        assert float(tversky(perfect, target)) == pytest.approx(0.0, abs=1e-6)
        # All wrong: TP = 0, so the index is smooth / (alpha·FP + beta·FN + smooth) — about 0.
        assert float(tversky(-perfect, target)) > 0.99
        # alpha = beta = 0.5 is the Dice loss:
        # (TP + s/2) / (TP + FP/2 + FN/2 + s/2) = (2TP + s) / (2TP + FP + FN + s).
        torch.manual_seed(0)
        logits = torch.randn(2, 1, 16, 16)
        half = create_loss("tversky", alpha=0.5, beta=0.5, smooth=0.5)(logits, target)
        assert torch.allclose(half, create_loss("dice")(logits, target), atol=1e-6)
        # The default beta = 0.7 > alpha: missing lesion costs more than a false alarm of the same size.
        missed = torch.where(target > 0, -30.0, -30.0)
        missed[:, :, 4:12, 4:8] = 30.0  # half the lesion found
        false_alarm = perfect.clone()
        false_alarm[:, :, 0:8, 12:16] = 30.0  # the lesion plus as many extra pixels
        assert float(tversky(missed, target)) > float(tversky(false_alarm, target))
    finally:
        reset_plugins()


def test_focal_loss_values(extra_installed):
    import torch.nn.functional as F

    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 8, 8)
    plugins = load_plugins()
    # gamma = 0, alpha = 0.5 is half the binary cross-entropy.
    plain = plugins.losses.create("focal", alpha=0.5, gamma=0.0)(logits, target)
    assert torch.allclose(plain, 0.5 * F.binary_cross_entropy_with_logits(logits, target))
    # gamma > 0 down-weights the well-classified pixels.
    assert float(plugins.losses.create("focal", alpha=0.5, gamma=2.0)(logits, target)) < float(plain)
    with pytest.raises(DlmiError, match="alpha"):
        plugins.losses.create("focal", alpha=2.0)


# --- docs/plugins.md: every "# file: PATH" code block, written out and run -------------------------------

def doc_files() -> dict[str, str]:
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n# file: (\S+)\n(.*?)```", text, flags=re.S)
    return {path: body for path, body in blocks}


@pytest.fixture
def doc_packages(tmp_path, monkeypatch) -> dict[str, object]:
    """The documented example packages, written to tmp_path and imported (module name → module)."""
    files = doc_files()
    assert len(files) >= 4, "docs/plugins.md lost its '# file:' example blocks"
    for rel, body in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    modules = {}
    for rel in files:
        if rel.endswith("__init__.py"):
            src = tmp_path / rel.split("/src/")[0] / "src"
            monkeypatch.syspath_prepend(str(src))
            name = Path(rel).parent.name
            sys.modules.pop(name, None)
            modules[name] = importlib.import_module(name)
    yield modules
    for name in modules:
        sys.modules.pop(name, None)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_doc_pyproject_points_at_the_documented_module(doc_packages):
    pyproject = tomllib.loads(doc_files()["dlmi-lesion-folders/pyproject.toml"])
    (value,) = pyproject["project"]["entry-points"]["dlmi"].values()
    assert value in doc_packages
    assert hasattr(doc_packages[value], "dlmi_register_datasets")


def test_doc_dataset_plugin_reads_samples(doc_packages, tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    write_png(data / "normal" / "images" / "n001.png", rng.integers(0, 255, (20, 30), dtype=np.uint8))
    write_png(data / "lesion" / "images" / "l001.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:10, 8:16] = 255
    write_png(data / "lesion" / "masks" / "l001.png", mask)

    plugins = load_plugins(extra=[(doc_packages["dlmi_lesion_folders"], "example")])
    assert plugins.datasets.get("lesion-folders").source == "example"
    source = plugins.datasets.create("lesion-folders")
    samples = source.samples(data)
    assert [(s.key, s.label, len(s.mask_paths)) for s in samples] == [("normal/n001.png", 0, 0),
                                                                     ("lesion/l001.png", 1, 1)]
    image, lesion_mask = source.load(samples[1])
    assert image.dtype == np.uint8 and image.shape == (20, 30)
    assert lesion_mask.dtype == bool and int(lesion_mask.sum()) == 5 * 8
    _, normal_mask = source.load(samples[0])
    assert not normal_mask.any()
    item = ImageDataset(source, samples, image_size=16)[1]
    assert item["image"].shape == (1, 16, 16) and item["mask"].sum() > 0

    with pytest.raises(DlmiError, match="lesion-folders"):
        source.samples(tmp_path / "empty-folder-that-does-not-exist")


def test_doc_loss_model_and_command_plugins_work(doc_packages):
    plugins = load_plugins(extra=[(doc_packages["dlmi_jaccard"], "jaccard-example"),
                                  (doc_packages["dlmi_tiny"], "tiny-example")])
    jaccard = plugins.losses.create("jaccard")
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    assert float(jaccard(torch.where(target > 0, 30.0, -30.0), target)) == pytest.approx(0.0, abs=1e-6)
    assert plugins.losses.get("jaccard").meta["task"] == "segmentation"

    model = plugins.models.create("tiny-fcn", in_channels=1, out_channels=1)
    assert model(torch.rand(1, 1, 12, 9)).shape == (1, 1, 12, 9)

    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command("version")(lambda: None)  # a second command, so "hello" is a sub-command
    plugins.manager.hook.dlmi_register_commands(app=app)
    result = CliRunner().invoke(app, ["hello", "--name", "dlmi"])
    assert result.exit_code == 0 and result.output.strip() == "hello, dlmi"


def test_duplicate_name_from_a_plugin_is_an_error_naming_both():
    class Clash:
        from dlmi import hookimpl

        @staticmethod
        @hookimpl
        def dlmi_register_losses(register):
            register("dice", torch.nn.MSELoss)

    with pytest.raises(DlmiError, match="'dice' is registered twice: by built-in and by clash"):
        load_plugins(extra=[(Clash, "clash")])
