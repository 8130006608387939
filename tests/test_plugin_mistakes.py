"""A plugin author's mistakes never take the CLI down, and every one is named (issue 10, items 14–16, 18, 19).

Plugins are real distributions on ``sys.path`` (a ``*.dist-info`` with a ``dlmi`` entry point), loaded by
the real entry-point machinery; the CLI runs in-process through :func:`dlmi.cli.main.run`.
"""

from __future__ import annotations

import json
import sys
import textwrap
import types
from pathlib import Path

import pytest

from dlmi import hookimpl
from dlmi.cli.main import run
from dlmi.errors import DlmiError
from dlmi.plugins import load_plugins, reset_plugins

GOOD = """
    from dlmi import hookimpl

    @hookimpl
    def dlmi_register_losses(register):
        register("good-loss", lambda: 1, task="segmentation")
"""


def install(site: Path, dist: str, module: str, source: str) -> None:
    """A distribution ``dist`` whose ``dlmi`` entry point is ``module`` (its code: ``source``)."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[dlmi]\n{module} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch):
    """A folder on sys.path to install plugin distributions into; the process-wide plugins are reloaded."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("DLMI_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("DLMI_DEBUG", raising=False)
    reset_plugins()
    before = set(sys.modules)
    yield folder
    reset_plugins()
    for name in set(sys.modules) - before:
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(folder)):
            del sys.modules[name]


def dlmi(capsys, *args: str) -> tuple[int, str, str]:
    """``dlmi ARGS`` in this process, loading the plugins afresh as a new process would."""
    reset_plugins()
    capsys.readouterr()
    code = run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def warning_lines(err: str, name: str) -> list[str]:
    return [line for line in err.splitlines() if name in line]


# --- 14. a hook whose argument is misnamed --------------------------------------------------------------


MISNAMED = """
    from dlmi import hookimpl

    @hookimpl
    def dlmi_register_losses(reg):
        reg("never", lambda: 1)
"""


def test_a_misnamed_hook_argument_is_one_warning_and_the_plugin_is_left_out(site, capsys):
    install(site, "good-plugin", "goodplug", GOOD)
    install(site, "dlmi-misnamed", "misnamed", MISNAMED)
    plugins = load_plugins()
    assert "good-loss" in plugins.losses and "never" not in plugins.losses
    (warning,) = [w for w in plugins.warnings if "dlmi-misnamed" in w]
    assert "left out" in warning and "'reg'" in warning and "'register'" in warning

    for args in (["--help"], ["plugins", "--json"], ["predict", "--help"]):
        code, out, err = dlmi(capsys, *args)
        assert code == 0, err
        assert "Traceback" not in err
        assert len(warning_lines(err, "dlmi-misnamed")) == 1
    rows = json.loads(dlmi(capsys, "plugins", "--json")[1])
    assert any("dlmi-misnamed" in w for w in rows["warnings"])
    assert "good-loss" in {r["name"] for r in rows["plugins"]}


# --- 15. hooks that can never be called -----------------------------------------------------------------


UNCALLABLE = """
    from dlmi import hookimpl

    @hookimpl
    def dlmi_register_loss(register):
        register("typo-loss", lambda: 1)

    def dlmi_register_models(register):
        register("unmarked-model", lambda: 1)
"""


def test_a_misspelt_hook_or_a_missing_hookimpl_is_warned_about(site, capsys):
    install(site, "dlmi-typos", "typos", UNCALLABLE)
    plugins = load_plugins()
    warnings = [w for w in plugins.warnings if "dlmi-typos" in w]
    assert any("dlmi_register_loss is not a dlmi hook (did you mean dlmi_register_losses?)" in w
               for w in warnings)
    assert any("dlmi_register_models is not marked @dlmi.hookimpl" in w for w in warnings)
    err = capsys.readouterr().err
    assert len(warning_lines(err, "dlmi-typos")) == 2


# --- 16. a DlmiError inside a plugin's hook -------------------------------------------------------------


CONFIGURED = """
    from dlmi import DlmiError, hookimpl

    @hookimpl
    def dlmi_register_datasets(register):
        raise DlmiError("$HOSPITAL_DATA is not set; point it at the export folder")
"""


def test_a_user_error_inside_a_plugin_names_the_plugin(site, capsys):
    install(site, "dlmi-hospital", "hospital", CONFIGURED)
    with pytest.raises(DlmiError, match=r"plugin from dlmi-hospital \(dlmi_register_datasets\): "
                                        r"\$HOSPITAL_DATA is not set"):
        load_plugins()
    code, _, err = dlmi(capsys, "plugins")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "dlmi-hospital" in lines[0] and "DLMI_DISABLE_PLUGINS=1" in lines[0]


def test_a_failing_command_hook_is_left_out_with_a_warning(site, capsys):
    install(site, "dlmi-badcmd", "badcmd", """
        from dlmi import hookimpl

        @hookimpl
        def dlmi_register_commands(app):
            raise RuntimeError("typer too old")
    """)
    code, out, err = dlmi(capsys, "--help")
    assert code == 0 and "predict" in out
    assert len(warning_lines(err, "dlmi-badcmd")) == 1 and "typer too old" in err


# --- 18. the documented notebook snippet, with the package also installed -------------------------------


def test_extra_plugin_that_is_also_installed_registers_once(site):
    install(site, "good-plugin", "goodplug", GOOD)
    import goodplug

    plugins = load_plugins(extra=[(goodplug, "example")])
    assert plugins.losses.get("good-loss").source == "good-plugin"
    assert plugins.warnings == []


def test_extra_plugins_with_the_same_source_name_both_register():
    first, second = types.ModuleType("first"), types.ModuleType("second")

    @hookimpl
    def losses_a(register):
        register("loss-a", lambda: 1)

    @hookimpl
    def losses_b(register):
        register("loss-b", lambda: 1)

    first.dlmi_register_losses, second.dlmi_register_losses = losses_a, losses_b
    plugins = load_plugins(extra=[(first, "example"), (second, "example")])
    assert {"loss-a", "loss-b"} <= set(plugins.losses.names())


# --- 19. the full traceback on request ------------------------------------------------------------------


def broken_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"task": "classification", ')  # cut short
    return run_dir


def test_one_line_by_default_full_traceback_on_request(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DLMI_DEBUG", raising=False)
    args = ["train", "classifier", "--resume", str(broken_run(tmp_path))]
    code, _, err = dlmi(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "config.json: not valid JSON" in err

    for how in ("flag", "env"):
        if how == "env":
            monkeypatch.setenv("DLMI_DEBUG", "1")
            code, _, err = dlmi(capsys, *args)
        else:
            code, _, err = dlmi(capsys, "--traceback", *args)
        assert code == 2
        assert "Traceback (most recent call last)" in err
        assert "JSONDecodeError" in err  # the cause that the one-line message stands for
        assert err.strip().splitlines()[-1].startswith("dlmi: error: ")
    monkeypatch.delenv("DLMI_DEBUG")
    assert "DLMI_DEBUG" not in __import__("os").environ  # --traceback does not leak into the process
    code, help_text, _ = dlmi(capsys, "--help")
    assert "--traceback" in help_text and "DLMI_DEBUG" in help_text
