"""The CLI shell: help texts with examples, one-line errors, python -m dlmi.

Help texts and errors are checked in this process (Typer's CliRunner and ``dlmi.cli.main.run``); two tests
start a real ``python -m dlmi`` where the process boundary — the entry point, stderr, the exit status — is
what is tested.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dlmi.cli.main import make_app, run

COMMANDS = ("plugins", "data", "model", "train", "evaluate", "export", "predict", "reproduce")


@pytest.fixture(scope="module")
def invoke():
    """``invoke(*args)`` → the CliRunner result of ``dlmi ARGS`` in this process."""
    app, runner = make_app(), CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_help_lists_every_command(invoke):
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    listed = {line.split()[1] for line in result.output.splitlines() if line.startswith("│ ") and
              len(line.split()) > 1}
    assert set(COMMANDS) <= listed, f"missing from --help: {set(COMMANDS) - listed}"


@pytest.mark.parametrize(
    "args",
    [("plugins",), ("data", "summary"), ("data", "audit"), ("data", "split"), ("model", "summary"),
     ("train", "classifier"), ("train", "segmenter"), ("train", "joint"), ("evaluate",),
     ("evaluate", "masks"), ("export", "onnx"), ("predict",)],
)
def test_every_command_help_shows_an_example_of_itself(invoke, args):
    result = invoke(*args, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps lines
    assert "Example" in text and f"dlmi {' '.join(args)}" in text, text[:400]


def test_plugins_json_lists_builtins(invoke):
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["plugins"]
    names = {(r["kind"], r["name"]): r["source"] for r in rows}
    assert names[("dataset", "busi")] == "built-in"
    assert names[("model", "unet")] == "built-in"
    assert names[("loss", "dice")] == "built-in"


def test_user_error_is_one_line_naming_the_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert run(["data", "summary", "--dataset", "busi", "--data-dir", str(missing)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlmi: error: ") and str(missing) in lines[0]


def test_unknown_dataset_is_a_clear_error(capsys):
    assert run(["data", "summary", "--dataset", "no-such-set"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'no-such-set'" in err and "busi" in err  # names what is registered


def test_unknown_option_is_a_usage_error(capsys):
    assert run(["train", "classifier", "--no-such-option"]) == 2
    assert "No such option" in capsys.readouterr().err


def test_python_m_dlmi_runs_the_cli(cli):
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "predict" in result.stdout


def test_error_in_a_real_process_is_one_line_on_stderr_with_status_2(cli, tmp_path):
    result = cli("data", "summary", "--dataset", "busi", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nowhere" in lines[0]
    assert "Traceback" not in result.stderr
