"""Shared fixtures: where the shared data lives, and running the CLI as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DLMI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared data set not present at {path} (set DLMI_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def busi_dir() -> Path:
    """The BUSI folder of ../shared/data; the test skips, saying why, where it is absent."""
    return _shared("busi")


@pytest.fixture(scope="session")
def brain_mri_dir() -> Path:
    """The brain MRI folder of ../shared/data; the test skips, saying why, where it is absent."""
    return _shared("brain_mri")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dlmi ARGS`` in a subprocess and return the completed process (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dlmi", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli():
    """The :func:`run_cli` helper as a fixture."""
    return run_cli
