"""docs/plugins.md says what dlmi really says: every row of "Mistakes and what dlmi says" is made and
checked, and the page states the val_loss and key rules (issue 10, item 20)."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch
from test_plugin_mistakes import install, site  # noqa: F401  (the fixture)
from test_training import TinyPlugin, classifier_config, segmenter_config, tiny_environment
from torch import nn

from dlmi import hookimpl
from dlmi.errors import DlmiError
from dlmi.plugins import load_plugins, register_commands, reset_plugins
from dlmi.training import train_classifier, train_segmenter

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
PLACEHOLDERS = {"DIST": ".+", "NAME": ".+", "…": ".*"}


def documented_mistakes() -> dict[str, str]:
    """mistake → message template, from the table under "## Mistakes and what dlmi says"."""
    text = DOC.read_text(encoding="utf-8").split("## Mistakes and what dlmi says", 1)[1]
    rows = re.findall(r"^\| (.+?) \| `(.+?)` \|$", text, flags=re.M)
    return {mistake: message for mistake, message in rows}


def matches(template: str, message: str) -> bool:
    pattern = re.escape(template)
    for placeholder, regex in PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape(placeholder), regex)
    return re.fullmatch(pattern, message) is not None


def plugin(**hooks) -> types.ModuleType:
    module = types.ModuleType("doc_example")
    for name, function in hooks.items():
        setattr(module, name, function)
    return module


def warning_of(module: types.ModuleType) -> str:
    (warning,) = load_plugins(extra=[(module, "dlmi-doc-example")]).warnings
    return f"dlmi: warning: {warning}"


def error_of(call) -> str:
    with pytest.raises(DlmiError) as info:
        call()
    return f"dlmi: error: {info.value}"


class MapLoss(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(logits) - target) ** 2


class NumpyLoss(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.tensor(float(((torch.sigmoid(logits) - target) ** 2).mean().item()))


class MaskOnlyLoss(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, target.float())


class OddLosses:
    @staticmethod
    @hookimpl
    def dlmi_register_losses(register) -> None:
        register("map-loss", MapLoss, task="segmentation")
        register("numpy-loss", NumpyLoss, task="segmentation")
        register("mask-only", MaskOnlyLoss)


def real_messages(site_dir: Path, cache: Path, out: Path) -> dict[str, str]:  # noqa: C901 (one per row)
    @hookimpl
    def misnamed(reg):
        reg("x", object)

    @hookimpl
    def raising(register):
        raise RuntimeError("boom")

    @hookimpl
    def user_error(register):
        raise DlmiError("$HOSPITAL_DATA is not set")

    @hookimpl
    def duplicate(register):
        register("dice", object)

    @hookimpl
    def bad_commands(app):
        raise RuntimeError("typer too old")

    def unmarked(register):
        register("x", object)

    said = {
        "misnamed hook argument: `def dlmi_register_losses(reg)`":
            warning_of(plugin(dlmi_register_losses=misnamed)),
        "misspelt hook: `def dlmi_register_loss(register)`":
            warning_of(plugin(dlmi_register_loss=hookimpl(lambda register: None))),
        "hook without `@hookimpl`": warning_of(plugin(dlmi_register_models=unmarked)),
        "a hook raises": warning_of(plugin(dlmi_register_losses=raising)),
        "a hook raises `DlmiError`": error_of(
            lambda: load_plugins(extra=[(plugin(dlmi_register_datasets=user_error), "dlmi-doc-example")])),
        "a name registered twice": error_of(
            lambda: load_plugins(extra=[(plugin(dlmi_register_losses=duplicate), "dlmi-doc-example")])),
    }
    commands = load_plugins(extra=[(plugin(dlmi_register_commands=bad_commands), "dlmi-doc-example")])
    register_commands(object(), commands)
    said["a command hook raises"] = f"dlmi: warning: {commands.warnings[-1]}"
    install(site_dir, "dlmi-broken", "brokenplug", "raise ImportError('no module named xyz')\n")
    said["the module fails to import"] = "dlmi: warning: " + next(
        w for w in load_plugins().warnings if "dlmi-broken" in w)

    with tiny_environment(cache):
        said["a segmentation loss given to `train classifier` (or the reverse)"] = error_of(
            lambda: train_classifier(classifier_config(out, loss="dice")))
        said["a segmentation model given to `train classifier`"] = error_of(
            lambda: train_classifier(classifier_config(out, model="unet")))
        said["a mistyped model or loss name"] = error_of(
            lambda: train_segmenter(segmenter_config(out, loss="dcie")))
        reset_plugins(load_plugins(extra=[(TinyPlugin, "test"), (OddLosses, "dlmi-odd-losses")]))
        said["a loss that returns a map, not a number"] = error_of(
            lambda: train_segmenter(segmenter_config(out, loss="map-loss")))
        said["a loss (registered without `task=`) that fails on the task's batch"] = error_of(
            lambda: train_classifier(classifier_config(out, loss="mask-only")))
        said["a loss whose value has no gradient (`.item()`, numpy)"] = error_of(
            lambda: train_segmenter(segmenter_config(out, loss="numpy-loss")))
    assert not out.exists()
    return said


def test_every_documented_mistake_says_what_the_page_says(site, tmp_path, tmp_path_factory):  # noqa: F811
    documented = documented_mistakes()
    said = real_messages(site, tmp_path_factory.getbasetemp() / "cache", tmp_path / "run")
    assert set(documented) == set(said)
    for mistake, message in said.items():
        assert matches(documented[mistake], message), (mistake, documented[mistake], message)


def test_the_page_states_the_val_loss_and_key_rules():
    text = " ".join(DOC.read_text(encoding="utf-8").split())
    assert "Gated images count in `val_loss`." in text and "hinge" in text and "10⁴" in text
    assert "The key rule, with or without class folders" in text
    assert "do not put the label into the key" in text
