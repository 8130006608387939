"""Built-in commands keep their names, and a plugin that exits or raises anything while loading is named and
skipped (issue 18, section 3 item 7). Real distributions on ``sys.path``, loaded by the entry-point machinery
(the ``site`` fixture of ``test_plugin_mistakes``); the CLI runs in-process."""

from __future__ import annotations

import json

import pytest
from test_plugin_mistakes import GOOD, dlmi, install, site, warning_lines  # noqa: F401  (site: a fixture)

PREDICT_CLASH = """
    import typer
    from dlmi import hookimpl

    @hookimpl
    def dlmi_register_commands(app):
        @app.command("predict")
        def predict():
            "The plugin's predict."
            print("PLUGIN PREDICT RAN")

        @app.command("hello")
        def hello():
            "Says hello."
            print("hello from the plugin")

        export = typer.Typer(help="The plugin's export group.")

        @export.command("onnx")
        def onnx():
            print("PLUGIN EXPORT RAN")

        app.add_typer(export, name="export")
"""


def test_a_plugin_command_named_like_a_builtin_is_refused_and_the_builtin_kept(site, capsys):  # noqa: F811
    install(site, "dlmi-clash", "clash_plugin", PREDICT_CLASH)
    code, out, err = dlmi(capsys, "predict", "--help")
    assert code == 0
    assert "--models" in out and "The plugin's predict" not in out  # the built-in's help
    lines = warning_lines(err, "dlmi-clash")
    assert any("'predict'" in line and "built-in" in line for line in lines), err
    assert any("'export'" in line for line in lines), err
    code, out, _ = dlmi(capsys, "export", "onnx", "--help")
    assert code == 0 and "--classifier" in out
    code, out, _ = dlmi(capsys, "hello")  # the plugin's other command still works
    assert code == 0 and "hello from the plugin" in out


@pytest.mark.parametrize("where", ["import", "hook"])
@pytest.mark.parametrize("args", [("--help",), ("plugins", "--json")])
def test_a_plugin_that_calls_sys_exit_is_named_and_skipped(site, capsys, where, args):  # noqa: F811
    if where == "import":
        source = "import sys\nsys.exit(7)\n"
    else:
        source = """
            import sys
            from dlmi import hookimpl

            @hookimpl
            def dlmi_register_losses(register):
                sys.exit(7)

            @hookimpl
            def dlmi_register_commands(app):
                sys.exit(7)
        """
    install(site, "dlmi-exits", "exiting_plugin", source)
    install(site, "dlmi-good", "good_plugin", GOOD)
    code, out, err = dlmi(capsys, *args)
    assert code == 0, err
    assert warning_lines(err, "dlmi-exits"), err
    assert all("SystemExit" in line for line in warning_lines(err, "dlmi-exits"))
    if args[0] == "plugins":
        names = {row["name"] for row in json.loads(out)["plugins"]}
        assert "good-loss" in names and "predict" not in names


def test_a_plugin_raising_a_base_exception_is_named_and_skipped(site, capsys):  # noqa: F811
    install(site, "dlmi-base", "base_plugin", "raise GeneratorExit('odd')\n")
    code, _, err = dlmi(capsys, "plugins")
    assert code == 0
    assert any("GeneratorExit" in line for line in warning_lines(err, "dlmi-base")), err
