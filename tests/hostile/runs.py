"""Run folders, exports and output folders in odd states: resume, re-run, wrong folder, broken files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from hostile.harness import Case, Workspace, run_in_process
from hostile.make import grey, predicted, raw, rows, says
from hostile.outcome import HANDLED, REFUSED, RunRecord

GOOD = ["good_0.png", "good_1.png"]
TRAIN = ["--epochs", "1", "--device", "cpu", "--cache", "none", "-q"]


def _run_copy(ws: Workspace, which: str = "segmenter", name: str = "run") -> Path:
    return ws.copy(getattr(ws.world, which), name)


def _resume(change: Callable[[Path], object], command: str = "segmenter") -> Callable[[Workspace], list[str]]:
    """``train COMMAND --resume`` on a copy of the segmenter run after ``change(run)``."""

    def run(ws: Workspace) -> list[str]:
        folder = _run_copy(ws)
        change(folder)
        return ["train", command, "--resume", str(folder), "-q"]

    return run


def _train_into(make: Callable[[Workspace], Path]) -> Callable[[Workspace], list[str]]:
    def run(ws: Workspace) -> list[str]:
        return [
            "train",
            "segmenter",
            "--dataset",
            "busi",
            "--data-dir",
            str(ws.world.data),
            "--image-size",
            "32",
            "--base-channels",
            "4",
            *TRAIN,
            "--out",
            str(make(ws)),
        ]

    return run


def _predict(
    make_out: Callable[[Workspace, Path], Path] | None = None,
    *extra: str,
    models: Callable[[Workspace], list[str]] | None = None,
) -> Callable[[Workspace], list[str]]:
    """``dlmi predict --aided`` over two good images, with the out folder and models the case makes."""

    def run(ws: Workspace) -> list[str]:
        folder = ws.scans()
        out = make_out(ws, folder) if make_out else ws.path("out")
        args = ["predict", "--aided", str(folder), "--out", str(out), "--provider", "cpu", *extra]
        for model in models(ws) if models else [str(ws.world.export)]:
            args += ["--models", model]
        return args

    return run


def _export_copy(change: Callable[[Path], object], aided: bool = True) -> Callable[[Workspace], list[str]]:
    """Predict (``--aided`` or not) with a copy of the export after ``change(folder)``."""

    def models(ws: Workspace) -> list[str]:
        folder = ws.copy(ws.world.export, "exported")
        change(folder)
        return [str(folder)]

    predict = _predict(None, models=models)
    return predict if aided else lambda ws: [a for a in predict(ws) if a != "--aided"]


def _twice(
    first_extra: tuple[str, ...], *extra: str, between: Callable[[Workspace], object] | None = None
) -> Callable[[Workspace], list[str]]:
    """Predict once (``first_extra``), optionally change the inputs, and return the second predict."""

    def run(ws: Workspace) -> list[str]:
        args = ws.predict_args(ws.scans(), *first_extra)
        code, _, err = run_in_process(args)
        assert code == 0, err
        if between:
            between(ws)
        return ws.predict_args(ws.path("scans"), *extra)

    return run


def _evaluate(
    change: Callable[[Path], object] | None = None, *extra: str
) -> Callable[[Workspace], list[str]]:
    def run(ws: Workspace) -> list[str]:
        folder = _run_copy(ws)
        if change:
            change(folder)
        return ["evaluate", "run", str(folder), "--device", "cpu", "--resamples", "20", "--no-panels", *extra]

    return run


def _export(
    classifier: Callable[[Workspace], Path] | None,
    segmenter: Callable[[Workspace], Path] | None,
    out: Callable[[Workspace], Path] | None = None,
) -> Callable[[Workspace], list[str]]:
    def run(ws: Workspace) -> list[str]:
        args = ["export", "onnx", "--out", str(out(ws) if out else ws.path("exported"))]
        if classifier:
            args += ["--classifier", str(classifier(ws))]
        if segmenter:
            args += ["--segmenter", str(segmenter(ws))]
        return args

    return run


def _other_dataset(ws: Workspace) -> Path:
    """The segmenter's best.pt, re-labelled as trained on brain_mri with two classes."""
    from dlmi.runtime.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(ws.world.segmenter / "best.pt")
    payload["meta"] = {
        **payload["meta"],
        "dataset": "brain_mri",
        "classes": ["no_tumor", "tumor"],
        "normal_class": "no_tumor",
    }
    return save_checkpoint(ws.path("brain-seg.pt"), payload)


def _interrupted(ws: Workspace) -> Path:
    """A copy of the classifier run whose config asked for 5 epochs (it stopped after 1)."""
    folder = _run_copy(ws, "classifier", "cls")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "epochs": 5}))
    return folder


def _swap(folder: Path) -> None:
    a, b = folder / "unet.onnx", folder / "classifier.onnx"
    a.rename(folder / "tmp"), b.rename(a), (folder / "tmp").rename(b)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _file(ws: Workspace, name: str = "taken") -> Path:
    path = ws.path(name)
    path.write_text("precious\n")
    return path


def _no_stale_row(record: RunRecord) -> None:
    table = rows(record)
    assert "good_1.png" not in table, "the deleted image still has a row"
    mask = record.workspace / "out" / "masks" / "good_1.png.png" if record.workspace else None
    assert mask is None or not mask.exists(), "the deleted image's mask is still there"


def _unaided_rows(record: RunRecord) -> None:
    table = predicted(record, GOOD)
    assert all(row["class"] == "" and row["gated"] == "" for row in table.values()), table


def _evaluated(record: RunRecord) -> None:
    assert record.workspace is not None and (record.workspace / "run" / "eval-test.json").is_file()


def _evaluate_twice(ws: Workspace) -> list[str]:
    args = _evaluate()(ws)
    code, _, err = run_in_process(args)
    assert code == 0, err
    return args


RERUN_MUTABLE = ("out/*", "out/*/*")

CASES = [
    Case(
        "runs",
        "resume a run that has no last.pt",
        REFUSED,
        _resume(lambda f: (f / "last.pt").unlink()),
        names=("last.pt",),
    ),
    Case(
        "runs",
        "resume an empty folder",
        REFUSED,
        _resume(lambda f: [p.unlink() for p in f.iterdir()]),
        names=("config.json",),
    ),
    Case(
        "runs",
        "resume a folder that does not exist",
        REFUSED,
        lambda ws: ["train", "segmenter", "--resume", str(ws.path("nowhere"))],
        names=("nowhere",),
    ),
    Case(
        "runs",
        "resume a run whose config.json is junk",
        REFUSED,
        _resume(lambda f: (f / "config.json").write_text("{not json")),
        names=("config.json",),
    ),
    Case(
        "runs",
        "resume a run whose metrics.jsonl is torn in the middle",
        REFUSED,
        _resume(lambda f: (f / "metrics.jsonl").write_text('{"epoch": 1\n{"epoch": 2}\n')),
        names=("metrics.jsonl",),
    ),
    Case(
        "runs",
        "resume a segmenter run as a classifier",
        REFUSED,
        _resume(lambda f: None, "classifier"),
        names=("segmentation",),
    ),
    Case("runs", "resume a finished run", HANDLED, _resume(lambda f: None), mutable=("run/runtime.json",)),
    Case("runs", "train into a file", REFUSED, _train_into(_file), names=("taken",)),
    Case(
        "runs",
        "train into a finished run",
        REFUSED,
        _train_into(lambda ws: _run_copy(ws, name="old")),
        names=("old",),
    ),
    Case(
        "runs",
        "train with a split file that does not exist",
        REFUSED,
        lambda ws: [*_train_into(lambda w: w.path("run"))(ws), "--split", str(ws.path("no-split.json"))],
        names=("no-split.json",),
    ),
    Case(
        "runs",
        "train with a split of another data set",
        REFUSED,
        lambda ws: [
            *_train_into(lambda w: w.path("run"))(ws),
            "--split",
            str(
                raw(
                    ws.path("split.json"),
                    json.dumps(
                        {"dataset": "busi", "train": ["benign/x.png"], "val": ["benign/y.png"], "test": []}
                    ).encode(),
                )
            ),
        ],
        names=("benign/x.png",),
    ),
    Case(
        "runs",
        "train aided by a segmenter run",
        REFUSED,
        lambda ws: [*_train_into(lambda w: w.path("run"))(ws), "--aid", str(_run_copy(ws, name="seg"))],
        names=("--aid",),
    ),
    Case("runs", "predict into a file", REFUSED, _predict(lambda ws, f: _file(ws)), names=("taken",)),
    Case(
        "runs", "predict into the input folder itself", REFUSED, _predict(lambda ws, f: f), names=("scans",)
    ),
    Case(
        "runs",
        "predict into a folder inside the input",
        HANDLED,
        _predict(lambda ws, f: f / "out"),
        check=lambda r: predicted(r, GOOD, "scans/out"),
    ),
    Case(
        "runs",
        "predict with a models folder that does not exist",
        REFUSED,
        _predict(models=lambda ws: [str(ws.path("nowhere"))]),
        names=("nowhere",),
    ),
    Case(
        "runs",
        "predict with an empty models folder",
        REFUSED,
        _predict(models=lambda ws: [str(ws.path("empty").mkdir() or ws.path("empty"))]),
        names=("empty",),
    ),
    Case(
        "runs",
        "predict onnx with a run folder",
        REFUSED,
        _predict(models=lambda ws: [str(_run_copy(ws, "segmenter", "my-run"))]),
        names=("my-run",),
    ),
    Case(
        "runs",
        "predict torch with run folders",
        HANDLED,
        _predict(
            None, "--backend", "torch", models=lambda ws: [str(ws.world.segmenter), str(ws.world.classifier)]
        ),
        check=lambda r: predicted(r, GOOD),
    ),
    Case(
        "runs",
        "predict torch with an export folder",
        HANDLED,
        _predict(None, "--backend", "torch"),
        check=lambda r: predicted(r, GOOD),
    ),
    Case(
        "runs",
        "predict with export.json junk",
        REFUSED,
        _export_copy(lambda f: (f / "export.json").write_text("[1, 2")),
        names=("export.json",),
    ),
    Case(
        "runs",
        "predict unaided with a truncated unet.onnx",
        REFUSED,
        _export_copy(lambda f: _truncate(f / "unet.onnx"), aided=False),
        names=("unet.onnx",),
    ),
    Case(
        "runs",
        "predict with a truncated two_stage.onnx",
        REFUSED,
        _export_copy(lambda f: _truncate(f / "two_stage.onnx")),
        names=("two_stage.onnx",),
    ),
    Case(
        "runs",
        "predict unaided with unet.onnx and classifier.onnx swapped",
        REFUSED,
        _export_copy(_swap, aided=False),
        names=("unet.onnx",),
    ),
    Case(
        "runs",
        "predict twice: the second run is already done",
        HANDLED,
        _twice(()),
        check=lambda r: (predicted(r, GOOD), says(r, "already")),
    ),
    Case(
        "runs",
        "predict twice with --overwrite",
        HANDLED,
        _twice((), "--overwrite"),
        check=lambda r: predicted(r, GOOD),
        mutable=RERUN_MUTABLE,
    ),
    Case(
        "runs",
        "predict unaided over an aided output",
        HANDLED,
        lambda ws: [a for a in _twice(())(ws) if a != "--aided"],
        check=_unaided_rows,
        mutable=RERUN_MUTABLE,
    ),
    Case(
        "runs",
        "re-run after an input image was deleted",
        HANDLED,
        _twice((), between=lambda ws: ws.path("scans", "good_1.png").unlink()),
        check=_no_stale_row,
        mutable=RERUN_MUTABLE,
    ),
    Case(
        "runs",
        "re-run after an input image became corrupt",
        HANDLED,
        _twice((), between=lambda ws: raw(ws.path("scans", "good_1.png"), b"broken")),
        check=_no_stale_row,
        mutable=RERUN_MUTABLE,
        handled_codes=(1,),
    ),
    Case(
        "runs",
        "evaluate a folder that is not a run",
        REFUSED,
        lambda ws: ["evaluate", "run", str(ws.path("empty").mkdir() or ws.path("empty"))],
        names=("empty",),
    ),
    Case(
        "runs",
        "evaluate a file",
        REFUSED,
        lambda ws: ["evaluate", "run", str(grey(ws.path("x.png")))],
        names=("x.png",),
    ),
    Case(
        "runs",
        "evaluate a run whose best.pt is junk",
        REFUSED,
        _evaluate(lambda f: (f / "best.pt").write_bytes(b"not a checkpoint")),
        names=("best.pt",),
    ),
    Case(
        "runs",
        "evaluate a run whose data moved",
        REFUSED,
        _evaluate(None, "--data-dir", "/nonexistent/busi"),
        names=("/nonexistent/busi",),
    ),
    Case("runs", "evaluate a run twice", HANDLED, _evaluate_twice, check=_evaluated, mutable=("run/eval-*",)),
    Case(
        "runs",
        "export into a file",
        REFUSED,
        _export(None, lambda ws: ws.world.segmenter, _file),
        names=("taken",),
    ),
    Case("runs", "export with no model", REFUSED, _export(None, None), names=("--classifier",)),
    Case(
        "runs",
        "export a segmenter as the classifier",
        REFUSED,
        _export(lambda ws: ws.world.segmenter, None),
        names=("--classifier",),
    ),
    Case(
        "runs",
        "export models of different data sets together",
        REFUSED,
        _export(lambda ws: ws.world.classifier, _other_dataset),
        names=("brain_mri",),
    ),
    Case(
        "runs",
        "export a run interrupted before its last epoch",
        HANDLED,
        _export(_interrupted, None),
        check=lambda r: says(r, "interrupt"),
    ),
]
