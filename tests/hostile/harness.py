"""Cases, the tiny trained models they share, and running one case (in this process or as a subprocess)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostile.outcome import HANDLED, REFUSED, RunRecord, Verdict, classify

KINDS = ("files", "names", "runs", "options", "plugins", "API")
REPO_ROOT = Path(__file__).resolve().parents[2]

# A case's ``run`` returns CLI arguments (``dlmi ARGS``) or a callable (the Python API, called here).
Invocation = Sequence[str] | Callable[[], Any]

# The tiny U-Net training every battery case that trains starts from.
SEGMENTER = [
    "--image-size",
    "32",
    "--base-channels",
    "4",
    "--epochs",
    "1",
    "--device",
    "cpu",
    "--cache",
    "none",
    "-q",
]


@dataclass
class Case:
    """One hostile input and the outcome it must have.

    ``run(ws)`` makes the inputs under ``ws.root`` and returns what to run. ``check(record)`` asserts on a
    handled result (raise AssertionError when wrong). A refusal must name each of ``names``.
    """

    kind: str
    name: str
    expect: str
    run: Callable[[Workspace], Invocation]
    check: Callable[[RunRecord], None] | None = None
    names: tuple[str, ...] = ()
    handled_codes: tuple[int, ...] = (0,)
    mutable: tuple[str, ...] = ()  # globs (relative to ws.root) a handled run may change
    subprocess: bool = False  # run ``python -m dlmi`` (hang detection, process exit)
    timeout: float = 60.0
    memory_gib: float | None = None  # a subprocess's address-space limit (a runaway allocation fails)
    skip: Callable[[], str | None] | None = None  # a reason to skip here (e.g. running as root)
    context: Callable[[Workspace], contextlib.AbstractContextManager[Any]] | None = None  # around the run

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert self.expect in (HANDLED, REFUSED), self.expect

    @property
    def id(self) -> str:
        return f"{self.kind.lower()}-{re.sub(r'[^a-z0-9]+', '-', self.name.lower()).strip('-')}"


# --- the shared tiny models ------------------------------------------------------------------------------


class World:
    """Synthetic BUSI-layout data and models trained on it for one epoch, each built on first use.

    Cases copy what they mutate (``Workspace.copy``); these folders are never changed.
    """

    CLASSIFIER_SIZE, SEGMENTER_SIZE = 64, 32

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)

    def _build(self, name: str, args: list[str]) -> Path:
        target = self.base / name
        if not target.exists():
            code, out, err = run_in_process([*args, "--out", str(target)])
            if code != 0:
                raise RuntimeError(f"building {name} failed ({code}): {err}{out}")
        return target

    @property
    def data(self) -> Path:
        """24 synthetic 32 px images with masks (8 per class), BUSI layout."""
        return self._build("busi", ["data", "synth", "--count", "24", "--size", "32"])

    @property
    def classifier(self) -> Path:
        return self._build(
            "cls",
            [
                "train",
                "classifier",
                "--dataset",
                "busi",
                "--data-dir",
                str(self.data),
                "--image-size",
                str(self.CLASSIFIER_SIZE),
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--cache",
                "none",
                "-q",
            ],
        )

    @property
    def segmenter(self) -> Path:
        return self._build(
            "seg",
            [
                "train",
                "segmenter",
                "--dataset",
                "busi",
                "--data-dir",
                str(self.data),
                "--image-size",
                str(self.SEGMENTER_SIZE),
                "--base-channels",
                "4",
                "--epochs",
                "1",
                "--aid",
                str(self.classifier),
                "--device",
                "cpu",
                "--cache",
                "none",
                "-q",
            ],
        )

    @property
    def export(self) -> Path:
        return self._build(
            "exported",
            ["export", "onnx", "--classifier", str(self.classifier), "--segmenter", str(self.segmenter)],
        )

    def images(self) -> list[Path]:
        """The data set's images (no masks), sorted."""
        return sorted(p for p in self.data.rglob("*.png") if "_mask" not in p.name)


class Workspace:
    """One case's folder, and helpers to make its inputs."""

    def __init__(self, root: Path, world: World) -> None:
        self.root, self.world = root, world
        root.mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def copy(self, source: Path, name: str | None = None) -> Path:
        """A copy of ``source`` (file or folder) in the workspace."""
        target = self.root / (name or source.name)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)
        return target

    def scans(self, count: int = 2, name: str = "scans") -> Path:
        """A folder of ``count`` good grey PNGs (from the data set), named good_N.png."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(self.world.images()[:count]):
            shutil.copy2(image, folder / f"good_{i}.png")
        return folder

    def predict_args(self, folder: Path, *extra: str, out: str = "out") -> list[str]:
        """``dlmi predict --aided FOLDER`` with the shared export, into ws/out, on the CPU."""
        return [
            "predict",
            "--aided",
            str(folder),
            "--models",
            str(self.world.export),
            "--out",
            str(self.root / out),
            "--provider",
            "cpu",
            *extra,
        ]


# --- running a case --------------------------------------------------------------------------------------


def digests(root: Path) -> dict[str, str]:
    """Every regular file under ``root`` (links not followed) → its sha256."""
    found: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                found[str(path.relative_to(root))] = "unreadable"
    return found


def run_in_process(args: Sequence[str]) -> tuple[int, str, str]:
    """``dlmi ARGS`` through :func:`dlmi.cli.main.run` with stdout and stderr captured (escapes propagate)."""
    from dlmi.cli.main import run
    from dlmi.plugins import reset_plugins

    out, err = io.StringIO(), io.StringIO()
    reset_plugins()  # as a new process would
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(list(args))
    return code, out.getvalue(), err.getvalue()


def run_subprocess(
    args: Sequence[str], timeout: float, memory_gib: float | None = None
) -> tuple[int | None, str, str, bool]:
    """``python -m dlmi ARGS``: (exit status or None, stdout, stderr, timed out)."""

    def limit() -> None:
        if memory_gib is not None:
            import resource

            size = int(memory_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "dlmi", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=limit,
    )
    try:
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err, False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        out, err = process.communicate()
        return None, out, err, True


def run_case(case: Case, ws: Workspace) -> tuple[Verdict, RunRecord]:
    """Make the case's inputs, run it (in ``ws.root``), and classify what happened."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.chdir(ws.root))
        if case.context is not None:
            stack.enter_context(case.context(ws))
        return _run_case(case, ws)


def _run_case(case: Case, ws: Workspace) -> tuple[Verdict, RunRecord]:
    from dlmi.errors import DlmiError

    invocation = case.run(ws)
    before = digests(ws.root)
    record = RunRecord(code=None, before=before, workspace=ws.root)
    start = time.perf_counter()
    if callable(invocation):
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                record.value = invocation()
            record.code = 0
        except DlmiError as exc:
            record.code = 2
            err.write(f"dlmi: error: {exc}\n")
        except Exception as exc:  # noqa: BLE001 - an escape is what this records
            record.exception = f"{type(exc).__name__}: {exc}"[:300]
            err.write(traceback.format_exc())
        record.stdout, record.stderr = out.getvalue(), err.getvalue()
    elif case.subprocess:
        record.code, record.stdout, record.stderr, record.timed_out = run_subprocess(
            invocation, case.timeout, case.memory_gib
        )
    else:
        try:
            record.code, record.stdout, record.stderr = run_in_process(invocation)
        except Exception as exc:  # noqa: BLE001
            record.exception = f"{type(exc).__name__}: {exc}"[:300]
    record.elapsed = time.perf_counter() - start
    if record.elapsed > case.timeout and not record.timed_out:
        record.timed_out = True
    record.after = digests(ws.root)
    check_error = None
    if case.check is not None and record.exception is None and record.code in case.handled_codes:
        try:
            case.check(record)
        except Exception as exc:  # noqa: BLE001 - a failed (or broken) check is a wrong result
            check_error = f"check failed: {type(exc).__name__}: {exc}"[:300]
    verdict = classify(
        record,
        expect=case.expect,
        check_error=check_error,
        names=case.names,
        handled_codes=case.handled_codes,
        mutable=case.mutable,
    )
    return verdict, record
