"""The plugin registry: duplicates, failing plugins, disabling external plugins, sources."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest

from dlmi import hookimpl
from dlmi.errors import DlmiError
from dlmi.plugins import load_plugins
from dlmi.registry import BUILTIN_SOURCE, DuplicateNameError, Registry


def _loss_plugin(name: str, loss_name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def dlmi_register_losses(register):
        register(loss_name, lambda: "made", task="segmentation", description="test loss")

    module.dlmi_register_losses = dlmi_register_losses
    return module


def test_builtins_register_through_entry_points():
    plugins = load_plugins()
    for name in ("busi", "brain-mri", "synthetic"):
        assert plugins.datasets.get(name).source == BUILTIN_SOURCE
    for name in ("seed-cnn", "unet"):
        assert plugins.models.get(name).source == BUILTIN_SOURCE
    for name in ("dice", "bce", "mse", "dice-bce"):
        assert plugins.losses.get(name).source == BUILTIN_SOURCE


def test_extra_plugin_is_registered_with_its_source():
    plugins = load_plugins(extra=[(_loss_plugin("p1", "my-loss"), "my-dist")])
    entry = plugins.losses.get("my-loss")
    assert entry.source == "my-dist"
    assert entry.create() == "made"
    assert "my-loss" in plugins.losses.names(task="segmentation")


def test_duplicate_name_names_both_sources():
    with pytest.raises(DuplicateNameError) as info:
        load_plugins(extra=[
            (_loss_plugin("a", "twice"), "first-dist"),
            (_loss_plugin("b", "twice"), "second-dist"),
        ])
    message = str(info.value)
    assert "twice" in message and "first-dist" in message and "second-dist" in message


def test_duplicate_of_a_builtin_is_refused():
    with pytest.raises(DuplicateNameError, match="built-in"):
        load_plugins(extra=[(_loss_plugin("c", "dice"), "shadowing-dist")])


def test_unknown_name_lists_registered_ones():
    registry = Registry("loss")
    registry.register("a", object, source="x")
    with pytest.raises(DlmiError, match="unknown loss 'b'; registered: a"):
        registry.get("b")


def test_plugin_failing_in_its_hook_is_a_warning(capsys):
    module = types.ModuleType("broken")

    @hookimpl
    def dlmi_register_losses(register):
        raise RuntimeError("boom")

    module.dlmi_register_losses = dlmi_register_losses
    plugins = load_plugins(extra=[(module, "broken-dist")])
    assert any("broken-dist" in w and "boom" in w for w in plugins.warnings)
    assert "dice" in plugins.losses  # the built-ins are still there


@pytest.fixture
def installed_plugins(tmp_path: Path, monkeypatch):
    """Two real distributions on sys.path with dlmi entry points: one works, one fails to import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "goodplug.py").write_text(textwrap.dedent("""
        from dlmi import hookimpl

        @hookimpl
        def dlmi_register_losses(register):
            register("good-loss", lambda: 1, task="segmentation")
    """))
    (site / "badplug.py").write_text("raise ImportError('missing dependency xyz')\n")
    for dist, module in (("good-plugin", "goodplug"), ("bad-plugin", "badplug")):
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[dlmi]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in ("goodplug", "badplug"):
        sys.modules.pop(module, None)


def test_entry_point_plugins_and_a_broken_one(installed_plugins, capsys):
    plugins = load_plugins()
    assert plugins.losses.get("good-loss").source == "good-plugin"
    assert any("bad-plugin" in w and "missing dependency xyz" in w for w in plugins.warnings)
    err = capsys.readouterr().err
    assert "bad-plugin" in err and len([ln for ln in err.splitlines() if "bad-plugin" in ln]) == 1


def test_disable_env_loads_only_builtins(installed_plugins, monkeypatch):
    monkeypatch.setenv("DLMI_DISABLE_PLUGINS", "1")
    plugins = load_plugins()
    assert "good-loss" not in plugins.losses
    assert "dice" in plugins.losses
    assert plugins.warnings == []


def test_cli_survives_a_broken_plugin(installed_plugins, cli):
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(installed_plugins), os.environ.get("PYTHONPATH", "")])}
    result = cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert "bad-plugin" in result.stderr and "Traceback" not in result.stderr
    assert '"good-loss"' in result.stdout
