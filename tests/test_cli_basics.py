"""The CLI shell: help texts with examples, one-line errors, python -m dlmi."""

from __future__ import annotations

import json

import pytest


def test_help_lists_every_command(cli):
    result = cli("--help")
    assert result.returncode == 0
    for command in ("plugins", "data", "model", "train", "evaluate", "export", "predict"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "args",
    [("plugins",), ("data", "summary"), ("model", "summary"), ("train", "classifier"), ("train", "segmenter"),
     ("evaluate",), ("export", "onnx"), ("predict",)],
)
def test_every_command_help_shows_an_example(cli, args):
    result = cli(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout and "dlmi " in result.stdout


def test_plugins_json_lists_builtins(cli):
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["plugins"]
    names = {(r["kind"], r["name"]): r["source"] for r in rows}
    assert names[("dataset", "busi")] == "built-in"
    assert names[("model", "unet")] == "built-in"
    assert names[("loss", "dice")] == "built-in"


def test_user_error_is_one_line_without_traceback(cli, tmp_path):
    result = cli("data", "summary", "--dataset", "busi", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nowhere" in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_dataset_is_a_clear_error(cli):
    result = cli("data", "summary", "--dataset", "no-such-set")
    assert result.returncode == 2
    assert "unknown dataset 'no-such-set'" in result.stderr
