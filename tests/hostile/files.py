"""Bad and odd image files: what `dlmi predict` (and the readers for training and scoring) make of them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from hostile.harness import Case, Workspace
from hostile.make import disc, grey, mask, partial, png_with_header, predicted, raw, same_prediction, says
from hostile.outcome import HANDLED, REFUSED

GOOD = ["good_0.png", "good_1.png"]


def beside_good(name: str, make: Callable[[Path], object]) -> Callable[[Workspace], list[str]]:
    """A case's run: two good PNGs and ``make(path)`` for ws/scans/NAME, predicted with --aided."""

    def run(ws: Workspace):
        folder = ws.scans()
        make(folder / name)
        return ws.predict_args(folder)

    return run


def one_bad(name: str, make, expect: str = HANDLED) -> Case:
    """``name`` beside two good images: they are predicted, it is named and skipped (exit 1)."""
    return Case(
        "files",
        f"{name} among good images",
        expect,
        beside_good(name, make),
        check=lambda r: partial(r, GOOD, name),
        handled_codes=(1,),
    )


def one_more(label: str, name: str, make, check=None) -> Case:
    """``name`` beside two good images, all predicted (exit 0), each mask at its image's size."""
    return Case(
        "files",
        label,
        HANDLED,
        beside_good(name, make),
        check=check or (lambda r: predicted(r, [*GOOD, name])),
    )


def _truncate(path, fmt: str) -> None:
    grey(path.with_suffix(".full" + path.suffix), (64, 64))
    data = path.with_suffix(".full" + path.suffix).read_bytes()
    path.with_suffix(".full" + path.suffix).unlink()
    raw(path, data[: len(data) // 2])


def _pair(name_a: str, name_b: str, convert):
    """Two renderings of one image; both must predict alike."""

    def make(path):
        base = grey(path.parent / name_a, (48, 40), seed=3)
        convert(Image.open(base)).save(path.parent / name_b)

    return make


def _sixteen_bit(image: Image.Image) -> Image.Image:
    array = np.asarray(image).astype(np.uint16) * 257
    return Image.fromarray(array)


def _spanning(path) -> None:
    """An 8-bit image that spans 0–255 (so a min–max stretch of its 16-bit copy changes nothing)."""
    pixels = np.random.default_rng(4).integers(0, 256, (40, 48), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = 0, 255
    Image.fromarray(pixels).save(path)


def _constant16(path) -> None:
    Image.fromarray(np.full((40, 48), 200 * 257, dtype=np.uint16)).save(path.parent / "c16.png")
    Image.fromarray(np.full((40, 48), 200, dtype=np.uint8)).save(path.parent / "c8.png")


def _multipage(path) -> None:
    pages = [Image.fromarray(np.full((32, 32), v, dtype=np.uint8)) for v in (10, 240)]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def _gif(path) -> None:
    frames = [Image.fromarray(np.full((32, 32), v, dtype=np.uint8)) for v in (10, 240)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def _cmyk(path) -> None:
    grey(path.with_suffix(".tmp.png"), (40, 40))
    Image.open(path.with_suffix(".tmp.png")).convert("CMYK").save(path)
    path.with_suffix(".tmp.png").unlink()


def _float_tiff(path) -> None:
    Image.fromarray(np.random.default_rng(0).random((30, 30), dtype=np.float32)).save(path)


def _root_skip() -> str | None:
    return "running as root: permissions are not enforced" if os.geteuid() == 0 else None


def _unreadable(path) -> None:
    grey(path)
    path.chmod(0)


def _predict_folder(make):
    def run(ws: Workspace):
        folder = ws.path("scans")
        folder.mkdir()
        make(folder)
        return ws.predict_args(folder)

    return run


# --- evaluate masks ---------------------------------------------------------------------------------------


def _masks(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray], *extra: str):
    def run(ws: Workspace):
        for name, values in pred.items():
            mask(ws.path("pred", name), values)
        for name, values in truth.items():
            mask(ws.path("truth", name), values)
        return [
            "evaluate",
            "masks",
            str(ws.path("pred")),
            str(ws.path("truth")),
            "--resamples",
            "20",
            "--json",
            *extra,
        ]

    return run


def _dice(expected: float):
    def check(record) -> None:
        import json

        result = json.loads(record.stdout)
        text = json.dumps(result)
        assert '"lesion_dice"' in text, "no lesion_dice in the result"
        found = _find(result, "lesion_dice")
        assert found is not None and abs(found - expected) < 1e-6, f"lesion Dice {found} != {expected}"

    return check


def _find(node, key: str):
    if isinstance(node, dict):
        if key in node:
            value = node[key]
            return value.get("value") if isinstance(value, dict) else value
        for child in node.values():
            found = _find(child, key)
            if found is not None:
                return found
    return None


DISC = disc()


def _corrupt_prediction(ws: Workspace) -> list[str]:
    args = _masks({}, {"a.png": DISC})(ws)
    raw(ws.path("pred", "a.png"), b"\x89PNG broken")
    return args


def _summary(make):
    def run(ws: Workspace):
        data = ws.copy(ws.world.data, "busi")
        make(data)
        return ["data", "summary", "--dataset", "busi", "--data-dir", str(data)]

    return run


def _train_on(make):
    def run(ws: Workspace):
        data = ws.copy(ws.world.data, "busi")
        make(data)
        return [
            "train",
            "segmenter",
            "--dataset",
            "busi",
            "--data-dir",
            str(data),
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
            "--out",
            str(ws.path("run")),
        ]

    return run


FIRST = "benign/synthetic_0001"

CASES = [
    one_bad("zero.png", lambda p: raw(p, b"")),
    one_bad("truncated.png", lambda p: _truncate(p, "png")),
    one_bad("truncated.jpg", lambda p: _truncate(p, "jpg")),
    one_bad("text.png", lambda p: raw(p, b"just some text, not an image\n")),
    one_bad("junk.dcm", lambda p: raw(p, b"\x00" * 128 + b"DICM" + b"\x01\x02" * 20)),
    one_bad("bomb.png", lambda p: png_with_header(p, 60000, 60000)),
    one_bad("dangling.png", lambda p: p.symlink_to(p.parent / "nowhere.png")),
    one_bad("self-link.png", lambda p: p.symlink_to(p)),
    Case(
        "files",
        "unreadable permissions",
        HANDLED,
        beside_good("locked.png", _unreadable),
        check=lambda r: partial(r, GOOD, "locked.png"),
        handled_codes=(1,),
        skip=_root_skip,
    ),
    Case(
        "files",
        "a folder named x.png",
        HANDLED,
        beside_good("x.png", lambda p: grey(p / "inner.png")),
        check=lambda r: predicted(r, [*GOOD, "x.png/inner.png"]),
    ),
    Case(
        "files",
        "a folder linking to its parent (loop)",
        HANDLED,
        beside_good("loop", lambda p: p.symlink_to(p.parent, target_is_directory=True)),
        check=lambda r: predicted(r, GOOD),
        handled_codes=(0, 1),
        subprocess=True,
        timeout=60,
    ),
    one_more("1x1 image", "dot.png", lambda p: grey(p, (1, 1))),
    one_more("a 4000x8 strip", "strip.png", lambda p: grey(p, (4000, 8))),
    one_more("RGBA png", "rgba.png", lambda p: grey(p, mode="RGBA")),
    one_more("RGB jpeg", "rgb.jpg", lambda p: grey(p, mode="RGB")),
    one_more("CMYK jpeg", "cmyk.jpg", _cmyk),
    one_more("LA png (grey + alpha)", "la.png", lambda p: grey(p, mode="LA")),
    one_more("1-bit png", "bits.png", lambda p: grey(p, mode="1")),
    one_more("bmp", "scan.bmp", lambda p: grey(p)),
    one_more("8-bit tiff", "scan.tif", lambda p: grey(p)),
    one_more("float32 tiff", "float.tif", _float_tiff),
    Case(
        "files",
        "palette png predicts like its grey original",
        HANDLED,
        beside_good("pal.png", _pair("base.png", "pal.png", lambda im: im.convert("P"))),
        check=lambda r: same_prediction(r, "base.png", "pal.png"),
    ),
    Case(
        "files",
        "16-bit png predicts like its 8-bit original",
        HANDLED,
        beside_good(
            "s16.png",
            lambda p: (_spanning(p.parent / "s8.png"), _sixteen_bit(Image.open(p.parent / "s8.png")).save(p)),
        ),
        check=lambda r: same_prediction(r, "s8.png", "s16.png"),
    ),
    Case(
        "files",
        "16-bit png of one constant value",
        HANDLED,
        beside_good("c16.png", _constant16),
        check=lambda r: same_prediction(r, "c8.png", "c16.png"),
    ),
    Case(
        "files",
        "multipage tiff is named",
        HANDLED,
        beside_good("pages.tif", _multipage),
        check=lambda r: says(r, "pages.tif"),
        handled_codes=(0, 1),
    ),
    Case(
        "files",
        "animated gif is not an input",
        HANDLED,
        beside_good("anim.gif", _gif),
        check=lambda r: predicted(r, GOOD),
    ),
    Case("files", "an empty input folder", REFUSED, _predict_folder(lambda f: None), names=("scans",)),
    Case(
        "files",
        "a folder of text files only",
        REFUSED,
        _predict_folder(lambda f: (f / "notes.txt").write_text("x")),
        names=("scans",),
    ),
    Case(
        "files",
        "an input folder that does not exist",
        REFUSED,
        lambda ws: ws.predict_args(ws.path("nowhere")),
        names=("nowhere",),
    ),
    Case(
        "files",
        "truth mask all 255 scored against itself",
        HANDLED,
        _masks({"a.png": DISC * 0 + 255}, {"a.png": DISC * 0 + 255}),
        check=_dice(1.0),
    ),
    Case(
        "files",
        "truth mask as a 0/1 label map",
        HANDLED,
        _masks({"a.png": DISC}, {"a.png": DISC // 255}),
        check=_dice(1.0),
    ),
    Case(
        "files",
        "truth mask as a 0/2 label map",
        HANDLED,
        _masks({"a.png": DISC}, {"a.png": DISC // 255 * 2}),
        check=_dice(1.0),
    ),
    Case(
        "files",
        "prediction of another size than its truth",
        REFUSED,
        _masks({"a.png": disc(size=40)}, {"a.png": DISC}),
        names=("a.png",),
    ),
    Case(
        "files",
        "prediction of another size with --resize",
        HANDLED,
        _masks({"a.png": np.kron(DISC, np.ones((2, 2)))}, {"a.png": DISC}, "--resize"),
        check=_dice(1.0),
    ),
    Case("files", "a corrupt predicted mask", REFUSED, _corrupt_prediction, names=("a.png",)),
    Case(
        "files",
        "mask of another size than its image (training)",
        REFUSED,
        _train_on(lambda d: mask(d / f"{FIRST}_mask.png", disc(size=48))),
        names=("synthetic_0001",),
    ),
    Case(
        "files",
        "a zero-byte image in the training data",
        REFUSED,
        _train_on(lambda d: raw(d / f"{FIRST}.png", b"")),
        names=("synthetic_0001",),
    ),
    Case(
        "files",
        "a mask that is not an image (training)",
        REFUSED,
        _train_on(lambda d: raw(d / f"{FIRST}_mask.png", b"not a mask")),
        names=("synthetic_0001_mask",),
    ),
    Case(
        "files",
        "an unknown class folder in the data is warned about",
        HANDLED,
        _summary(lambda d: grey(d / "other" / "x.png")),
        check=lambda r: says(r, "other"),
    ),
    Case(
        "files",
        "an image without its mask in the data",
        REFUSED,
        _summary(lambda d: (d / f"{FIRST}_mask.png").unlink()),
        names=("synthetic_0001",),
    ),
    Case(
        "files",
        "RGB image predicts like its grey original",
        HANDLED,
        beside_good("rgb.png", _pair("base.png", "rgb.png", lambda im: im.convert("RGB"))),
        check=lambda r: same_prediction(r, "base.png", "rgb.png"),
    ),
]
