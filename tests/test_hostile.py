"""The hostile-input battery (issue 18, section 4): every case in tests/hostile has its expected outcome.

A case is *handled* (the right result, checked) or *refused* (non-zero exit, one line naming the file or
option and the cause, no traceback, nothing that existed before lost); anything else — silent-wrong, lost,
traceback, hang, unclear — fails it. ``benchmarks/hostile_tally.py`` runs the same cases and prints the tally.

``KNOWN`` lists the cases that fail on today's code, each with the defect it shows; they are strict xfails,
so a fix that makes one pass fails the suite until its mark is removed here.
"""

from __future__ import annotations

import pytest
from hostile import all_cases
from hostile.harness import Workspace, World, run_case

DEFECT = "issue 18 defect {}, fixed in another branch"
NEW = "found by the battery (not in issue 18): {}"

KNOWN = {
    # files
    "files-multipage-tiff-is-named": DEFECT.format("10 (a multipage TIFF silently gives page 1)"),
    "files-truth-mask-as-a-0-2-label-map": DEFECT.format("4 (a 0/2 label map read as empty)"),
    "files-an-unknown-class-folder-in-the-data-is-warned-about": DEFECT.format("10 (unknown class folder)"),
    # names
    "names-a-244-character-name": DEFECT.format("8 (a too-long name stops the run)"),
    # runs
    "runs-resume-a-run-that-has-no-last-pt": DEFECT.format("1 (--resume without last.pt loses the run)"),
    "runs-predict-with-export-json-junk": DEFECT.format("10 (export.json checksums, checked at load)"),
    "runs-re-run-after-an-input-image-was-deleted": DEFECT.format("3 (stale outputs kept)"),
    "runs-re-run-after-an-input-image-became-corrupt": DEFECT.format("3 (stale outputs kept)"),
    "runs-export-models-of-different-data-sets-together": DEFECT.format("5 (export joins other data sets)"),
    "runs-export-a-run-interrupted-before-its-last-epoch": DEFECT.format("10 (interrupted run exported)"),
    # options
    "options-train-classifier-folds-50-on-24-images": DEFECT.format("10 (50 folds on 28 images)"),
    "options-predict-threads-100000": DEFECT.format("9 (--threads 100000 hangs)"),
    "options-evaluate-resamples-1": DEFECT.format("10 (--resamples -1 accepted)"),
    "options-evaluate-masks-resamples-1": DEFECT.format("10 (--resamples -1 accepted)"),
    "options-train-segmenter-image-size-100000": NEW.format(
        "--image-size 100000 allocates until memory runs out"
    ),
    "options-predict-exclude-everything": NEW.format(
        "--exclude that leaves nothing: 'no images', not --exclude"
    ),
    "options-predict-threshold-1-nothing-is-lesion": NEW.format(
        "--threshold 1 refused as not 'between 0 and 1'"
    ),
    # plugins
    "plugins-a-plugin-whose-import-calls-sys-exit-7": DEFECT.format("7 (sys.exit in a plugin import)"),
    "plugins-a-plugin-whose-import-calls-sys-exit-7-then-help": DEFECT.format(
        "7 (sys.exit in a plugin import)"
    ),
    "plugins-a-plugin-command-named-predict": DEFECT.format("7 (a plugin replaces a built-in command)"),
    "plugins-a-dataset-whose-load-raises": DEFECT.format("11 (a dataset plugin whose load() raises)"),
    "plugins-a-model-with-7-logits-for-3-classes": DEFECT.format("6 (output shapes not checked at build)"),
    "plugins-a-model-returning-a-string": DEFECT.format("11 (a plugin returning a string)"),
    "plugins-a-dataset-whose-mask-has-another-size": NEW.format(
        "a plugin's mask of another size is stretched"
    ),
    "plugins-a-dataset-with-no-classes": NEW.format("a dataset plugin with no classes: IndexError"),
    "plugins-a-dataset-whose-factory-raises": NEW.format("a dataset factory that raises: traceback"),
    # API
    "api-load-predictor-42": DEFECT.format("11 (load_predictor(42))"),
    "api-load-predictor-none": DEFECT.format("11 (wrong argument types in the API)"),
    "api-evaluate-123": DEFECT.format("11 (evaluate(123))"),
    "api-evaluate-none": DEFECT.format("11 (wrong argument types in the API)"),
    "api-evaluate-with-resamples-0": DEFECT.format("11 (resamples=0)"),
    "api-train-with-image-size-64": DEFECT.format("11 (image_size='64')"),
    "api-train-with-epochs-1-5": DEFECT.format("11 (epochs=1.5)"),
    "api-train-with-lr-fast": DEFECT.format("11 (wrong argument types in the API)"),
    "api-train-with-model-options-wide": DEFECT.format("11 (wrong argument types in the API)"),
    "api-export-onnx-classifier-42": DEFECT.format("11 (wrong argument types in the API)"),
    "api-load-predictor-with-threshold-2": NEW.format("threshold=2 accepted by the API (the CLI refuses it)"),
    "api-predict-a-complex-array": NEW.format("a complex array: the imaginary part silently dropped"),
    "api-predict-an-object-array": NEW.format("an object array: TypeError traceback"),
}

CASES = all_cases()


def _param(case):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN[case.id])] if case.id in KNOWN else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """The tiny data set and models the cases share (each built on first use, once per session)."""
    return World(tmp_path_factory.mktemp("hostile-world"))


def test_known_failures_name_real_cases():
    assert set(KNOWN) <= {case.id for case in CASES}, set(KNOWN) - {case.id for case in CASES}


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_hostile_case(case, world, tmp_path):
    reason = case.skip() if case.skip else None
    if reason:
        pytest.skip(reason)
    verdict, record = run_case(case, Workspace(tmp_path / "ws", world))
    assert verdict.outcome == case.expect, (
        f"{case.id}: expected {case.expect}, got {verdict.outcome}: {verdict.reason}\n"
        f"exit {record.code}\nstdout: {record.stdout[-800:]}\nstderr: {record.stderr[-1500:]}"
    )
