"""The Python API (``import dlmi``) given wrong types, None, odd arrays: a DlmiError, never another escape."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hostile.harness import Case, Workspace
from hostile.outcome import HANDLED, REFUSED, RunRecord


def refused(label: str, call: Callable[[Workspace], Any], *names: str) -> Case:
    """``call(ws)`` must raise DlmiError naming ``names``."""
    return Case("API", label, REFUSED, lambda ws: lambda: call(ws), names=names)


def handled(label: str, call: Callable[[Workspace], Any], check: Callable[[Any], None]) -> Case:
    """``call(ws)`` must return a value that passes ``check(value)``."""

    def run(record: RunRecord) -> None:
        check(record.value)

    return Case("API", label, HANDLED, lambda ws: lambda: call(ws), check=run)


def _predictor(ws: Workspace, aided: bool = True):
    return dlmi_predictor(ws, aided=aided)


def dlmi_predictor(ws: Workspace, aided: bool = True, **options: Any):
    """``dlmi.load_predictor`` of the shared export on the CPU."""
    import dlmi

    return dlmi.load_predictor(ws.world.export, aided=aided, provider="cpu", **options)


def predict(label: str, image: Any, *names: str) -> Case:
    """``load_predictor(export).predict(image)`` must be refused naming ``names``."""
    return refused(f"predict {label}", lambda ws: _predictor(ws).predict(image), *names)


def predicts(label: str, image: Any, shape: tuple[int, int]) -> Case:
    """``predict(image)`` must give a bool mask of ``shape``."""

    def check(result) -> None:
        assert result.mask.dtype == bool and result.mask.shape == shape, (
            result.mask.dtype,
            result.mask.shape,
        )
        assert result.probs is not None and abs(float(result.probs.sum()) - 1) < 1e-4

    return handled(f"predict {label}", lambda ws: _predictor(ws).predict(image), check)


def _same_as_uint8(ws: Workspace) -> bool:
    image = np.random.default_rng(0).integers(0, 256, (40, 40)).astype(np.uint8)
    predictor = _predictor(ws)
    a, b = predictor.predict(image), predictor.predict(image.astype(np.float32) / 255)
    return bool(np.array_equal(a.mask, b.mask) and a.label == b.label)


def _train(**kwargs: Any) -> Callable[[Workspace], Any]:
    def call(ws: Workspace) -> Any:
        import dlmi

        settings = {
            "dataset": "busi",
            "data_dir": ws.world.data,
            "image_size": 32,
            "base_channels": 4,
            "epochs": 1,
            "device": "cpu",
            "cache": "none",
            "quiet": True,
            "out": ws.path("run"),
            **kwargs,
        }
        return dlmi.train_segmenter(**settings)

    return call


def _evaluate(*args: Any, **kwargs: Any) -> Callable[[Workspace], Any]:
    def call(ws: Workspace) -> Any:
        import dlmi

        run = args[0] if args else ws.copy(ws.world.segmenter, "run")
        return dlmi.evaluate(run, device="cpu", panels=False, **{"resamples": 20, **kwargs})

    return call


def _export(**kwargs: Any) -> Callable[[Workspace], Any]:
    def call(ws: Workspace) -> Any:
        import dlmi

        return dlmi.export_onnx(out=ws.path("exported"), **kwargs)

    return call


def _load(*args: Any, **kwargs: Any) -> Callable[[Workspace], Any]:
    def call(ws: Workspace) -> Any:
        import dlmi

        return dlmi.load_predictor(*args, **kwargs)

    return call


RNG = np.random.default_rng(5)
IMAGE = RNG.integers(0, 256, (40, 30)).astype(np.uint8)
NAN = IMAGE.astype(np.float32)
NAN[3, 3] = np.nan

CASES = [
    refused("load_predictor(42)", _load(42), "42"),
    refused("load_predictor(None)", _load(None), "None"),
    refused("load_predictor([])", _load([]), "models"),
    refused("load_predictor of a missing folder", _load("/nonexistent/exported"), "/nonexistent/exported"),
    refused(
        "load_predictor with threshold 2", lambda ws: _load(ws.world.export, threshold=2.0)(ws), "threshold"
    ),
    refused("load_predictor with provider tpu", lambda ws: _load(ws.world.export, provider="tpu")(ws), "tpu"),
    refused(
        "load_predictor with backend 'keras'", lambda ws: _load(ws.world.export, backend="keras")(ws), "keras"
    ),
    refused("evaluate(123)", _evaluate(123), "123"),
    refused("evaluate(None)", _evaluate(None), "None"),
    refused("evaluate with resamples=0", _evaluate(resamples=0), "resamples"),
    refused("evaluate with side='banana'", _evaluate(side="banana"), "banana"),
    refused("evaluate with checkpoint=3", _evaluate(checkpoint=3), "checkpoint"),
    refused("train with image_size='64'", _train(image_size="64"), "image_size"),
    refused("train with epochs=1.5", _train(epochs=1.5), "epochs"),
    refused("train with lr='fast'", _train(lr="fast"), "lr"),
    refused("train with dataset=None", _train(dataset=None), "dataset"),
    refused("train with dataset=object()", _train(dataset=object()), "dataset"),
    refused("train with out=None", _train(out=None), "out"),
    refused("train with model_options='wide'", _train(model_options="wide"), "model_options"),
    refused("export_onnx() with no model", _export(), "classifier"),
    refused("export_onnx(classifier=42)", _export(classifier=42), "42"),
    predict("a 4-D array", np.zeros((1, 1, 32, 32), np.uint8), "shape"),
    predict("an empty array", np.zeros((0, 0), np.uint8), "empty"),
    predict("a NaN image", NAN, "NaN"),
    predict("an infinite image", np.full((8, 8), np.inf), "infinite"),
    predict("None", None, "image"),
    predict("a string", "scan.png", "image"),
    predict("a complex array", IMAGE.astype(np.complex64), "complex"),
    predict("an object array", np.array([[object()]]), "image"),
    predict("a (H, W, 2) array", np.zeros((8, 8, 2), np.uint8), "shape"),
    predict("a ragged list", [[1, 2, 3], [4]], "ragged"),
    predict("a pathlib.Path", Path("scan.png"), "scan.png"),
    predict("a bytes object", b"\x89PNG", "image"),
    handled(
        "load_predictor with threshold 1: nothing is lesion",
        lambda ws: dlmi_predictor(ws, threshold=1.0).predict(IMAGE),
        lambda result: _true(not result.mask.any()),
    ),
    predicts("a list of lists", IMAGE.tolist(), (40, 30)),
    predicts("a bool array", IMAGE > 128, (40, 30)),
    predicts("a 1x1 array", np.full((1, 1), 7, np.uint8), (1, 1)),
    predicts("an RGB array", np.stack([IMAGE] * 3, axis=2), (40, 30)),
    predicts("an int16 array with negative values (HU)", IMAGE.astype(np.int16) * 8 - 1000, (40, 30)),
    predicts("a constant float array", np.full((20, 20), 0.5, np.float32), (20, 20)),
    predicts("a non-contiguous view", np.asarray(IMAGE)[::-1, ::2], (40, 15)),
    handled("a float 0-1 image predicts like its uint8 original", _same_as_uint8, lambda same: _true(same)),
]


def _true(value: bool) -> None:
    assert value, "the float image predicted differently"
